#!/bin/sh
# make deb: closewait_VERSION_ARCH.deb with dpkg-buildpackage, in OUT (default build/deb).
# The tree is copied to OUT/closewait-VERSION, debian/changelog is written there with the version
# of src/watcher/internal.h (the only place it is said), and the copy is removed at the end: the
# checkout is not written to.  As root on Debian, missing build dependencies are installed.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-build/deb}
case "$out" in /*) ;; *) out="$root/$out" ;; esac
cd "$root"

version=$(sed -n 's/^#define CLOSEWAIT_VERSION "\(.*\)"$/\1/p' src/watcher/internal.h)
case "$version" in
  [0-9]*.[0-9]*.[0-9]*) ;;
  *) echo "make deb: no CLOSEWAIT_VERSION \"MAJOR.MINOR.PATCH\" in src/watcher/internal.h" >&2; exit 1 ;;
esac

need=""
command -v dpkg-buildpackage >/dev/null 2>&1 || need="$need dpkg-dev"
command -v dh >/dev/null 2>&1 || need="$need debhelper"
[ -x /usr/share/perl5/Debian/Debhelper/Sequence/python3.pm ] || [ -f /usr/share/perl5/Debian/Debhelper/Sequence/python3.pm ] \
  || need="$need dh-python"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make deb: installing$need" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  else
    echo "make deb: missing$need; run: sudo apt-get install -y$need" >&2
    exit 1
  fi
fi

stage="$out/closewait-$version"
rm -rf "$stage"
mkdir -p "$stage"
trap 'rm -rf "$stage"' EXIT
# The working tree as it is (uncommitted changes included), without what git ignores.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$root" ls-files -z --cached --others --exclude-standard |
    (cd "$root" && xargs -0 sh -c 'for f; do [ -f "$f" ] || [ -L "$f" ] && printf "%s\n" "$f"; done' sh) |
    tar -C "$root" -cf - -T - | tar -C "$stage" -xf -
  commit=$(git -C "$root" log -1 --format=%h 2>/dev/null || true)
  date=$(git -C "$root" log -1 --format=%aD 2>/dev/null || true)
else
  tar -C "$root" --exclude=./build --exclude=./libclosewait.so --exclude=./.git -cf - . | tar -C "$stage" -xf -
  commit=""
  date=""
fi
[ -n "$date" ] || date=$(date -R)

maintainer=$(sed -n 's/^Maintainer: //p' debian/control)
{
  echo "closewait ($version) unstable; urgency=medium"
  echo
  echo "  * closewait $version${commit:+, built from the source tree at commit $commit}."
  echo
  echo " -- $maintainer  $date"
} > "$stage/debian/changelog"

(cd "$stage" && dpkg-buildpackage -us -uc -b) > "$out/build.log" 2>&1 || {
  tail -n 40 "$out/build.log" >&2
  echo "make deb: dpkg-buildpackage failed; the whole log is $out/build.log" >&2
  exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb="$out/closewait_${version}_${arch}.deb"
[ -f "$deb" ] || { echo "make deb: dpkg-buildpackage made no $deb" >&2; exit 1; }
echo "make deb: $deb"
