#!/bin/sh
# Build dependencies: the headers of libdw (dlopen'ed at run time).
# As root on Debian/Ubuntu, install what is missing; otherwise say the one command to run.
missing=""
has_header() { echo "#include <$1>" | ${CC:-cc} -E -x c - >/dev/null 2>&1; }
has_header elfutils/libdwfl.h || missing="$missing libdw-dev"
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "closewait: installing$missing" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null && exit 0
  echo "closewait: apt-get install failed" >&2
  exit 1
fi
echo "closewait: missing build dependencies; run: sudo apt-get install -y$missing" >&2
exit 1
