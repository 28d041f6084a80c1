#!/bin/sh
# make demo: a real leaking server under the library, real clients, the report it writes.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cc -O1 -g -o "$work/leaky_server" "$here/demo/leaky_server.c"
echo "== demo: an echo server that forgets close() after EOF; 3 clients connect, talk, hang up"
echo "== running: LD_PRELOAD=$here/libclosewait.so CLOSEWAIT_GRACE_MS=1000 ./leaky_server"
LD_PRELOAD="$here/libclosewait.so" CLOSEWAIT_GRACE_MS=1000 CLOSEWAIT_LOG="$work/report.txt" \
  "$work/leaky_server" "$work/port" 3 &
pid=$!
i=0
while [ ! -s "$work/port" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
port=$(cat "$work/port")
python3 - "$port" <<'PY'
import socket, sys
for i in range(3):
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    c.sendall(b"hello %d\n" % i)
    c.recv(100)
    c.close()
PY
sleep 2
echo "== the kernel's view (ss), while the server runs:"
ss -tan state close-wait "( sport = :$port )" || true
wait $pid || true
echo
echo "== closewait's report:"
cat "$work/report.txt"
grep -q "SUMMARY: closewait: 3 socket(s)" "$work/report.txt"
