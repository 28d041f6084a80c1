#!/usr/bin/env python3
"""Tests of tools/closewait-report.

    python3 tests/report/test_report.py            # all tests; ends with "N passed, N failed"
    python3 tests/report/test_report.py Scenario   # only test classes/methods matching a word
    UPDATE_GOLDEN=1 python3 tests/report/test_report.py   # rewrite tests/report/golden/*

Environment: CLOSEWAIT_FUZZ_ITER (fuzz iterations, default 2000), CLOSEWAIT_FUZZ_SEED.
The fixtures in tests/report/fixtures/ come from make_fixtures.py.
"""

import gzip
import importlib.machinery
import importlib.util
import io
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOL = os.path.join(ROOT, "tools", "closewait-report")
FIX = os.path.join(HERE, "fixtures")
GOLDEN = os.path.join(HERE, "golden")
SCENARIO = [os.path.join(FIX, n) for n in
            ("app.log", "app.log.1", "app.log.2.gz", "web2.log", "web3.log")]
SUPP = os.path.join(FIX, "suppressions.txt")
A, B, C, D, E = ("a1a1a1a1a1a1a1a1", "b2b2b2b2b2b2b2b2", "c3c3c3c3c3c3c3c3",
                 "d4d4d4d4d4d4d4d4", "e5e5e5e5e5e5e5e5")


def load_tool():
    """The package behind tools/closewait-report."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import closewait_report
    return closewait_report


cwr = load_tool()


def run(*args, stdin=None, env=None, cwd=None):
    """Runs the tool; returns (exit status, stdout, stderr) as text."""
    e = dict(os.environ)
    e.pop("CLOSEWAIT_REPORT_ADDR2LINE", None)
    if env:
        e.update(env)
    p = subprocess.run([sys.executable, TOOL] + list(args), input=stdin, cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, timeout=300)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def run_json(*args, **kw):
    rc, out, err = run("--format", "json", *args, **kw)
    if rc != 0:
        raise AssertionError("exit %d: %s" % (rc, err))
    return json.loads(out), err


def finding(report, sid):
    for f in report["findings"]:
        if f["stack_id"] == sid:
            return f
    raise AssertionError("no finding %s in %s" % (sid, [f["stack_id"] for f in report["findings"]]))


def skeleton(text):
    """The structure of a report: paths, times and numbers masked."""
    text = text.replace(FIX, "<FIX>")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "<TIME>", text)
    text = re.sub(r"0x[0-9a-f]+", "<HEX>", text)
    text = re.sub(r"\b[0-9a-f]{16}\b", "<STACK>", text)
    text = re.sub(r"\b\d+\b", "N", text)
    return text


def json_skeleton(v):
    if isinstance(v, dict):
        return {k: json_skeleton(x) for k, x in v.items()}
    if isinstance(v, list):
        return [json_skeleton(x) for x in v]
    return type(v).__name__


def check_golden(test, name, actual):
    path = os.path.join(GOLDEN, name)
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(actual)
    with open(path) as f:
        expected = f.read()
    test.assertEqual(expected, actual, "golden %s differs (UPDATE_GOLDEN=1 to rewrite)" % name)


# --------------------------------------------------------------------------------------

class Scenario(unittest.TestCase):
    """The fixture scenario (see make_fixtures.py), symbolization off."""

    @classmethod
    def setUpClass(cls):
        cls.out = {}
        for fmt in ("markdown", "json", "text"):
            rc, out, err = run("--no-symbolize", "--format", fmt, "--suppressions", SUPP,
                               *SCENARIO)
            assert rc == 0, err
            cls.out[fmt] = out
        cls.r = json.loads(cls.out["json"])

    def test_summary_counts(self):
        s = self.r["summary"]
        self.assertEqual(s["leaks_open"], 11 + 2 + 2 + 1)
        self.assertEqual(s["leaks_total"], 12 + 6 + 3 + 1)
        self.assertEqual(s["findings"], 4)
        self.assertEqual(s["open_sites"], 4)
        self.assertEqual(s["growing_findings"], 1)
        self.assertEqual((s["suppressed_findings"], s["suppressed_leaks_open"],
                          s["suppressed_leaks_total"]), (1, 2, 2))
        self.assertEqual(s["hosts"], ["web-2", "web-3"])
        self.assertEqual(s["programs"][0], "/usr/sbin/demo-server")
        self.assertEqual(s["first_seen"], "2024-05-01T10:00:00.000Z")
        self.assertEqual(s["last_seen"], "2024-05-01T10:08:00.000Z")

    def test_order_most_open_then_most_ever(self):
        self.assertEqual([f["stack_id"] for f in self.r["findings"]], [A, B, C, D])
        self.assertEqual([f["rank"] for f in self.r["findings"]], [1, 2, 3, 4])

    def test_growing_finding_across_rotation_and_hosts(self):
        f = finding(self.r, A)
        self.assertEqual((f["count_open"], f["count_ever"]), (11, 12))
        self.assertTrue(f["growing"])
        self.assertEqual(f["growing_in"], [{"host": None, "pid": 1001}])
        self.assertEqual(f["closed_late"], 1)
        self.assertEqual(f["reasons"], {"eof_not_closed": 9, "peer_closed_unread": 3})
        self.assertEqual(f["opened_by"], {"accept4": 12})
        self.assertEqual(f["example_peers"], ["10.0.0.1:40000", "10.0.0.2:40001",
                                              "10.0.9.0:41000", "10.0.0.3:40002",
                                              "10.0.9.1:41000"])
        self.assertEqual(f["first_seen"], "2024-05-01T10:00:00.000Z")
        self.assertEqual(f["last_seen"], "2024-05-01T10:08:00.000Z")
        self.assertEqual(f["oldest_since_fin_ms"], 10040)
        self.assertEqual(f["processes"], [{"host": None, "pid": 1001},
                                          {"host": "web-2", "pid": 1001}])
        self.assertEqual(f["process_instances"], 3)      # web-2 reused pid 1001
        self.assertEqual(f["hosts"], ["web-2"])
        self.assertEqual(f["programs"], ["/usr/sbin/demo-server"])
        self.assertEqual(f["top_frame"], "handle_client (server.c:88)")
        self.assertEqual(f["open_stack"][1]["function"], "handle_client")
        self.assertEqual(f["eof_stack"][1]["function"], "read_request")
        self.assertIn("CLOSEWAIT_GRACE_MS=10000", f["reproduce_command"])

    def test_health_checks_closed_late_and_on_request_summary(self):
        f = finding(self.r, B)
        self.assertEqual((f["count_open"], f["count_ever"]), (2, 6))
        self.assertFalse(f["growing"])
        self.assertEqual(f["closed_late"], 4)
        self.assertEqual(f["longest_held_ms"], 15200)
        self.assertEqual(f["processes"], [{"host": None, "pid": 1001},
                                          {"host": "web-3", "pid": 2001}])
        self.assertEqual(f["top_frame"], "demo-server+0x2340")

    def test_summary_is_authoritative(self):
        f = finding(self.r, C)
        self.assertEqual((f["count_open"], f["count_ever"]), (2, 3))
        self.assertEqual(f["opened_by"], {"connect": 2})
        self.assertEqual(f["programs"], ["/usr/bin/demo-client"])
        d = finding(self.r, D)
        self.assertEqual((d["count_open"], d["count_ever"]), (1, 1))
        self.assertFalse(d["stack_known"])
        self.assertEqual(d["open_stack"], [])
        self.assertIsNone(d["top_frame"])

    def test_inputs(self):
        i = self.r["inputs"]
        self.assertEqual(len(i["files"]), 5)
        self.assertEqual(i["events"], {"start": 2, "leak": 22, "closed_late": 5, "summary": 3})
        self.assertEqual(i["duplicates"], 1)
        self.assertEqual(i["skipped"], {"not_json": 0, "not_closewait_event": 0, "too_long": 0})
        self.assertEqual(i["unmatched_closed_late"], 0)
        self.assertEqual(self.r["suppressions_used"],
                         [{"pattern": "mod:*/libvendor.so*", "findings": 1, "leaks_open": 2,
                           "leaks_total": 2}])

    def test_markdown_golden(self):
        check_golden(self, "scenario.md", skeleton(self.out["markdown"]))

    def test_text_golden(self):
        check_golden(self, "scenario.txt", skeleton(self.out["text"]))

    def test_json_golden(self):
        check_golden(self, "scenario.json",
                     json.dumps(json_skeleton(self.r), indent=1, sort_keys=True) + "\n")

    def test_markdown_structure(self):
        md = self.out["markdown"]
        lines = md.splitlines()
        self.assertEqual(lines[0], "# closewait: 16 socket(s) left in CLOSE_WAIT from 4 code "
                                   "site(s)")
        header = lines.index("| # | open / ever | growing | reason(s) | top frame | program(s) |")
        rows = [l for l in lines[header + 2:] if l.startswith("| ")]
        self.assertEqual(len(rows), 4)
        self.assertTrue(rows[0].startswith("| 1 | 11 / 12 | **yes** | "))
        self.assertIn("`handle_client (server.c:88)`", rows[0])
        heads = [l for l in lines if l.startswith("## ")]
        self.assertEqual(heads, ["## 1. `handle_client (server.c:88)`: 11 open / 12 ever",
                                 "## 2. `demo-server+0x2340`: 2 open / 6 ever",
                                 "## 3. `pool_checkout (client.c:55)`: 2 open / 3 ever",
                                 "## 4. stack unknown: 1 open / 1 ever",
                                 "## Suppressed"])
        self.assertIn("#1 handle_client at /src/demo/server.c:88 "
                      "(/usr/sbin/demo-server+0x1a2b)", lines)
        self.assertEqual(sum(1 for l in lines if l.startswith("How to reproduce: "
                                                               "`LD_PRELOAD=libclosewait.so "
                                                               "CLOSEWAIT_GRACE_MS=")), 4)
        self.assertNotIn("vendor_listen", md)       # suppressed: counted, not listed
        self.assertIn("- `mod:*/libvendor.so*`: 1 finding(s), 2 open / 2 ever", lines)

    def test_text_summary_line(self):
        lines = self.out["text"].splitlines()
        self.assertEqual(lines[-1], "SUMMARY: closewait: 16 leaked socket(s) from 4 open site(s)")
        self.assertTrue(any(l.startswith("Leak of 11 socket(s) still open (12 ever, growing)")
                            for l in lines))
        self.assertIn("    #1 handle_client at /src/demo/server.c:88 "
                      "(/usr/sbin/demo-server+0x1a2b)", lines)

    def test_argument_order_does_not_matter(self):
        r2, _ = run_json("--no-symbolize", "--suppressions", SUPP, *reversed(SCENARIO))
        r2["inputs"]["files"] = self.r["inputs"]["files"]
        self.assertEqual(r2, self.r)

    def test_stdin_and_gzip_on_stdin(self):
        with open(SCENARIO[2], "rb") as f:
            gz = f.read()
        args = ["--no-symbolize", "--suppressions", SUPP] + SCENARIO[:2] + ["-"] + SCENARIO[3:]
        r2, _ = run_json(*args, stdin=gz)
        self.assertEqual(r2["findings"], self.r["findings"])
        self.assertIn("<stdin>", r2["inputs"]["files"])

    def test_without_suppressions(self):
        r2, _ = run_json("--no-symbolize", *SCENARIO)
        e = finding(r2, E)
        self.assertEqual(e["top_frame"], "vendor_listen (vendor.c:10)")
        self.assertEqual(r2["summary"]["suppressed_findings"], 0)
        self.assertEqual(r2["suppressions_used"], [])

    def test_output_file(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "report.md")
            rc, stdout, err = run("--no-symbolize", "--suppressions", SUPP, "--output", out,
                                  *SCENARIO)
            self.assertEqual((rc, stdout), (0, ""), err)
            with open(out) as f:
                self.assertEqual(f.read(), self.out["markdown"])


class ExitStatus(unittest.TestCase):
    def test_fail_on_leak(self):
        rc, _, _ = run("--no-symbolize", "--fail-on-leak", *SCENARIO)
        self.assertEqual(rc, 1)

    def test_fail_on_leak_all_suppressed(self):
        with tempfile.TemporaryDirectory() as d:
            supp = os.path.join(d, "all.supp")
            with open(supp, "w") as f:
                f.write("# everything\nmod:*\n")
            rc, out, err = run("--no-symbolize", "--fail-on-leak", "--format", "text",
                               "--suppressions", supp, os.path.join(FIX, "app.log.1"))
            # (a finding known only from a summary has no stack, so no pattern matches it:
            # app.log.1 has none)
            self.assertEqual(rc, 0, out + err)
            self.assertTrue(out.endswith("SUMMARY: closewait: 0 leaked socket(s) from 0 open "
                                         "site(s)\n"))
            self.assertIn("Suppressions used:", out)

    def test_no_leaks_is_success(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "empty.log")
            open(empty, "w").close()
            for fmt in ("markdown", "json", "text"):
                rc, out, err = run("--fail-on-leak", "--format", fmt, empty)
                self.assertEqual(rc, 0, err)
            rc, out, _ = run(empty)
            self.assertTrue(out.startswith("# closewait: no leaked sockets\n"))
            rc, out, _ = run("--format", "text", empty)
            self.assertEqual(out.splitlines()[-1],
                             "SUMMARY: closewait: 0 leaked socket(s) from 0 open site(s)")

    def test_usage_errors(self):
        with tempfile.TemporaryDirectory() as d:
            for args in ([], ["--format", "xml", SCENARIO[0]], [os.path.join(d, "missing.log")],
                         [d], ["--suppressions", os.path.join(d, "nope"), SCENARIO[0]],
                         ["--bogus", SCENARIO[0]], ["-", "-"]):
                rc, out, err = run(*args, stdin=b"")
                self.assertEqual(rc, 2, "%r: %s" % (args, err))
                self.assertEqual(out, "")
                self.assertNotIn("Traceback", err)

    def test_unwritable_output(self):
        rc, out, err = run("--output", "/nonexistent/dir/report.md", SCENARIO[0])
        self.assertEqual(rc, 2)
        self.assertNotIn("Traceback", err)


# --------------------------------------------------------------------------------------

def ev(kind, ts, pid=100, **kw):
    d = {"event": kind, "pid": pid, "ts_ms": 1714557600000 + ts,
         "time": cwr.fmt_time(1714557600000 + ts)}
    d.update(kw)
    return d


def leak_ev(ts, fd, sid="1111111111111111", pid=100, **kw):
    frames = [{"pc": "0x1", "module": "/usr/bin/x", "offset": "0x10", "function": "f",
               "file": "x.c", "line": 1}]
    return ev("leak", ts, pid, fd=fd, reason="eof_not_closed", stack_id=sid, open_stack=frames,
              exe="/usr/bin/x", peer="1.1.1.1:1", since_fin_ms=10000, **kw)


def report_of(events, *args):
    data = "".join(json.dumps(e) + "\n" for e in events).encode()
    r, _ = run_json("--no-symbolize", "-", *args, stdin=data)
    return r


class MergeRules(unittest.TestCase):
    def test_growing_rule(self):
        g = cwr.is_growing
        self.assertTrue(g([1, 2, 3], 3))
        self.assertTrue(g([1, 2, 1, 2, 3, 2, 3, 4], 6))           # ramp with some closes
        self.assertFalse(g([1, 2], 2))                             # too few leaks
        self.assertFalse(g([1, 0, 1, 0, 1, 0, 1, 0], 4))           # health checks
        self.assertFalse(g([1, 2, 3, 4, 3, 2, 1, 0], 4))           # burst, then drained
        self.assertTrue(g([1, 2, 3, 3, 3, 3], 3))                  # rose, then held: still up
        self.assertFalse(g([5, 5, 5, 5], 4))                       # steady pool
        self.assertFalse(g([1, 2, 3, 0], 3))                       # all closed at the end

    def test_growing_end_to_end(self):
        r = report_of([leak_ev(i * 1000, 10 + i) for i in range(5)])
        self.assertTrue(r["findings"][0]["growing"])
        evs = []
        for i in range(5):
            evs.append(leak_ev(i * 1000, 10))
            evs.append(ev("closed_late", i * 1000 + 500, fd=10, stack_id="1111111111111111"))
        r = report_of(evs)
        self.assertFalse(r["findings"][0]["growing"])
        self.assertEqual((r["findings"][0]["count_open"], r["findings"][0]["count_ever"]), (0, 5))

    def test_library_growing_flag(self):
        r = report_of([leak_ev(0, 10), leak_ev(1000, 11, site_open=2, site_ever=2,
                                               growing=True)])
        self.assertTrue(r["findings"][0]["growing"])
        r = report_of([leak_ev(0, 10), leak_ev(1000, 11, growing=True),
                       ev("closed_late", 2000, fd=10, stack_id="1111111111111111")])
        self.assertFalse(r["findings"][0]["growing"])

    def test_closed_late_needs_same_pid_fd_and_stack(self):
        r = report_of([leak_ev(0, 10),
                       ev("closed_late", 100, fd=11, stack_id="1111111111111111"),
                       ev("closed_late", 200, pid=101, fd=10, stack_id="1111111111111111"),
                       ev("closed_late", 300, fd=10, stack_id="2222222222222222")])
        self.assertEqual(r["findings"][0]["count_open"], 1)
        self.assertEqual(r["inputs"]["unmatched_closed_late"], 3)
        r = report_of([leak_ev(0, 10), leak_ev(10, 10),
                       ev("closed_late", 100, fd=10, stack_id="1111111111111111")])
        self.assertEqual(r["findings"][0]["count_open"], 1)

    def test_site_open_covers_rotated_out_leaks(self):
        # the first 4 leaks went out with a deleted log; site_open/site_ever still count them
        r = report_of([leak_ev(0, 15, site_open=5, site_ever=7)])
        self.assertEqual((r["findings"][0]["count_open"], r["findings"][0]["count_ever"]), (5, 7))
        r = report_of([leak_ev(0, 15, site_open=5, site_ever=7),
                       ev("closed_late", 10, fd=3, stack_id="1111111111111111")])
        self.assertEqual(r["findings"][0]["count_open"], 4)

    def test_summary_at_exit_ends_the_process(self):
        sid = "1111111111111111"
        r = report_of([leak_ev(0, 10), leak_ev(1, 11),
                       ev("summary", 2, findings=[{"stack_id": sid, "count_now": 1,
                                                   "count_ever": 2}]),
                       leak_ev(3, 10)])                        # the pid, reused
        f = r["findings"][0]
        self.assertEqual((f["count_open"], f["count_ever"], f["process_instances"]), (2, 3, 2))
        r = report_of([leak_ev(0, 10),
                       ev("summary", 2, why="on request",
                          findings=[{"stack_id": sid, "count_now": 1, "count_ever": 1}]),
                       leak_ev(3, 11)])
        f = r["findings"][0]
        self.assertEqual((f["count_open"], f["count_ever"], f["process_instances"]), (2, 2, 1))

    def test_start_event_names_host_and_new_process(self):
        r = report_of([ev("start", 0, exe="/usr/bin/x", host="h1", grace_ms=250),
                       leak_ev(1, 10),
                       ev("start", 5, exe="/usr/bin/x", host="h1", grace_ms=250),
                       leak_ev(6, 10)])
        f = r["findings"][0]
        self.assertEqual(f["processes"], [{"host": "h1", "pid": 100}])
        self.assertEqual(f["process_instances"], 2)
        self.assertEqual(f["count_open"], 2)
        self.assertIn("CLOSEWAIT_GRACE_MS=250 ", f["reproduce_command"])

    def test_start_in_rotated_file_names_host(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "cw.log.1"), "w") as f:
                f.write(json.dumps(ev("start", 0, host="h9")) + "\n")
            with gzip.open(os.path.join(d, "cw.log.2.gz"), "wt") as f:
                f.write(json.dumps(leak_ev(1, 10, pid=7)) + "\n")   # another pid
            with open(os.path.join(d, "cw.log"), "w") as f:
                f.write(json.dumps(leak_ev(5, 10)) + "\n")
            with open(os.path.join(d, "other.log"), "w") as f:     # another family
                f.write(json.dumps(leak_ev(6, 11)) + "\n")
            r, _ = run_json("--no-symbolize", *[os.path.join(d, n) for n in
                                                 ("cw.log", "cw.log.1", "cw.log.2.gz",
                                                  "other.log")])
        self.assertEqual(r["findings"][0]["processes"],
                         [{"host": None, "pid": 7}, {"host": None, "pid": 100},
                          {"host": "h9", "pid": 100}])

    def test_suppressed_in_process(self):
        r = report_of([ev("summary", 0, why="exit", suppressed=3, findings=[]),
                       ev("summary", 0, pid=101, why="on request", suppressed=1, findings=[]),
                       ev("summary", 5, pid=101, why="exit", suppressed=2, findings=[])])
        self.assertEqual(r["summary"]["suppressed_in_process"], 5)
        self.assertEqual(r["findings"], [])

    def test_duplicate_lines_count_once(self):
        e = leak_ev(0, 10)
        r = report_of([e, e, e])
        self.assertEqual(r["findings"][0]["count_ever"], 1)
        self.assertEqual(r["inputs"]["duplicates"], 2)

    def test_missing_stack_id_is_derived_from_frames(self):
        e = leak_ev(0, 10)
        del e["stack_id"]
        r = report_of([e, dict(e, fd=11, ts_ms=e["ts_ms"] + 1)])
        self.assertEqual(r["findings"][0]["count_ever"], 2)

    def test_suppression_syntax(self):
        s = cwr.Suppressions()
        with tempfile.NamedTemporaryFile("w", suffix=".supp", delete=False) as f:
            f.write("# c\n\n  fun:ns::Conn::*  \nmod:libfoo.so*\nsrc:*/vendor/*\nbare_fn\n"
                    "weird:colon\n")
        try:
            s.load(f.name)
        finally:
            os.unlink(f.name)
        kinds = [(k, g) for k, g, _ in s.rules]
        self.assertEqual(kinds, [("fun", "ns::Conn::*"), ("mod", "libfoo.so*"),
                                 ("src", "*/vendor/*"), ("fun", "bare_fn"),
                                 ("fun", "weird:colon")])
        fr = lambda **k: dict({"function": None, "module": None, "file": None}, **k)
        self.assertEqual(s.match([fr(function="ns::Conn::open(int)")]), "fun:ns::Conn::*")
        self.assertEqual(s.match([fr(module="/usr/lib/libfoo.so.1")]), "mod:libfoo.so*")
        self.assertEqual(s.match([fr(file="/src/vendor/z.c")]), "src:*/vendor/*")
        self.assertEqual(s.match([fr(function="bare_fn")]), "bare_fn")
        self.assertIsNone(s.match([fr(function="Bare_fn")]))     # case-sensitive
        self.assertIsNone(s.match([]))


# --------------------------------------------------------------------------------------

# -------------------------------------------------------------------------- growth charts

def png_pixels(path):
    """(width, height, rows of (r, g, b, a)) of an 8-bit RGB/RGBA non-interlaced PNG, as
    rsvg-convert and Chromium write them (standard library only)."""
    import struct
    import zlib
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _c, _f, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and not interlace, "PNG kind %s" % (ihdr,)
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    rows, prev, stride = [], bytearray(w * bpp), w * bpp
    for y in range(h):
        ft, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + bpp]) + ((255,) if bpp == 3 else ())
                     for x in range(w)])
        prev = line
    return w, h, rows


def ramp_events(start_ms=4 * 3600000 + 2 * 60000, step_ms=90000, n=41, sid="1111111111111111"):
    """n leaks, one every step_ms from 14:02 (the fixtures' day): 1, 2, ... n held."""
    return [leak_ev(start_ms + i * step_ms, 10 + i, sid=sid) for i in range(n)]


def mermaid_blocks(md):
    return re.findall(r"```mermaid\n(.*?)```", md, re.S)


_mmdc = []


def mermaid_cli():
    """mermaid-cli (Mermaid's own renderer, in Chromium), installed by npm on first use into a
    cache directory outside the checkout; SkipTest when it cannot be."""
    if _mmdc:
        if isinstance(_mmdc[0], str):
            return _mmdc[0]
        raise unittest.SkipTest(_mmdc[0][0])
    why = None
    chromium = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(c)), None)
    base = os.environ.get("CLOSEWAIT_MERMAID_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "closewait-tests", "mermaid-cli")
    mmdc = os.path.join(base, "node_modules", ".bin", "mmdc")
    if os.path.realpath(base).startswith(os.path.realpath(ROOT) + os.sep):
        why = "CLOSEWAIT_MERMAID_DIR is inside the checkout; nothing is installed there"
    elif chromium is None:
        why = "no Chromium for mermaid-cli (Debian: apt-get install chromium)"
    elif not os.path.exists(mmdc):
        if not shutil.which("npm"):
            why = "npm is not installed (Debian: apt-get install npm)"
        else:
            os.makedirs(base, exist_ok=True)
            env = dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1")
            try:
                p = subprocess.run(["npm", "install", "--prefix", base, "--no-audit", "--no-fund",
                                    "--loglevel=error", "@mermaid-js/mermaid-cli@11"],
                                   capture_output=True, timeout=600, env=env)
                if p.returncode != 0 or not os.path.exists(mmdc):
                    tail = p.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
                    why = "npm install @mermaid-js/mermaid-cli failed (offline?): %s" % tail
            except subprocess.TimeoutExpired:
                why = "npm install @mermaid-js/mermaid-cli took over 10 minutes (offline?)"
    if why:
        _mmdc.append((why,))
        raise unittest.SkipTest(why)
    conf = os.path.join(base, "puppeteer.json")
    with open(conf, "w") as f:
        # root in a container: Chromium's sandbox needs user namespaces it may not have
        json.dump({"executablePath": chromium, "args": ["--no-sandbox", "--disable-gpu"]}, f)
    _mmdc.append("%s\0%s" % (mmdc, conf))
    return _mmdc[0]


def render_mermaid(text, out):
    """Mermaid's renderer on one diagram; its SVG as text (AssertionError with its words if it
    refuses the diagram)."""
    mmdc, conf = mermaid_cli().split("\0")
    d = os.path.dirname(out)
    src = os.path.join(d, "chart.mmd")
    with open(src, "w") as f:
        f.write(text)
    p = subprocess.run([mmdc, "-p", conf, "-q", "-i", src, "-o", out, "-b", "white"],
                       capture_output=True, timeout=180)
    if p.returncode != 0:
        raise AssertionError("mermaid-cli refuses the chart: %s\n%s" % (
            p.stderr.decode("utf-8", "replace")[:1500], text))
    if out.endswith(".svg"):
        with open(out, encoding="utf-8") as f:
            return f.read()
    return None


class Charts(unittest.TestCase):
    def test_rate_in_words(self):
        r = report_of(ramp_events())
        f = r["findings"][0]
        self.assertTrue(f["growing"])
        g = f["growth"]
        self.assertEqual(g["text"], "+40 sockets/hour since 14:02 UTC")
        self.assertEqual((g["from_held"], g["to_held"]), (1, 41))
        self.assertEqual(g["rate_per_hour"], 40.0)
        self.assertEqual(g["points"][-1][1], f["count_open"])
        # faster ramps are said per minute and per second; the start is the last low point
        evs = [leak_ev(i * 1000, 10 + i) for i in range(6)]
        evs.insert(2, ev("closed_late", 1500, fd=10, stack_id="1111111111111111"))
        g = report_of(evs)["findings"][0]["growth"]
        self.assertEqual((g["from_held"], g["to_held"], g["text"]),
                         (1, 5, "+1.1 sockets/second since 10:00:01 UTC"))
        g = report_of(ramp_events(0, 20000, 7))["findings"][0]["growth"]
        self.assertEqual(g["text"], "+3 sockets/minute since 10:00:00 UTC")

    def test_no_chart_without_growth(self):
        evs = []
        for i in range(5):
            evs.append(leak_ev(i * 1000, 10))
            evs.append(ev("closed_late", i * 1000 + 500, fd=10, stack_id="1111111111111111"))
        r = report_of(evs)
        self.assertIsNone(r["findings"][0]["growth"])
        data = "".join(json.dumps(e) + "\n" for e in evs).encode()
        with tempfile.TemporaryDirectory() as d:
            rc, md, _ = run("--no-symbolize", "--svg", os.path.join(d, "svg"), "-", stdin=data)
            self.assertEqual(rc, 0)
            self.assertEqual(mermaid_blocks(md), [])
            self.assertEqual(os.listdir(os.path.join(d, "svg")), [])

    def test_markdown_block_and_rate(self):
        data = "".join(json.dumps(e) + "\n" for e in ramp_events()).encode()
        rc, md, _ = run("--no-symbolize", "-", stdin=data)
        self.assertEqual(rc, 0)
        self.assertIn("**+40 sockets/hour since 14:02 UTC** (from 1 to 41 held)", md)
        blocks = mermaid_blocks(md)
        self.assertEqual(len(blocks), 1)
        lines = blocks[0].splitlines()
        self.assertEqual(lines[0], "xychart-beta")
        values = [int(v) for v in re.search(r"^ *line \[(.*)\]$", blocks[0], re.M).group(1).split(",")]
        labels = re.findall(r'"(\d\d:\d\d)"', re.search(r"x-axis .*", blocks[0]).group(0))
        self.assertEqual(len(values), len(labels))
        self.assertEqual((values[0], values[-1], labels[0], labels[-1]), (1, 41, "14:02", "15:02"))
        self.assertEqual(values, sorted(values))

    def test_mermaid_renders_with_mermaid_cli(self):
        """The block through Mermaid's own parser and renderer (mermaid-cli, in Chromium): it
        must accept it, and the line it draws must rise left to right, one point per value."""
        text = mermaid_blocks(report_of_markdown(ramp_events()))[0]
        # and a hostile function name: the title must not break the chart
        hostile = ramp_events(sid="2222222222222222")
        for e in hostile:
            e["open_stack"][0]["function"] = 'f"]\nline [9]\n%%{init: {}}%% <b>`x`</b> \\'
        text2 = mermaid_blocks(report_of_markdown(hostile))[0]
        with tempfile.TemporaryDirectory() as d:
            for t in (text, text2):
                out = render_mermaid(t, os.path.join(d, "chart.svg"))
                path = re.search(r'class="line-plot-0".*?<path d="([^"]+)"', out, re.S)
                self.assertIsNotNone(path, "no line plot in Mermaid's SVG")
                ys = [float(y) for y in re.findall(r"[ML][\d.]+,([\d.]+)", path.group(1))]
                values = [int(v) for v in re.search(r"^ *line \[(.*)\]$", t, re.M).group(1).split(",")]
                self.assertEqual(len(ys), len(values))
                self.assertLess(ys[-1], ys[0])        # SVG y grows downwards: the line goes up
                self.assertEqual(ys, sorted(ys, reverse=True))
            render_mermaid(text, os.path.join(d, "chart.png"))
            w, h, rows = png_pixels(os.path.join(d, "chart.png"))
            inked = sum(1 for row in rows for px in row if px[3] > 0 and min(px[:3]) < 200)
            self.assertGreater(inked, 500, "Mermaid's PNG is blank")

    def test_svg_renders_with_rsvg(self):
        """--svg: one file per growing finding, valid XML, drawn by rsvg-convert (librsvg): the
        red line spans the plot and ends higher than it starts."""
        rsvg = shutil.which("rsvg-convert")
        if rsvg is None:
            self.skipTest("rsvg-convert is not installed (Debian: apt-get install librsvg2-bin)")
        import xml.etree.ElementTree as ET
        evs = ramp_events() + [leak_ev(0, 99, sid="3333333333333333")]
        for e in evs[:41]:
            e["open_stack"][0]["function"] = 'f<script>alert("x")</script>&\x01'
        data = "".join(json.dumps(e) + "\n" for e in evs).encode()
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "charts")
            rc, _, err = run("--no-symbolize", "--svg", out, "-", stdin=data)
            self.assertEqual(rc, 0, err)
            self.assertEqual(os.listdir(out), ["finding-1-1111111111111111.svg"])
            svg_path = os.path.join(out, "finding-1-1111111111111111.svg")
            root = ET.parse(svg_path).getroot()
            self.assertNotIn("script", [el.tag.split("}")[-1] for el in root.iter()])
            text = open(svg_path, encoding="utf-8").read()
            self.assertIn("+40 sockets/hour since 14:02 UTC", text)
            png = os.path.join(d, "chart.png")
            p = subprocess.run([rsvg, "-o", png, svg_path], capture_output=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            w, h, rows = png_pixels(png)
            top = 58            # the plot area: below the title and the rate (red text too)
            red = [(x, y) for y, row in enumerate(rows) for x, px in enumerate(row)
                   if y > top and px[0] > 180 and px[1] < 90 and px[2] < 90 and px[3] > 200]
            self.assertGreater(len(red), 300, "the line is not drawn")
            xs = [x for x, _ in red]
            self.assertGreater(max(xs) - min(xs), w // 2, "the line does not span the chart")
            left = min(y for x, y in red if x - min(xs) < 5)
            right = min(y for x, y in red if max(xs) - x < 5)
            self.assertLess(right, left - h // 4, "the line does not go up")
            # an unwritable DIR is a usage error
            rc, out_text, err = run("--no-symbolize", "--svg", os.path.join(svg_path, "x"), "-", stdin=data)
            self.assertEqual((rc, out_text), (2, ""))


def report_of_markdown(events):
    data = "".join(json.dumps(e) + "\n" for e in events).encode()
    rc, md, err = run("--no-symbolize", "-", stdin=data)
    if rc != 0:
        raise AssertionError(err)
    return md


class Hostile(unittest.TestCase):
    CTRL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

    def test_hostile_fixture_all_formats(self):
        path = os.path.join(FIX, "hostile.log")
        outs = {}
        for fmt in ("markdown", "json", "text"):
            rc, out, err = run("--format", fmt, path)
            self.assertEqual(rc, 0, err)
            self.assertNotIn("Traceback", err)
            skipped = [l for l in err.splitlines() if "skipped" in l]
            self.assertEqual(skipped, ["closewait-report: skipped 28 of 32 line(s): 11 not JSON, "
                                       "17 not closewait events (first at %s:3)" % path])
            self.assertIsNone(self.CTRL.search(out), repr(out))
            outs[fmt] = out
        r = json.loads(outs["json"])
        self.assertEqual(sorted(f["stack_id"] for f in r["findings"]),
                         ["e7e7e7e7e7e7e7e7", "f6f6f6f6f6f6f6f6"])
        md = outs["markdown"].splitlines()
        self.assertFalse([l for l in md if l.startswith(("## Fake", "| injected"))])
        # every table row still has its 6 cells: pipes inside values are escaped
        rows = [l for l in md if l.startswith("| ") and not l.startswith("| #")]
        for row in rows:
            self.assertEqual(len(re.split(r"(?<!\\)\|", row)), 8, row)
        # the reproduce command stays one shell word for a hostile exe
        f6 = finding(r, "f6f6f6f6f6f6f6f6")
        words = shlex.split(f6["reproduce_command"])
        self.assertEqual(words[-1], "/opt/my app/$(touch pwned)'x")

    def test_long_line_skipped(self):
        data = b'{"event":"leak","pid":1,"x":"' + b"a" * (3 << 20) + b'"}\n' + \
            json.dumps(leak_ev(0, 10)).encode() + b"\n"
        rc, out, err = run("--format", "json", "--no-symbolize", "-", stdin=data)
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual(r["inputs"]["skipped"]["too_long"], 1)
        self.assertEqual(r["inputs"]["events"]["leak"], 1)

    def test_truncated_gzip(self):
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            for i in range(2000):
                gz.write(json.dumps(leak_ev(i, 10 + i)).encode() + b"\n")
        data = buf.getvalue()
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "cw.log.3.gz")
            with open(p, "wb") as f:
                f.write(data[:len(data) * 2 // 3])
            rc, out, err = run("--format", "json", "--no-symbolize", p)
        self.assertEqual(rc, 0, err)
        self.assertIn("read error", err)
        r = json.loads(out)
        self.assertGreater(r["inputs"]["events"]["leak"], 100)
        self.assertEqual(len(r["inputs"]["read_errors"]), 1)

    def test_binary_garbage_and_fake_magic(self):
        rnd = random.Random(7)
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, data in (("junk.log", bytes(rnd.randrange(256) for _ in range(50000))),
                               ("fake.gz", b"\x1f\x8b" + b"garbage" * 100),
                               ("fake.xz", b"\xfd7zXZ\x00" + b"\x00" * 50),
                               ("fake.bz2", b"BZh9" + b"\x01" * 50)):
                p = os.path.join(d, name)
                with open(p, "wb") as f:
                    f.write(data)
                paths.append(p)
            for fmt in ("markdown", "json", "text"):
                rc, out, err = run("--format", fmt, *paths)
                self.assertEqual(rc, 0, err)
                self.assertNotIn("Traceback", err)

    def test_xz_and_bz2_logs(self):
        import bz2
        import lzma
        line = json.dumps(leak_ev(0, 10)).encode() + b"\n"
        line2 = json.dumps(leak_ev(1, 11)).encode() + b"\n"
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "a.log.1.xz"), "wb") as f:
                f.write(lzma.compress(line))
            with open(os.path.join(d, "a.log.2.bz2"), "wb") as f:
                f.write(bz2.compress(line2))
            r, _ = run_json("--no-symbolize", os.path.join(d, "a.log.1.xz"),
                            os.path.join(d, "a.log.2.bz2"))
        self.assertEqual(r["findings"][0]["count_ever"], 2)

    def test_hostile_frames_with_symbolization(self):
        # module paths that must not be opened or run: devices, fifos, directories, /proc
        with tempfile.TemporaryDirectory() as d:
            fifo = os.path.join(d, "fifo")
            os.mkfifo(fifo)
            frames = [{"module": m, "offset": "0x10"} for m in
                      (fifo, "/dev/zero", d, "/proc/self/exe", "relative/lib.so", "-e",
                       "/nonexistent", "/etc/passwd")]
            e = leak_ev(0, 10)
            e["open_stack"] = frames
            data = (json.dumps(e) + "\n").encode()
            start = time.time()
            rc, out, err = run("--format", "json", "-", stdin=data)
            self.assertLess(time.time() - start, 60)
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertTrue(all(not f["symbolized"] for f in r["findings"][0]["open_stack"]))


class Fuzz(unittest.TestCase):
    """Random and mutated lines, fed in-process, through every stage and format."""

    def random_value(self, rnd, depth=0):
        k = rnd.randrange(12 if depth < 4 else 8)
        if k == 0:
            return None
        if k == 1:
            return rnd.choice([True, False])
        if k == 2:
            return rnd.choice([0, -1, 1, 2 ** 31, 2 ** 63, 2 ** 64 + 5, -2 ** 70,
                               rnd.randrange(-10 ** 6, 10 ** 6), 10 ** 400])
        if k == 3:
            return rnd.choice([0.5, -1e300, 1e308, 3.0, -0.0])
        if k in (4, 5, 6, 7):
            return rnd.choice(["", "0x", "0xffffffffffffffffff", "leak", "summary", "closed_late",
                               "start", "\ud800", "\x00\x1b[2J", "a" * rnd.randrange(5000),
                               "2024-13-45T99:99:99Z", "../../etc/passwd", "`|*_#<b>",
                               "%p%n%s", "0x1234", "exit", "on request"])
        if k in (8, 9):
            return [self.random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
        return {rnd.choice(["event", "pid", "fd", "stack_id", "offset", "module", "function",
                            "findings", "count_now", "x"]): self.random_value(rnd, depth + 1)
                for _ in range(rnd.randrange(4))}

    def mutate(self, rnd, base_events, base_lines):
        k = rnd.randrange(6)
        if k == 0:                                  # byte-level damage
            line = bytearray(rnd.choice(base_lines))
            for _ in range(rnd.randrange(1, 8)):
                op = rnd.randrange(3)
                pos = rnd.randrange(len(line) + 1)
                if op == 0 and line:
                    line[min(pos, len(line) - 1)] = rnd.randrange(256)
                elif op == 1:
                    line[pos:pos] = bytes([rnd.randrange(256)])
                else:
                    del line[pos:pos + rnd.randrange(1, 20)]
            return bytes(line)
        if k == 1:                                  # truncation
            line = rnd.choice(base_lines)
            return line[:rnd.randrange(len(line) + 1)]
        if k == 2:                                  # random JSON
            return json.dumps(self.random_value(rnd)).encode()
        # structural: change, drop or retype fields of a real event, nested ones too
        e = json.loads(json.dumps(rnd.choice(base_events)))
        targets = [e]
        for key in ("open_stack", "eof_stack", "findings"):
            if isinstance(e.get(key), list):
                targets += [x for x in e[key] if isinstance(x, dict)]
        for _ in range(rnd.randrange(1, 5)):
            t = rnd.choice(targets)
            keys = list(t) or ["event"]
            key = rnd.choice(keys + ["host", "why", "inlined", "build_id", "site_open"])
            if rnd.random() < 0.3:
                t.pop(key, None)
            else:
                t[key] = self.random_value(rnd)
        if rnd.random() < 0.5:
            e["event"] = rnd.choice(["leak", "closed_late", "summary", "start"])
            e["pid"] = rnd.choice([1, 2, 3])
        return json.dumps(e).encode()

    def test_fuzz(self):
        iterations = int(os.environ.get("CLOSEWAIT_FUZZ_ITER", "2000"))
        seed = int(os.environ.get("CLOSEWAIT_FUZZ_SEED", str(int(time.time()))))
        rnd = random.Random(seed)
        base_lines = []
        for name in SCENARIO + [os.path.join(FIX, "hostile.log")]:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(name, "rb") as f:
                base_lines += [l.rstrip(b"\n") for l in f if l.strip()]
        base_events = []
        for l in base_lines:
            try:
                v = json.loads(l)
            except (ValueError, RecursionError):
                continue
            if isinstance(v, dict):
                base_events.append(v)
        args = cwr.parse_args(["--no-symbolize", "x"])
        batch = 100
        done = 0
        accepted = rejected = 0
        try:
            while done < iterations:
                col = cwr.Collector()
                col.inputs.files.append("fuzz")
                for i in range(min(batch, iterations - done)):
                    line = self.mutate(rnd, base_events, base_lines)
                    col.inputs.lines += 1
                    col.feed(line, "fuzz:%d" % i)
                    if rnd.random() < 0.3:           # keep some valid events in the mix
                        col.feed(rnd.choice(base_lines), "base")
                done += batch
                accepted += sum(col.inputs.events.values())
                rejected += col.inputs.not_json + col.inputs.not_event
                for fmt in ("markdown", "json", "text"):
                    args.format = fmt
                    # a copy per format: merge() adds to the collector's findings
                    report, text = cwr.generate(args, self._clone(col))
                    self.assertIsInstance(text, str)
                    text.encode("utf-8")
                    if fmt == "json":
                        json.loads(text)
        except Exception:
            print("\nfuzz failed with CLOSEWAIT_FUZZ_SEED=%d" % seed, file=sys.stderr)
            raise
        # the mutations must reach both sides of the parser
        self.assertGreater(accepted, iterations // 10)
        self.assertGreater(rejected, iterations // 10)
        print("(fuzz: %d iterations, seed %d, %d events accepted, %d lines rejected) "
              % (iterations, seed, accepted, rejected), end="", flush=True)

    @staticmethod
    def _clone(col):
        import copy
        return copy.deepcopy(col)


# --------------------------------------------------------------------------------------

PROG_C = r"""#include <stdio.h>
#include <stdlib.h>
static inline __attribute__((always_inline)) int helper(int x) {
    int r = rand(); /* L_RAND */
    if (r == x) puts("eq");
    return r + x;
}
__attribute__((noinline)) int open_conn(int x) { return x * 7 + rand(); } /* L_OPEN */
__attribute__((noinline)) int outer_fn(int x) {
    int v = helper(x); /* L_CALL_HELPER */
    return v * 3;
}
int main(int argc, char **argv) {
    (void)argv;
    int r = outer_fn(argc); /* L_MAIN_CALL */
    printf("%d %d\n", r, open_conn(r));
    return 0;
}
"""

PROG_CC = r"""#include <cstdlib>
namespace ns {
struct Widget {
    __attribute__((noinline)) int open(int x);
};
__attribute__((noinline)) int Widget::open(int x) { return x + std::rand(); } // L_OPEN
}
int main(int argc, char **) { ns::Widget w; return w.open(argc) & 1; }
"""


def line_of(src, marker):
    for i, l in enumerate(src.splitlines(), 1):
        if marker in l:
            return i
    raise KeyError(marker)


def sh(*cmd, cwd=None):
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def nm_address(binary, name):
    out = subprocess.run(["nm", binary], check=True, stdout=subprocess.PIPE, text=True).stdout
    for l in out.splitlines():
        parts = l.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise KeyError(name)


def return_address_after_call(binary, function, callee):
    """The address after the first call to callee in function (a return address)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    inside, found = False, False
    for l in out.splitlines():
        if re.match(r"^[0-9a-f]+ <%s>:$" % re.escape(function), l):
            inside = True
            continue
        if inside and not l.strip():
            break
        m = re.match(r"^\s*([0-9a-f]+):\s+(.*)$", l)
        if inside and m:
            if found:
                return int(m.group(1), 16)
            if m.group(2).startswith("call") and ("<%s" % callee) in m.group(2):
                found = True
    raise KeyError("%s calls %s" % (function, callee))


def build_id_of(binary):
    out = subprocess.run(["readelf", "-n", binary], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


HAVE_TOOLS = all(shutil.which(t) for t in ("gcc", "objcopy", "nm", "objdump", "strip",
                                           "readelf"))
HAVE_SYMBOLIZER = bool(shutil.which("eu-addr2line") or shutil.which("addr2line"))


@unittest.skipUnless(HAVE_TOOLS and HAVE_SYMBOLIZER, "needs gcc, binutils and an addr2line")
class Symbolize(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="cwr-sym-")
        d = cls.tmp
        with open(os.path.join(d, "prog.c"), "w") as f:
            f.write(PROG_C)
        cls.prog = os.path.join(d, "prog")
        sh("gcc", "-O2", "-g", "-o", cls.prog, "prog.c", cwd=d)
        # a stripped copy whose debug information lives in a separate file
        os.makedirs(os.path.join(d, "stage"))
        os.makedirs(os.path.join(d, "debug"))
        cls.stripped = os.path.join(d, "stage", "prog")
        sh("objcopy", "--only-keep-debug", cls.prog, os.path.join(d, "prog.debug"))
        sh("strip", "--strip-all", "-o", cls.stripped, cls.prog)
        sh("objcopy", "--add-gnu-debuglink=prog.debug", cls.stripped, cwd=d)
        os.rename(os.path.join(d, "prog.debug"), os.path.join(d, "debug", "prog.debug"))
        cls.debug_dir = os.path.join(d, "debug")
        cls.build_id = build_id_of(cls.prog)
        cls.off_func = nm_address(cls.prog, "open_conn")
        cls.off_outer = return_address_after_call(cls.prog, "outer_fn", "rand")
        cls.off_main = return_address_after_call(cls.prog, "main", "outer_fn")
        cls.lines = {m: line_of(PROG_C, m) for m in ("L_RAND", "L_OPEN", "L_CALL_HELPER",
                                                      "L_MAIN_CALL")}
        with open(os.path.join(FIX, "symbolize.log.in")) as f:
            cls.template = f.read()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def log(self, module, name="sym.log", build_id=None, extra=None):
        text = self.template.replace("@MODULE@", module)
        for key, off in (("FUNC", self.off_func), ("OUTER", self.off_outer),
                         ("MAIN", self.off_main)):
            text = text.replace("@OFF_%s@" % key, "0x%x" % off)
            text = text.replace("@PC_%s@" % key, "0x%x" % (0x555500000000 + off))
        if build_id or extra:
            e = json.loads(text)
            for fr in e["open_stack"][:3]:
                if build_id:
                    fr["build_id"] = build_id
                if extra:
                    fr.update(extra)
            text = json.dumps(e) + "\n"
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def assert_symbolized(self, stack, module):
        names = [(f["function"], os.path.basename(f["file"] or ""), f["line"], f["inlined"])
                 for f in stack]
        L = self.lines
        self.assertEqual(names[:4], [
            ("open_conn", "prog.c", L["L_OPEN"], False),         # nm address, innermost
            ("helper", "prog.c", L["L_RAND"], True),              # inlined into outer_fn
            ("outer_fn", "prog.c", L["L_CALL_HELPER"], False),
            ("main", "prog.c", L["L_MAIN_CALL"], False)], names)
        self.assertEqual(stack[4]["module"], "/nonexistent/libc.so.6")   # left as is
        self.assertIsNone(stack[4]["function"])
        self.assertTrue(all(f["module"] == module for f in stack[:4]))
        self.assertEqual(stack[1]["offset"], "0x%x" % self.off_outer)

    def test_full_binary_markdown(self):
        rc, out, err = run(self.log(self.prog))
        self.assertEqual(rc, 0, err)
        L = self.lines
        lines = out.splitlines()
        self.assertIn("#0 open_conn at %s:%d (%s+0x%x)" % (
            os.path.join(self.tmp, "prog.c"), L["L_OPEN"], self.prog, self.off_func), lines)
        self.assertIn("#1 helper at %s:%d (%s+0x%x) [inlined]" % (
            os.path.join(self.tmp, "prog.c"), L["L_RAND"], self.prog, self.off_outer), lines)
        self.assertIn("#2 outer_fn at %s:%d (%s+0x%x)" % (
            os.path.join(self.tmp, "prog.c"), L["L_CALL_HELPER"], self.prog, self.off_outer),
            lines)
        self.assertIn("| `open_conn (prog.c:%d)` |" % L["L_OPEN"], out)
        r, _ = run_json(self.log(self.prog))
        self.assert_symbolized(r["findings"][0]["open_stack"], self.prog)
        self.assertIn(r["inputs"]["symbolizer"], ("eu-addr2line", "addr2line"))

    def test_stripped_with_separate_debug_file(self):
        r, err = run_json("--debug-dir", self.debug_dir, self.log(self.stripped))
        self.assert_symbolized(r["findings"][0]["open_stack"], self.stripped)

    def test_relative_debug_dir(self):
        log = self.log(self.stripped)
        rc, out, err = run("--format", "json", "--debug-dir", "debug", log, cwd=self.tmp)
        self.assertEqual(rc, 0, err)
        self.assert_symbolized(json.loads(out)["findings"][0]["open_stack"], self.stripped)

    def test_stripped_without_debug_file_left_as_is(self):
        rc, out, err = run("--format", "json", self.log(self.stripped))
        self.assertEqual(rc, 0, err)
        stack = json.loads(out)["findings"][0]["open_stack"]
        self.assertEqual(len(stack), 4)
        self.assertTrue(all(f["file"] is None for f in stack))

    def test_debuglink_next_to_binary(self):
        for sub in ("", ".debug"):
            d = tempfile.mkdtemp(dir=self.tmp)
            shutil.copy(self.stripped, os.path.join(d, "prog"))
            os.makedirs(os.path.join(d, sub), exist_ok=True)
            shutil.copy(os.path.join(self.debug_dir, "prog.debug"), os.path.join(d, sub))
            r, _ = run_json(self.log(os.path.join(d, "prog")))
            self.assert_symbolized(r["findings"][0]["open_stack"], os.path.join(d, "prog"))

    def test_build_id_directory(self):
        d = tempfile.mkdtemp(dir=self.tmp)
        bid = self.build_id
        os.makedirs(os.path.join(d, ".build-id", bid[:2]))
        shutil.copy(os.path.join(self.debug_dir, "prog.debug"),
                    os.path.join(d, ".build-id", bid[:2], bid[2:] + ".debug"))
        # the module itself is not on this machine: the build id finds the debug file
        r, _ = run_json("--debug-dir", d, self.log("/staging/bin/prog", build_id=bid))
        self.assert_symbolized(r["findings"][0]["open_stack"], "/staging/bin/prog")

    def test_build_id_mismatch_is_not_trusted(self):
        r, _ = run_json(self.log(self.prog, build_id="00" * 20))
        self.assertTrue(all(f["function"] is None for f in r["findings"][0]["open_stack"]))

    def test_logged_names_kept_when_the_local_file_disagrees(self):
        rc, out, err = run("--format", "json",
                           self.log(self.prog, extra={"function": "some_other_build"}))
        self.assertEqual(rc, 0)
        stack = json.loads(out)["findings"][0]["open_stack"]
        self.assertEqual([f["function"] for f in stack[:3]], ["some_other_build"] * 3)
        self.assertIn("a different build?", err)

    def test_logged_name_completed_with_file_and_line(self):
        # a frame named by dladdr (no file:line): the local file agrees and adds the rest
        e = json.loads(open(self.log(self.prog)).read())
        e["open_stack"][0]["function"] = "open_conn"
        p = os.path.join(self.tmp, "named.log")
        with open(p, "w") as f:
            f.write(json.dumps(e) + "\n")
        r, _ = run_json(p)
        self.assert_symbolized(r["findings"][0]["open_stack"], self.prog)

    def test_binutils_addr2line(self):
        if not shutil.which("addr2line"):
            self.skipTest("no binutils addr2line")
        r, _ = run_json("--debug-dir", self.debug_dir, self.log(self.stripped),
                        env={"CLOSEWAIT_REPORT_ADDR2LINE": "addr2line"})
        self.assert_symbolized(r["findings"][0]["open_stack"], self.stripped)
        self.assertEqual(r["inputs"]["symbolizer"], "addr2line")

    def test_eu_addr2line_preferred(self):
        if not shutil.which("eu-addr2line"):
            self.skipTest("no eu-addr2line")
        r, _ = run_json(self.log(self.prog))
        self.assertEqual(r["inputs"]["symbolizer"], "eu-addr2line")

    def test_missing_tool_leaves_frames(self):
        rc, out, err = run("--format", "json", self.log(self.prog),
                           env={"CLOSEWAIT_REPORT_ADDR2LINE": "/nonexistent/addr2line"})
        self.assertEqual(rc, 0, err)
        self.assertNotIn("Traceback", err)
        stack = json.loads(out)["findings"][0]["open_stack"]
        self.assertTrue(all(f["function"] is None for f in stack))

    def test_no_symbolize(self):
        r, _ = run_json("--no-symbolize", self.log(self.prog))
        self.assertTrue(all(f["function"] is None for f in r["findings"][0]["open_stack"]))
        self.assertIsNone(r["inputs"]["symbolizer"])

    def test_one_process_per_module(self):
        real = shutil.which("eu-addr2line") or shutil.which("addr2line")
        calls = os.path.join(self.tmp, "calls.txt")
        wrapper = os.path.join(self.tmp, "a2l-wrapper")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\necho \"$@\" >> %s\nexec %s \"$@\"\n" % (calls, real))
        os.chmod(wrapper, 0o755)
        one = self.log(self.prog, name="one.log")
        e = json.loads(open(one).read())
        e2 = dict(e, stack_id="5858585858585858", fd=5,
                  open_stack=list(reversed(e["open_stack"])), eof_stack=e["open_stack"])
        with open(one, "a") as f:
            f.write(json.dumps(e2) + "\n")
        r, _ = run_json(one, env={"CLOSEWAIT_REPORT_ADDR2LINE": wrapper})
        with open(calls) as f:
            self.assertEqual(len(f.read().splitlines()), 1)
        self.assertEqual(len(r["findings"]), 2)

    def test_suppression_matches_symbolized_inline_frame(self):
        supp = os.path.join(self.tmp, "inline.supp")
        with open(supp, "w") as f:
            f.write("fun:helper\n")
        r, _ = run_json("--suppressions", supp, self.log(self.prog))
        self.assertEqual(r["summary"]["suppressed_findings"], 1)
        r, _ = run_json("--no-symbolize", "--suppressions", supp, self.log(self.prog))
        self.assertEqual(r["summary"]["suppressed_findings"], 0)

    def one_frame_log(self, frames, name):
        e = json.loads(self.template.replace("@MODULE@", self.prog))
        e["open_stack"] = frames
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(json.dumps(e) + "\n")
        return p

    def test_innermost_return_address(self):
        # the library cuts its own frames off: its first frame is a return address, and the
        # call's line (offset - 1) is what both it and the report must show
        p = self.one_frame_log([{"module": self.prog, "offset": "0x%x" % self.off_main}],
                               "ret.log")
        r, _ = run_json(p)
        fr = r["findings"][0]["open_stack"][0]
        self.assertEqual((fr["function"], fr["line"]), ("main", self.lines["L_MAIN_CALL"]))

    def test_tail_call_frame_is_an_exact_address(self):
        p = self.one_frame_log([{"module": self.prog, "offset": "0x%x" % self.off_func,
                                 "tail_call": True},
                                {"module": self.prog, "offset": "0x%x" % self.off_main}],
                               "tail.log")
        r, _ = run_json(p)
        stack = r["findings"][0]["open_stack"]
        self.assertEqual([(f["function"], f["line"], f["tail_call"]) for f in stack],
                         [("open_conn", self.lines["L_OPEN"], True),
                          ("main", self.lines["L_MAIN_CALL"], False)])
        rc, out, _ = run(p)
        self.assertRegex(out, r"#0 open_conn at .*prog\.c:%d \(.*\) \[tail call\]"
                         % self.lines["L_OPEN"])

    def test_non_pie_executable(self):
        d = tempfile.mkdtemp(dir=self.tmp)
        exe = os.path.join(d, "prog")
        sh("gcc", "-O2", "-g", "-fno-pie", "-no-pie", "-o", exe,
           os.path.join(self.tmp, "prog.c"))
        func = nm_address(exe, "open_conn")
        base = 0x400000
        self.assertGreater(func, base)
        # offsets either relative to the first mapping (dladdr) or absolute (load bias 0)
        for off in (func - base, func):
            e = json.loads(self.template.replace("@MODULE@", exe))
            e["open_stack"] = [{"module": exe, "offset": "0x%x" % off}]
            p = os.path.join(d, "np.log")
            with open(p, "w") as f:
                f.write(json.dumps(e) + "\n")
            r, _ = run_json(p)
            fr = r["findings"][0]["open_stack"][0]
            self.assertEqual((fr["function"], fr["line"]), ("open_conn", self.lines["L_OPEN"]))

    def test_cplusplus_demangled(self):
        if not shutil.which("g++"):
            self.skipTest("no g++")
        d = tempfile.mkdtemp(dir=self.tmp)
        with open(os.path.join(d, "w.cc"), "w") as f:
            f.write(PROG_CC)
        exe = os.path.join(d, "w")
        sh("g++", "-O2", "-g", "-o", exe, "w.cc", cwd=d)
        off = nm_address(exe, "_ZN2ns6Widget4openEi")
        e = json.loads(self.template.replace("@MODULE@", exe))
        e["open_stack"] = [{"module": exe, "offset": "0x%x" % off}]
        p = os.path.join(d, "cc.log")
        with open(p, "w") as f:
            f.write(json.dumps(e) + "\n")
        r, _ = run_json(p)
        fr = r["findings"][0]["open_stack"][0]
        self.assertEqual(fr["function"], "ns::Widget::open(int)")
        self.assertEqual(fr["line"], line_of(PROG_CC, "L_OPEN"))


# --------------------------------------------------------------------------------------

def main(argv):
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromModule(sys.modules[__name__])
    if argv:
        def flat(s):
            for t in s:
                if isinstance(t, unittest.TestSuite):
                    yield from flat(t)
                else:
                    yield t
        suite = unittest.TestSuite(t for t in flat(suite)
                                   if any(w in t.id() for w in argv))
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    if skipped:
        print("%d skipped" % skipped)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
