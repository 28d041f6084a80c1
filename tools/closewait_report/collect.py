"""closewait-report: Reading logs (plain, rotated, compressed, stdin) into events, per process."""

import bz2
import collections
import gzip
import json
import lzma
import os
import re
import sys
import zlib

from .constants import KNOWN_EVENTS, MAX_LINE, MAX_PEERS, MAX_TS_MS
from .report import short_frame, top_frame
from .values import as_int, as_stack_id, as_str, parse_frames, parse_lang_frames, parse_time_str

# Reading logs

class Inputs:
    def __init__(self):
        self.files = []
        self.lines = 0
        self.events = collections.Counter()
        self.not_json = 0
        self.not_event = 0
        self.oversize = 0
        self.duplicates = 0
        self.unmatched_closed_late = 0
        self.first_bad = None
        self.read_errors = []

    def bad(self, where, kind):
        if kind == "json":
            self.not_json += 1
        else:
            self.not_event += 1
        if self.first_bad is None:
            self.first_bad = where


def _reject_constant(name):
    raise ValueError("non-standard JSON constant " + name)


def open_log(name):
    """A binary line reader for a log path or '-' (stdin); gzip, xz and bzip2 are
    recognised by their magic bytes.  Raises OSError if it cannot be opened."""
    if name == "-":
        raw = sys.stdin.buffer
    else:
        if os.path.isdir(name):
            raise IsADirectoryError(21, "is a directory", name)
        raw = open(name, "rb")
    try:
        head = raw.peek(6)[:6] if hasattr(raw, "peek") else b""
    except OSError:
        head = b""
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw, mode="rb"), raw
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw, mode="rb"), raw
    return raw, raw


def iter_lines(reader):
    """Yields (line_bytes or None); None for a line longer than MAX_LINE (skipped whole)."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE and not line.endswith(b"\n"):
            while True:                                # drain the rest of the long line
                rest = reader.readline(MAX_LINE)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def log_family(name):
    """Rotated copies of one log share a family: x.log, x.log.1, x.log.2.gz,
    x.log-20240501.xz.  A `start` event names the host of its pid for its whole family."""
    if name == "-":
        return "-"
    d, b = os.path.split(os.path.abspath(name))
    b = re.sub(r"\.(gz|xz|bz2|zst)$", "", b)
    b = re.sub(r"[.-](\d{1,4}|\d{8}(-\d+)?)$", "", b)
    return os.path.join(d, b)


class Collector:
    """Parses lines into compact records and per-stack aggregates."""

    def __init__(self):
        self.inputs = Inputs()
        # (ts, seq, kind, host, pid, fd, stack_id, payload, family)
        self.records = []
        self.findings = {}         # stack_id -> Finding
        self.seen = set()          # duplicate detection
        self.seq = 0
        self.last_ts = 0
        self.family = "-"
        self.suppressed_in_process = 0

    def read(self, name):
        label = "<stdin>" if name == "-" else name
        self.inputs.files.append(label)
        self.family = log_family(name)
        reader, raw = open_log(name)
        lineno = 0
        try:
            for line in iter_lines(reader):
                lineno += 1
                self.inputs.lines += 1
                where = "%s:%d" % (label, lineno)
                if line is None:
                    self.inputs.oversize += 1
                    self.inputs.bad(where, "json")
                    continue
                self.feed(line, where)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
            # truncated or corrupt compressed data, I/O error: keep what was read
            self.inputs.read_errors.append("%s: read error after %d line(s): %s"
                                           % (label, lineno, e))
        finally:
            if raw is not sys.stdin.buffer:
                try:
                    raw.close()
                except OSError:
                    pass

    def feed(self, line, where):
        s = line.strip()
        if not s:
            return
        text = s.decode("utf-8", "replace")
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError, MemoryError, TypeError):
            self.inputs.bad(where, "json")
            return
        if not self.event(obj):
            self.inputs.bad(where, "event")

    def event(self, obj):
        """Takes one decoded JSON value; returns False if it is not a closewait event."""
        if not isinstance(obj, dict):
            return False
        ev = obj.get("event")
        pid = as_int(obj.get("pid"), 0, (1 << 32) - 1)
        if ev not in KNOWN_EVENTS or pid is None:
            return False
        host = as_str(obj.get("host"), 256)
        ts = as_int(obj.get("ts_ms"), 0, MAX_TS_MS)
        if ts is None:
            ts = parse_time_str(obj.get("time"))
        if ts is None:
            ts = self.last_ts          # no usable time: keep the line's place in its file
        else:
            self.last_ts = ts
        return getattr(self, "ev_" + ev)(obj, host, pid, ts)

    def add_record(self, ts, kind, host, pid, fd, sid, payload, dupkey):
        if dupkey in self.seen:
            self.inputs.duplicates += 1
            return False
        self.seen.add(dupkey)
        self.seq += 1
        self.records.append((ts, self.seq, kind, host, pid, fd, sid, payload, self.family))
        self.inputs.events[kind] += 1
        return True

    def finding(self, sid):
        f = self.findings.get(sid)
        if f is None:
            f = self.findings[sid] = Finding(sid)
        return f

    def ev_leak(self, obj, host, pid, ts):
        frames = parse_frames(obj.get("open_stack"))
        sid = as_stack_id(obj.get("stack_id"))
        if sid is None and frames:
            # no stack_id: derive one from the frames (module + offset, or pc)
            key = "|".join("%s+%s" % (fr["module"], fr["offset"] if fr["offset"] is not None
                                      else fr["pc"]) for fr in frames)
            sid = "x%015x" % (zlib.crc32(key.encode("utf-8", "replace")) & 0xFFFFFFFF)
        if sid is None:
            return False
        fd = as_int(obj.get("fd"), 0, (1 << 31) - 1)
        tstr = obj.get("time") if isinstance(obj.get("time"), str) else None
        dupkey = ("leak", host, pid, fd, sid, ts, tstr,
                  as_int(obj.get("since_fin_ms"), 0, 10 ** 13))
        payload = (as_int(obj.get("site_open"), 1, 10 ** 9),
                   as_int(obj.get("site_ever"), 1, 10 ** 9),
                   obj.get("growing") is True)
        if self.add_record(ts, "leak", host, pid, fd, sid, payload, dupkey):
            self.finding(sid).add_leak(obj, frames, ts)
        return True

    def ev_closed_late(self, obj, host, pid, ts):
        sid = as_stack_id(obj.get("stack_id"))
        fd = as_int(obj.get("fd"), 0, (1 << 31) - 1)
        if sid is None or fd is None:
            return False
        held = as_int(obj.get("held_ms"), 0, 10 ** 13)
        dupkey = ("closed_late", host, pid, fd, sid, ts, held)
        self.add_record(ts, "closed_late", host, pid, fd, sid, held, dupkey)
        return True

    def ev_summary(self, obj, host, pid, ts):
        entries = []
        fl = obj.get("findings")
        if isinstance(fl, list):
            for e in fl[:100000]:
                if not isinstance(e, dict):
                    continue
                sid = as_stack_id(e.get("stack_id"))
                now = as_int(e.get("count_now"), 0, 10 ** 9)
                ever = as_int(e.get("count_ever"), 0, 10 ** 9)
                if sid is None or (now is None and ever is None):
                    continue
                entries.append((sid, now, ever, e.get("growing") is True))
        elif fl is not None:
            return False
        why = obj.get("why")
        at_exit = why is None or why == "exit"   # "on request": the process goes on
        suppressed = as_int(obj.get("suppressed"), 0, 10 ** 12)
        dupkey = ("summary", host, pid, ts, tuple(entries), at_exit)
        self.add_record(ts, "summary", host, pid, None, None,
                        (entries, at_exit, suppressed), dupkey)
        return True

    def ev_start(self, obj, host, pid, ts):
        exe = as_str(obj.get("exe"), 1024)
        grace = as_int(obj.get("grace_ms"), 0, 10 ** 10)
        dupkey = ("start", self.family, host, pid, ts)
        self.add_record(ts, "start", host, pid, None, None, (exe, grace), dupkey)
        return True


class Finding:
    def __init__(self, sid):
        self.stack_id = sid
        self.frames = None
        self.eof_frames = None
        self.lang = None            # the program's own stack in its language, when it has one
        self.lang_frames = None
        self.lang_eof_frames = None
        self.leak_events = 0
        self.reasons = collections.Counter()
        self.opened_by = collections.Counter()
        self.eof_by = collections.Counter()
        self.states = collections.Counter()
        self.peer_ts = []          # [(ts, peer)], earliest first
        self.first_ts = None
        self.last_ts = None
        self.max_since_fin = None
        self.min_since_fin = None
        self.exes = collections.Counter()
        # the owner's story (issue 12): what the owner thread was doing, the event loop's callbacks
        self.owners = collections.Counter()       # "blocked in read() on ... opened at f (x.c:1)", ...
        self.callbacks = collections.Counter()    # "read on_read (x.c:18), connection ..." per leak
        self.registered_by = collections.Counter()
        self.reg_frames = None
        self.blocked_open_frames = None
        # filled by merge()
        self.procs = set()          # (host, pid)
        self.count_open = 0
        self.count_ever = 0
        self.closed_late = 0
        self.max_held_ms = None
        self.instances = 0
        self.growing_procs = []
        self.timeline = []          # [(ts_ms, sockets held over every process)]
        self.grace_ms = None
        self.suppressed_by = None

    def add_peer(self, peer, ts):
        """Keeps the MAX_PEERS distinct peers seen first (by time, whatever the file order)."""
        for i, (t, p) in enumerate(self.peer_ts):
            if p == peer:
                if ts < t:
                    self.peer_ts[i] = (ts, p)
                    self.peer_ts.sort()
                return
        if len(self.peer_ts) < MAX_PEERS:
            self.peer_ts.append((ts, peer))
        elif (ts, peer) < self.peer_ts[-1]:
            self.peer_ts[-1] = (ts, peer)
        else:
            return
        self.peer_ts.sort()

    @property
    def peers(self):
        return [p for _, p in self.peer_ts]

    def add_leak(self, obj, frames, ts):
        self.leak_events += 1
        if self.frames is None and frames:
            self.frames = frames
        if self.eof_frames is None:
            self.eof_frames = parse_frames(obj.get("eof_stack"))
        if self.lang is None:
            self.lang = as_str(obj.get("lang"), 64)
        if self.lang_frames is None:
            self.lang_frames = parse_lang_frames(obj.get("lang_open_stack"))
        if self.lang_eof_frames is None:
            self.lang_eof_frames = parse_lang_frames(obj.get("lang_eof_stack"))
        for key, counter in (("reason", self.reasons), ("opened_by", self.opened_by),
                             ("eof_by", self.eof_by), ("state", self.states)):
            v = as_str(obj.get(key), 64)
            if v:
                counter[v] += 1
        peer = as_str(obj.get("peer"), 128)
        if peer:
            self.add_peer(peer, ts)
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts = ts
        if self.last_ts is None or ts > self.last_ts:
            self.last_ts = ts
        since = as_int(obj.get("since_fin_ms"), 0, 10 ** 13)
        if since is not None:
            if self.max_since_fin is None or since > self.max_since_fin:
                self.max_since_fin = since
            if self.min_since_fin is None or since < self.min_since_fin:
                self.min_since_fin = since
        exe = as_str(obj.get("exe"), 1024)
        if exe:
            self.exes[exe] += 1
        self.add_owner(obj.get("owner"))
        self.add_callbacks(obj.get("callbacks"))

    def add_owner(self, o):
        """Leaks grouped by what their owner thread was doing: blocked in a call on a socket
        opened at some site (the site a person fixes), not blocked, or gone."""
        if not isinstance(o, dict):
            return
        call = as_str(o.get("blocked_in"), 32)
        if o.get("alive") is False:
            self.owners["thread gone"] += 1
        elif call is None:
            self.owners["not blocked"] += 1
        else:
            sock = o.get("blocked_fd_socket") if isinstance(o.get("blocked_fd_socket"), dict) else {}
            frames = parse_frames(sock.get("open_stack"))
            where = " on a %s socket" % (as_str(sock.get("role"), 16) or "") if sock else ""
            if frames:
                where += " opened at %s" % short_frame(top_frame(frames))
                if self.blocked_open_frames is None:
                    self.blocked_open_frames = frames
            caller = parse_frames([o.get("blocked_caller")]) if isinstance(o.get("blocked_caller"), dict) else None
            at = " called from %s" % short_frame(caller[0]) if caller else ""
            self.owners["blocked in %s()%s%s" % (call, at, where)] += 1

    def add_callbacks(self, c):
        if not isinstance(c, dict):
            return
        parts = []
        for role in ("read", "event", "write", "connection"):
            if isinstance(c.get(role), dict):
                fr = parse_frames([c[role]])
                if fr:
                    parts.append("%s %s" % (role, short_frame(fr[0])))
        if parts:
            self.callbacks[", ".join(parts)] += 1
        reg = as_str(c.get("registered_by"), 64)
        if reg:
            self.registered_by[reg] += 1
        if self.reg_frames is None:
            self.reg_frames = parse_frames(c.get("registration_stack"))
