#!/usr/bin/env python3
"""Writes the fixture logs in tests/report/fixtures/ (run it again after changing the
scenario; the output is deterministic, and the .gz file carries no timestamp).

Scenario (see test_report.py for what the report must say about it):
  pid 1001, no host field, /usr/sbin/demo-server, logs rotated: app.log.2.gz (oldest),
  app.log.1, app.log
    stack A  9 leaks over 9 minutes, one closed late           -> open 8, growing
    stack B  4 health-check leaks, each closed late            -> open 0 / ever 4
    stack E  2 leaks opened in /usr/lib/libvendor.so.1          -> suppressed
  pid 1002, /usr/bin/demo-client, in app.log.1 and app.log
    stack C  2 leaks seen, summary says count_now 2 count_ever 3
    stack D  never seen as a leak; summary says count_now 1 count_ever 1
  host web-2 (web2.log, named only by start events), pid 1001 twice (reused after exit)
    stack A  2 leaks + summary at exit (count_now 2), then 1 leak in the new process
  host web-3 (web3.log, a "host" field on every line), pid 2001
    stack B  1 leak, a summary "on request" (count_now 1), 1 more leak (site_open 2)
  app.log starts with a copy of app.log.1's last line (copytruncate overlap): a duplicate.
"""
import gzip
import io
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
BASE = 1714557600000  # 2024-05-01T10:00:00.000Z
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
SERVER = "/usr/sbin/demo-server"
CLIENT = "/usr/bin/demo-client"


def iso(ts):
    import datetime
    dt = datetime.datetime.fromtimestamp(ts / 1000, tz=datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ts % 1000)


def frame(module, offset, function=None, file=None, line=None, pc_base=0x7f0000000000):
    f = {"pc": "0x%x" % (pc_base + offset), "module": module, "offset": "0x%x" % offset}
    if function:
        f["function"] = function
    if file:
        f["file"] = file
        f["line"] = line
    return f


STACK_A = [frame(LIBC, 0x10f3a1, "accept4"),
           frame(SERVER, 0x1a2b, "handle_client", "/src/demo/server.c", 88, 0x555500000000),
           frame(SERVER, 0x1c00, "serve_loop", "/src/demo/server.c", 140, 0x555500000000),
           frame(SERVER, 0x1e00, "main", "/src/demo/server.c", 200, 0x555500000000)]
EOF_A = [frame(LIBC, 0x10e000, "recv"),
         frame(SERVER, 0x1a00, "read_request", "/src/demo/server.c", 60, 0x555500000000)]
STACK_B = [frame(LIBC, 0x10f300, "accept"),
           frame(SERVER, 0x2340, pc_base=0x555500000000),     # stripped: module+offset only
           frame(SERVER, 0x1e10, pc_base=0x555500000000)]
STACK_C = [frame(LIBC, 0x110200, "connect"),
           frame(CLIENT, 0x3010, "pool_checkout", "/src/demo/client.c", 55, 0x555600000000),
           frame(CLIENT, 0x3200, "fetch_url", "/src/demo/client.c", 120, 0x555600000000)]
STACK_E = [frame(LIBC, 0x10f300, "accept"),
           frame("/usr/lib/libvendor.so.1", 0x400, "vendor_listen", "vendor.c", 10,
                 0x7f1000000000)]


def leak(ts, pid, fd, sid, stack, reason, peer, exe, opened_by="accept4", eof=None,
         host=None, since=10000):
    ev = {"event": "leak", "pid": pid, "time": iso(ts), "ts_ms": ts, "fd": fd,
          "reason": reason, "state": "CLOSE_WAIT", "local": "10.0.0.100:8080",
          "peer": peer, "since_fin_ms": since, "open_age_ms": since + 2500,
          "opened_by": opened_by, "stack_id": sid, "open_stack": stack, "exe": exe}
    if eof:
        ev["eof_stack"] = eof
        ev["eof_by"] = "recv"
    if host:
        ev = dict([("host", host)] + list(ev.items()))
    return ev


def closed_late(ts, pid, fd, sid, held, host=None):
    ev = {"event": "closed_late", "pid": pid, "time": iso(ts), "ts_ms": ts, "fd": fd,
          "stack_id": sid, "local": "10.0.0.100:8080", "peer": "127.0.0.1:1", "held_ms": held}
    if host:
        ev["host"] = host
    return ev


def start(ts, pid, exe, host, grace=10000):
    return {"event": "start", "pid": pid, "time": iso(ts), "ts_ms": ts, "ppid": 1, "exe": exe,
            "host": host, "grace_ms": grace, "version": "0.1.0"}


def summary(ts, pid, open_, total, findings, host=None, why=None):
    ev = {"event": "summary", "pid": pid, "time": iso(ts), "ts_ms": ts, "leaks_open": open_,
          "leaks_total": total,
          "findings": [{"stack_id": s, "count_now": n, "count_ever": e} for s, n, e in findings]}
    if why:
        ev["why"] = why
    if host:
        ev["host"] = host
    return ev


A, B, C, D, E = ("a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2", "c3c3c3c3c3c3c3c3",
                 "d4d4d4d4d4d4d4d4", "e5e5e5e5e5e5e5e5")


def scenario():
    files = {"app.log.2.gz": [], "app.log.1": [], "app.log": []}
    where_a = {0: "app.log.2.gz", 1: "app.log.2.gz", 2: "app.log.1", 3: "app.log.1",
               4: "app.log.1"}
    for i in range(9):
        ts = BASE + i * 60000
        reason = "peer_closed_unread" if i % 3 == 2 else "eof_not_closed"
        files[where_a.get(i, "app.log")].append(
            (ts, leak(ts, 1001, 10 + i, A, STACK_A, reason, "10.0.0.%d:%d" % (i + 1, 40000 + i),
                      SERVER, eof=EOF_A if reason == "eof_not_closed" else None,
                      since=10000 + 5 * i)))
    files["app.log"].append((BASE + 510000, closed_late(BASE + 510000, 1001, 12, A, 480000)))
    where_b = {0: "app.log.2.gz", 1: "app.log.1", 2: "app.log.1", 3: "app.log"}
    for k in range(4):
        ts = BASE + k * 60000 + 30000
        name = where_b[k]
        files[name].append((ts, leak(ts, 1001, 20 + k, B, STACK_B, "peer_closed_unread",
                                     "127.0.0.1:%d" % (50000 + k), SERVER, opened_by="accept",
                                     since=10200)))
        files[name].append((ts + 5000, closed_late(ts + 5000, 1001, 20 + k, B, 15200)))
    files["app.log.1"].append((BASE + 120000 + 1, leak(
        BASE + 120001, 1002, 7, C, STACK_C, "shutdown_not_closed", "192.0.2.10:443", CLIENT,
        opened_by="connect", since=12000)))
    files["app.log"].append((BASE + 360000 + 1, leak(
        BASE + 360001, 1002, 8, C, STACK_C, "shutdown_not_closed", "192.0.2.11:443", CLIENT,
        opened_by="connect", since=11000)))
    files["app.log"].append((BASE + 540000, summary(BASE + 540000, 1002, 3, 4,
                                                    [(C, 2, 3), (D, 1, 1)])))
    for j in range(2):
        ts = BASE + 400000 + j * 1000
        files["app.log"].append((ts, leak(ts, 1001, 40 + j, E, STACK_E, "eof_not_closed",
                                          "10.1.1.1:%d" % (6000 + j), SERVER)))
    for name in files:
        files[name].sort(key=lambda p: p[0])
    # copytruncate overlap: app.log starts with app.log.1's last line
    files["app.log"].insert(0, files["app.log.1"][-1])
    # web-2: the library's own format, the host named only by each process's start event
    web2 = [start(BASE + 90000, 1001, SERVER, "web-2")]
    for j in range(2):
        ts = BASE + 100000 + j * 60000
        web2.append(leak(ts, 1001, 30 + j, A, STACK_A, "eof_not_closed",
                         "10.0.9.%d:41000" % j, SERVER, eof=EOF_A))
    web2.append(summary(BASE + 300000, 1001, 2, 2, [(A, 2, 2)], why="exit"))
    web2.append(start(BASE + 390000, 1001, SERVER, "web-2"))
    web2.append(leak(BASE + 400000, 1001, 30, A, STACK_A, "eof_not_closed", "10.0.9.9:41000",
                     SERVER, eof=EOF_A))
    # web-3: a log shipper added "host" to every line; a summary on request mid-run
    web3 = []
    for j, ts in enumerate((BASE + 200000, BASE + 320000)):
        ev = leak(ts, 2001, 50 + j, B, STACK_B, "peer_closed_unread", "127.0.0.1:%d" % (52000 + j),
                  SERVER, opened_by="accept", host="web-3", since=10300)
        ev["site_open"], ev["site_ever"], ev["growing"] = j + 1, j + 1, False
        web3.append(ev)
        if j == 0:
            web3.append(summary(BASE + 250000, 2001, 1, 1, [(B, 1, 1)], host="web-3",
                                why="on request"))
    return {k: [ev for _, ev in v] for k, v in files.items()}, web2, web3


def dump(events):
    return "".join(json.dumps(ev, separators=(",", ":")) + "\n" for ev in events).encode()


HOSTILE_LINES = [
    # two valid events with hostile strings
    json.dumps(leak(BASE + 1000, 4242, 9, "f6f6f6f6f6f6f6f6", [
        frame(LIBC, 0x10f3a1, "accept4"),
        {"pc": "0x1", "module": "/opt/evil|mod", "offset": "0x10",
         "function": "evil|name`<script>alert(1)</script>\u001b[31m\n## Fake heading",
         "file": "/src/x.c\r\n| injected | row |", "line": 7}],
        "eof_not_closed", "[::1]:80", "/opt/my app/$(touch pwned)'x")).encode(),
    b'{"event":"leak","pid":77,"stack_id":"e7e7e7e7e7e7e7e7","exe":"/bin/\xff\xfe\xc3",'
    b'"ts_ms":1714557600000,"fd":3,"reason":"eof_not_closed","peer":"\\ud800:1",'
    b'"open_stack":[1,"x",null,{"offset":{"a":1},"line":"NaN","module":5},'
    b'{"module":"/nonexistent/lib.so","offset":"0xzz"},{"module":"/dev/zero","offset":"0x10"}]}',
    # not JSON
    b"not json at all",
    b'{"event":"leak"',
    b"[" * 100000 + b"]" * 100000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"event":"leak","pid":NaN,"stack_id":"0000000000000001"}',
    b'{"event":"leak","pid":Infinity}',
    b"\x00\x01\x02\xff\xfe",
    b'\xef\xbb\xbf{"event":"leak","pid":1',
    b'{"event":"leak","pid":1,"stack_id":"' + b"9" * 5000 + b'"',
    b"{" + b'"k":1,' * 2000,
    # JSON but not closewait events
    b"[]",
    b'"string"',
    b"42",
    b"null",
    b"1" * 5000,
    b'{"event":"leak","pid":' + b"9" * 4000 + b',"stack_id":"0000000000000002"}',
    b'{"event":"leak","pid":1e999,"stack_id":"0000000000000003"}',
    b'{"event":"leak","pid":"abc","stack_id":"0000000000000004"}',
    b'{"event":"leak","pid":true,"stack_id":"0000000000000005"}',
    b'{"event":"leak","pid":-5,"stack_id":"0000000000000006"}',
    b'{"event":"leak","pid":5,"stack_id":["x"]}',
    b'{"event":"leak","pid":5}',
    b'{"event":"summary","pid":3,"findings":"lots"}',
    b'{"event":"closed_late","pid":3}',
    b'{"event":"closed_late","pid":3,"fd":"x","stack_id":{}}',
    b'{"event":"something_new","pid":1}',
    b'{"event":["leak"],"pid":1}',
    b'{"pid":1,"stack_id":"0000000000000007"}',
    # blank and whitespace-only lines are ignored, not counted
    b"",
    b"   \t",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    files, web2, web3 = scenario()
    for name, events in files.items():
        data = dump(events)
        path = os.path.join(OUT, name)
        if name.endswith(".gz"):
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
                gz.write(data)
            data = buf.getvalue()
        with open(path, "wb") as f:
            f.write(data)
    with open(os.path.join(OUT, "web2.log"), "wb") as f:
        f.write(dump(web2))
    with open(os.path.join(OUT, "web3.log"), "wb") as f:
        f.write(dump(web3))
    with open(os.path.join(OUT, "hostile.log"), "wb") as f:
        f.write(b"\n".join(HOSTILE_LINES) + b"\n")
    with open(os.path.join(OUT, "suppressions.txt"), "w") as f:
        f.write("# third-party code we cannot fix\n"
                "mod:*/libvendor.so*\n"
                "\n"
                "   # indented comment\n"
                "fun:never_matches_*\n"
                "src:/nowhere/*.c\n")
    # a template for the symbolization test: @MODULE@, @OFF_*@ and @PC_*@ are filled in by
    # the test: FUNC is a function's start (from nm; innermost, looked up as is), OUTER and MAIN
    # are return addresses (looked up at offset - 1)
    with open(os.path.join(OUT, "symbolize.log.in"), "w") as f:
        f.write(json.dumps({
            "event": "leak", "pid": 555, "time": iso(BASE), "ts_ms": BASE, "fd": 4,
            "reason": "eof_not_closed", "state": "CLOSE_WAIT", "local": "127.0.0.1:9",
            "peer": "127.0.0.1:50000", "since_fin_ms": 2000, "open_age_ms": 2100,
            "opened_by": "accept", "stack_id": "5757575757575757", "exe": "@MODULE@",
            "open_stack": [
                {"pc": "@PC_FUNC@", "module": "@MODULE@", "offset": "@OFF_FUNC@"},
                {"pc": "@PC_OUTER@", "module": "@MODULE@", "offset": "@OFF_OUTER@"},
                {"pc": "@PC_MAIN@", "module": "@MODULE@", "offset": "@OFF_MAIN@"},
                {"pc": "0x7f00000010f3a1", "module": "/nonexistent/libc.so.6",
                 "offset": "0x10f3a1"},
            ]}) + "\n")


if __name__ == "__main__":
    main()
