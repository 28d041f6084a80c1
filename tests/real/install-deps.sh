#!/bin/sh
# Programs driven by tests/real/run.py: real servers, load generators, runtimes.
# Installs (as root, with apt-get) only what is missing; prints what it would need otherwise.
# A program that stays missing makes its tests SKIP, saying why.
set -u
need=""
have() { command -v "$1" >/dev/null 2>&1; }
have nginx || need="$need nginx-light"
have redis-server || need="$need redis-server"
have redis-benchmark || need="$need redis-tools"
have memcached || need="$need memcached"
have wrk || need="$need wrk"
have node || need="$need nodejs"
if ! have javac; then
  need="$need JDK"
fi
have cc || need="$need gcc"
have make || need="$need make"
[ -x /usr/bin/python3 ] || have python3 || need="$need python3"
[ -z "$need" ] && { echo "install-deps: everything is present"; exit 0; }

if [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "install-deps: missing:$need; run as root on Debian/Ubuntu (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || { echo "install-deps: apt-get update failed" >&2; exit 1; }
pkgs=""
for p in $need; do
  case "$p" in
    JDK)
      # The newest headless JDK the archive has.
      if apt-cache show default-jdk-headless >/dev/null 2>&1; then pkgs="$pkgs default-jdk-headless"
      else pkgs="$pkgs openjdk-17-jdk-headless"; fi ;;
    *) pkgs="$pkgs $p" ;;
  esac
done
echo "install-deps: installing$pkgs"
# No service is started by the package scripts' wish: the tests start their own instances.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1; fi
rc=0
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null || rc=$?
[ "$made_policy" = 1 ] && rm -f "$policy"
if [ "$rc" != 0 ]; then
  echo "install-deps: apt-get install failed ($rc)" >&2
  exit 1
fi
echo "install-deps: done"
