#!/bin/sh
# Builds the libFuzzer harnesses (clang) and runs each for FUZZ_SECONDS (default 15), seeded
# with fuzz/corpus/NAME.  New inputs go to build/fuzz/corpus-NAME; FUZZ_SAVE=1 (a long run by
# hand) adds them to fuzz/corpus/NAME instead, to be committed.  A crash fails; its input is left
# in build/fuzz/.  Closing line: N passed, N failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
out=$root/build/fuzz
secs=${FUZZ_SECONDS:-15}
mkdir -p "$out"
if ! command -v clang >/dev/null 2>&1; then
  echo "SKIP fuzz: no clang"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi
probe=$out/probe.c
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }' > "$probe"
if ! clang -fsanitize=fuzzer -o "$out/probe" "$probe" >/dev/null 2>&1; then
  echo "SKIP fuzz: clang has no libFuzzer runtime (Debian: libclang-rt-14-dev)"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi
cflags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -std=gnu11 -I$root/src -I$root/include"
passed=0 failed=0
build() {
  name=$1; shift
  clang $cflags -o "$out/$name" "$here/$name.c" "$@" -ldl -pthread
}
build fuzz_options "$root/src/options/options.c" "$root/src/base.c" || { echo "FAIL fuzz_options: build"; failed=$((failed + 1)); }
build fuzz_json "$root/src/report/buf.c" "$root/src/base.c" || { echo "FAIL fuzz_json: build"; failed=$((failed + 1)); }
for name in fuzz_options fuzz_json; do
  [ -x "$out/$name" ] || continue
  seeds=$here/corpus/${name#fuzz_}
  found=$out/corpus-${name#fuzz_}
  [ "${FUZZ_SAVE:-0}" = 1 ] && found=$seeds
  mkdir -p "$seeds" "$found"
  if (cd "$out" && "./$name" -max_total_time="$secs" -close_fd_mask=2 -max_len=4096 \
        "$found" "$seeds" >"$out/$name.log" 2>&1); then
    echo "PASS $name ($(grep -o 'Done [0-9]* runs' "$out/$name.log" | tail -1))"
    passed=$((passed + 1))
  else
    echo "FAIL $name: $(grep -m1 -E 'ERROR|SUMMARY|deadly' "$out/$name.log")"
    failed=$((failed + 1))
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
