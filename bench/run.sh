#!/bin/sh
# make bench: closewait's benchmark suite; see BENCHMARKS.md for what it measures and the figures.
#   BENCH_QUICK=1   short run (under 2 minutes)
#   BENCH_ONLY=micro,fork,callgrind,macro,langs,nginxcg,alt,scale,forks   only those parts
#                   (forks installs postgresql, apache2 and apache2-utils itself when root)
#   BENCH_OUT=FILE  also write the final table to FILE
#   BENCH_KEEP=1    keep the work directory (callgrind outputs, logs) and say where it is
#   BENCH_BASELINE=LIBRARY   the forks part's servers "without" run under LIBRARY (an earlier
#                   build of libclosewait.so): its ratios are then of this library against that one
# Installs the tools it lacks when root (apt-get); a part whose tool is still missing is skipped
# with one line saying so.  Figures are printed, never judged: the exit status is not about time.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
lib="$here/libclosewait.so"
if [ ! -f "$lib" ]; then
  echo "bench: $lib is missing; run make first" >&2
  exit 1
fi
if [ -n "${BENCH_BASELINE:-}" ]; then
  if [ ! -f "$BENCH_BASELINE" ]; then
    echo "bench: BENCH_BASELINE=$BENCH_BASELINE is not a file" >&2
    exit 1
  fi
  BENCH_BASELINE=$(cd "$(dirname "$BENCH_BASELINE")" && pwd)/$(basename "$BENCH_BASELINE")
  export BENCH_BASELINE
fi

need=""
add() { case " $need " in *" $1 "*) ;; *) need="$need $1" ;; esac; }
for pair in nginx:nginx-light wrk:wrk redis-server:redis-server redis-benchmark:redis-tools \
            valgrind:valgrind strace:strace python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || add "${pair#*:}"
done
[ -f /usr/include/valgrind/callgrind.h ] || add valgrind
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bench: installing$need"
    apt-get update -qq >/dev/null 2>&1
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null 2>&1 ||
      echo "bench: apt-get install$need failed; the parts that need them will be skipped"
  else
    echo "bench: missing$need (not root, or no apt-get); the parts that need them will be skipped"
  fi
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "bench: python3 is missing; nothing can run"
  exit 1
fi

work=$(mktemp -d /tmp/closewait-bench.XXXXXX)
if [ "${BENCH_KEEP:-0}" = 1 ]; then
  echo "bench: work directory $work (kept)"
else
  trap 'rm -rf "$work"' EXIT INT TERM
fi
mkdir -p "$work/bin"
CC=${CC:-cc}
flags="-O2 -g -fno-omit-frame-pointer -Wall -Wextra"
for p in micro client epoll_server scale forkloop; do
  # shellcheck disable=SC2086
  $CC $flags -o "$work/bin/$p" "$here/bench/$p.c" || { echo "bench: cannot build $p"; exit 1; }
done
# The leaking server is built as a debug build would be (-O0): every function keeps its frame, so
# each tool's stack can name the lines marked in it.
$CC -O0 -g -Wall -Wextra -o "$work/bin/leaky_server" "$here/bench/leaky_server.c" ||
  { echo "bench: cannot build leaky_server"; exit 1; }
# shellcheck disable=SC2086
$CC $flags -shared -fPIC -pthread -o "$work/bin/idlethread.so" "$here/bench/idlethread.c" ||
  { echo "bench: cannot build idlethread.so"; exit 1; }
# A copy: the library may be rebuilt while the benchmarks run.
cp "$lib" "$work/libclosewait.so"
python3 "$here/bench/bench.py" "$work/bin" "$work/libclosewait.so" "$work"
