#!/usr/bin/env python3
"""Tests for libclosewait.so: real programs under LD_PRELOAD, driven with real sockets on
127.0.0.1, with the kernel's view (ss, /proc) as ground truth.

    python3 tests/run.py [-k SUBSTRING] [--lib PATH] [-v] [--keep-failed]

The library is --lib, else $CLOSEWAIT_LIB, else libclosewait.so at the repository root; a
colon-separated list is passed to LD_PRELOAD as is (a sanitizer runtime first, e.g.
CLOSEWAIT_LIB=/usr/lib/gcc/x86_64-linux-gnu/12/libasan.so:build/asan/libclosewait.so).
Standard library only. Every wait is a bounded poll; the programs end by themselves.

The programs (tests/progs, built by tests/harness (as `make -C tests` does) before the tests):
  tserver       configurable server: read call, how the socket is disposed of after EOF,
                sleeps, threads (see the comment at its top)
  tclient       the client end of a leak (socket + connect)
  ttraps        EOF or zero-length reads that are not TCP leaks (file, pipe, Unix, UDP, recv 0)
  terrno        errno and return values of hooked calls, compared with and without the library
  seed_server.py  the blog's server.py, run by /usr/bin/python3

Output: one line per test (PASS name (time) / FAIL name: why / SKIP name: why), then
"N passed, N failed" (", N skipped"). Exit status 1 if any failed.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS_DIR)
import harness  # noqa: E402  (tests/harness: what every suite shares)
from harness import TestFailure, TestSkip, check, poll_until, watchers_of  # noqa: E402,F401
ROOT = harness.ROOT
BUILD = os.path.join(TESTS_DIR, 'build')
TSERVER = os.path.join(BUILD, 'tserver')
TTRAPS = os.path.join(BUILD, 'ttraps')
TERRNO = os.path.join(BUILD, 'terrno')
TCLIENT = os.path.join(BUILD, 'tclient')
TSERVER_SRC = os.path.join(TESTS_DIR, 'progs', 'tserver.c')
TCLIENT_SRC = os.path.join(TESTS_DIR, 'progs', 'tclient.c')
SEED_PY = os.path.join(TESTS_DIR, 'progs', 'seed_server.py')
ONE_PEER_PY = os.path.join(TESTS_DIR, 'progs', 'one_peer_two_listeners.py')
SHUTDOWN_ENDS_PY = os.path.join(TESTS_DIR, 'progs', 'shutdown_ends.py')
SYSTEM_PYTHON = '/usr/bin/python3'

GRACE_MS = 300
# How long to wait for something that should come: generous, it costs time only on failure
# (sanitizer builds symbolize slowly). Timing requirements are asserted separately.
REPORT_WAIT = 10.0
HOST = '127.0.0.1'

LIB = None          # set in main()
VERBOSE = False


def log(msg):
    if VERBOSE:
        sys.stderr.write('    %s\n' % msg)


# ---------------------------------------------------------------- programs under test

class Prog:
    """A program started with or without the library, its stdout lines collected by a thread."""

    def __init__(self, argv, lib=True, fmt='json', grace=GRACE_MS, env=None, log_name='closewait.log'):
        self.dir = tempfile.mkdtemp(prefix='cwtest-')
        self.log = os.path.join(self.dir, log_name)
        self.argv = argv
        if lib:
            e = harness.lib_env(self.log, LIB, fmt, grace, env)
        else:
            e = harness.overridden(harness.clean_env(), env)
        self.stderr_path = os.path.join(self.dir, 'stderr')
        self._stderr = open(self.stderr_path, 'wb')
        self.lines = []             # (arrival time, text)
        self.cond = threading.Condition()
        self.stdout_done = False
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=e, close_fds=True)
        self.pid = self.proc.pid
        self.t_start = time.time()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            with self.cond:
                self.lines.append((time.time(), line))
                self.cond.notify_all()
        with self.cond:
            self.stdout_done = True
            self.cond.notify_all()

    def context(self):
        out = ' | '.join(l for _, l in self.lines[-8:])
        err = self.stderr_text().strip().replace('\n', ' | ')[-600:]
        return 'argv=%s stdout=[%s] stderr=[%s] rc=%s' % (
            ' '.join(os.path.basename(a) for a in self.argv), out, err, self.proc.poll())

    def wait_line(self, pattern, timeout=5.0, start=0):
        """First stdout line from the start-th on matching the regex: (time, match)."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, l in self.lines[start:]:
                    m = rx.match(l)
                    if m:
                        return t, m
                left = deadline - time.time()
                if left <= 0 or self.stdout_done:
                    raise TestFailure('no stdout line /%s/ within %.1fs (%s)' % (
                        pattern, timeout, self.context()))
                self.cond.wait(min(left, 0.1))

    def has_line(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return any(rx.match(l) for _, l in self.lines)

    def port(self):
        return int(self.wait_line(r'PORT (\d+)$')[1].group(1))

    def raw_log(self):
        try:
            with open(self.log, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def events(self, path=None):
        """Every complete line of the JSON log, parsed. An unparsable line fails the test."""
        if path:
            with open(path, 'rb') as f:
                text = f.read().decode('utf-8', 'replace')
        else:
            text = self.raw_log()
        # a last line without '\n' is still being written; an empty line fails
        return harness.parse_events(text, blank_lines_fail=True)

    def leaks(self):
        return [e for e in self.events() if e.get('event') == 'leak']

    def wait_events(self, pred, count=1, timeout=5.0):
        """Polls the log until `count` events satisfy pred; returns (events, time seen)."""
        deadline = time.time() + timeout
        while True:
            evs = [e for e in self.events() if pred(e)]
            now = time.time()
            if len(evs) >= count:
                return evs, now
            if now >= deadline:
                raise TestFailure('%d event(s) wanted within %.1fs, got %d; log=%s; %s' % (
                    count, timeout, len(evs), short_log(self), self.context()))
            time.sleep(0.02)

    def stderr_text(self):
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def alive(self):
        return self.proc.poll() is None

    def quit(self):
        """Closes the program's stdin (ends a -q linger)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def wait_exit(self, timeout=10.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise TestFailure('program did not exit within %.1fs (%s)' % (timeout, self.context()))
        self._reader.join(2)
        return rc

    def finish(self, timeout=10.0, expect_rc=0):
        self.quit()
        rc = self.wait_exit(timeout)
        if expect_rc is not None:
            check(rc == expect_rc, 'program exit status %s, wanted %s (%s)' % (rc, expect_rc, self.context()))
        return rc

    def cleanup(self, keep=False):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._stderr.close()
        if keep:
            with open(os.path.join(self.dir, 'stdout'), 'w') as f:
                f.write(''.join('%.3f %s\n' % (t, l) for t, l in self.lines))
            print('    kept %s (%s)' % (self.dir, ' '.join(self.argv)), flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
                   'WARNING: ThreadSanitizer', 'ERROR: ThreadSanitizer')


def is_sanitizer_module(path):
    return bool(re.match(r'lib(a|t|ub|l|hwa)san\.so', os.path.basename(path or '')))


def sanitizer_report(text):
    """The first sanitizer finding in a program's stderr: its headline, first frame and
    SUMMARY line."""
    for m in SANITIZER_MARKS:
        i = text.find(m)
        if i >= 0:
            lines = text[i:].splitlines()
            head = lines[0]
            frame = next((l.strip() for l in lines[1:] if l.strip().startswith('#0')), '')
            summ = next((l.strip() for l in lines if l.startswith('SUMMARY:')), '')
            return ' | '.join(x for x in (head.strip(), frame, summ) if x)
    return None


def short_log(prog, limit=700):
    t = prog.raw_log().strip().replace('\n', ' || ')
    return '[' + (t if len(t) <= limit else t[:limit] + '...') + ']'


# ---------------------------------------------------------------- kernel view

_USERS_RX = re.compile(r'pid=(\d+),fd=(\d+)')


def ss_sockets():
    """All TCP sockets as the kernel shows them: dicts state/local/peer/owners[(pid, fd)]."""
    r = subprocess.run(['ss', '-Htanp'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=10)
    out = []
    for line in r.stdout.decode('utf-8', 'replace').splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        owners = [(int(p), int(f)) for p, f in _USERS_RX.findall(line)]
        out.append({'state': parts[0], 'local': parts[3], 'peer': parts[4], 'owners': owners})
    return out


def kernel_socket(local, peer):
    for s in ss_sockets():
        if s['local'] == local and s['peer'] == peer:
            return s
    return None


def wait_kernel_state(local, peer, state, pid=None, fd=None, timeout=3.0):
    """Waits until the kernel shows the socket local<->peer in `state` (owned by pid/fd)."""
    def ok():
        s = kernel_socket(local, peer)
        if not s or s['state'] != state:
            return None
        if pid is not None and fd is not None and (pid, fd) not in s['owners']:
            return None
        return s
    s = poll_until(ok, timeout, 0.05)
    if not s:
        raise TestFailure('kernel does not show %s -> %s in %s owned by pid %s fd %s (it shows %s)' % (
            local, peer, state, pid, fd, kernel_socket(local, peer)))
    return s


def close_wait_of(pid):
    return [s for s in ss_sockets() if s['state'] == 'CLOSE-WAIT'
            and any(p == pid for p, _ in s['owners'])]


def fd_target(pid, fd):
    try:
        return os.readlink('/proc/%d/fd/%d' % (pid, fd))
    except OSError:
        return None


# ---------------------------------------------------------------- clients

def addr(sa):
    ip, port = sa[0], sa[1]
    return ('[%s]:%d' % (ip, port)) if ':' in ip else ('%s:%d' % (ip, port))


class Conn:
    """A client connection to a test server plus what the server said about it."""

    def __init__(self, prog, port, data=b'', accept_timeout=5.0):
        # Only the lines printed since it connected: the kernel may give a port again once
        # earlier clients closed, and an earlier ACCEPT must not be taken for this one.
        start = len(prog.lines) if prog is not None else 0
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.client_local = addr(self.sock.getsockname())
        self.server_local = addr(self.sock.getpeername())   # the server's view: local
        self.server_peer = self.client_local                # ... and peer
        self.cport = self.sock.getsockname()[1]
        if data:
            self.sock.sendall(data)
        self.prog = prog
        self.fd = None
        self.t_close = None
        if prog is not None:
            self.fd = int(prog.wait_line(r'ACCEPT (\d+) %d$' % self.cport, accept_timeout, start)[1].group(1))

    def close(self):
        self.sock.close()
        self.t_close = time.time()

    def matches(self, ev):
        return ev.get('peer') == self.server_peer


def leak_for(conn):
    return lambda e: e.get('event') == 'leak' and e.get('peer') == conn.server_peer


def is_leak(e):
    return e.get('event') == 'leak'


# ---------------------------------------------------------------- assertions on events

def frame_functions(stack):
    return [f.get('function') for f in stack or [] if isinstance(f, dict)]


_MARKS = {}


def marker_line(src, mark):
    """Line of the call marked /* @mark */ in a test program's source."""
    if src not in _MARKS:
        d = {}
        with open(src) as f:
            for i, l in enumerate(f, 1):
                for m in re.findall(r'/\* @(\w+) \*/', l):
                    d[m] = i
        _MARKS[src] = d
    return _MARKS[src][mark]


def check_stack_names(ev, key, name, src=None, marks=None):
    """The stack names `name`, innermost first (before main); with src/marks, the frame's
    file:line is the marked call's line."""
    st = ev.get(key)
    check(isinstance(st, list) and st, '%s missing or empty: %r' % (key, st))
    names = frame_functions(st)
    check(name in names, '%s does not name %s; functions: %s' % (key, name, names))
    i = names.index(name)
    if 'main' in names and name != 'main':
        check(i < names.index('main'), '%s is not innermost first: %s' % (key, names))
    if src:
        fr = st[i]
        want = [marker_line(src, m) for m in marks]
        check(fr.get('line') in want, '%s frame %s has line %r, the call is on line %s' % (
            key, name, fr.get('line'), ' or '.join(map(str, want))))
        check(isinstance(fr.get('file'), str) and fr['file'].endswith(os.path.basename(src)),
              '%s frame %s has file %r' % (key, name, fr.get('file')))


def check_leak(ev, conn, reason, opened_by=None, open_fn=None, eof_fn=None, eof_by=None,
               reasons=None, src=None, open_marks=None, eof_marks=None):
    want_reasons = reasons or (reason,)
    check(ev.get('reason') in want_reasons, 'reason %r, wanted %s' % (ev.get('reason'), ' or '.join(want_reasons)))
    check(ev.get('fd') == conn.fd, 'fd %r, wanted %d' % (ev.get('fd'), conn.fd))
    check(ev.get('local') == conn.server_local, 'local %r, wanted %s' % (ev.get('local'), conn.server_local))
    check(ev.get('peer') == conn.server_peer, 'peer %r, wanted %s' % (ev.get('peer'), conn.server_peer))
    if opened_by is not None:
        ok = ev.get('opened_by') in (opened_by if isinstance(opened_by, tuple) else (opened_by,))
        check(ok, 'opened_by %r, wanted %s' % (ev.get('opened_by'), opened_by))
    if open_fn:
        check_stack_names(ev, 'open_stack', open_fn, src if open_marks else None, open_marks)
    else:
        check(isinstance(ev.get('open_stack'), list) and ev['open_stack'], 'open_stack empty: %r' % ev.get('open_stack'))
    if eof_fn:
        check_stack_names(ev, 'eof_stack', eof_fn, src if eof_marks else None, eof_marks)
    if eof_by:
        ok = ev.get('eof_by') in (eof_by if isinstance(eof_by, tuple) else (eof_by,))
        check(ok, 'eof_by %r, wanted %s' % (ev.get('eof_by'), eof_by))


HEX_RX = re.compile(r'^0x[0-9a-fA-F]+$')
TIME_RX = re.compile(r'^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$')
ADDR_RX = re.compile(r'^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):\d{1,5}$')


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def validate_common(ev, pid):
    for k in ('event', 'pid', 'time', 'ts_ms'):
        check(k in ev, 'event lacks %r: %s' % (k, ev))
    check(isinstance(ev['event'], str), 'event not a string: %r' % ev['event'])
    check(is_int(ev['pid']) and ev['pid'] == pid, 'pid %r, wanted %d' % (ev['pid'], pid))
    check(is_int(ev['ts_ms']), 'ts_ms not an integer: %r' % ev['ts_ms'])
    now = time.time() * 1000
    check(now - 120000 < ev['ts_ms'] <= now + 1000, 'ts_ms %r is not now (%d)' % (ev['ts_ms'], now))
    m = TIME_RX.match(ev['time']) if isinstance(ev['time'], str) else None
    check(m, 'time %r is not ISO 8601 UTC with ms (YYYY-MM-DDTHH:MM:SS.mmmZ)' % (ev['time'],))
    dt = datetime.datetime(*[int(x) for x in m.groups()[:6]], tzinfo=datetime.timezone.utc)
    t_ms = int(dt.timestamp()) * 1000 + int(m.group(7))
    check(abs(t_ms - ev['ts_ms']) <= 1, 'time %s and ts_ms %d disagree' % (ev['time'], ev['ts_ms']))


def validate_frames(stack, key):
    check(isinstance(stack, list) and stack, '%s missing or empty' % key)
    for fr in stack:
        check(isinstance(fr, dict), '%s frame not an object: %r' % (key, fr))
        check(isinstance(fr.get('pc'), str) and HEX_RX.match(fr['pc']), '%s frame pc %r not 0x hex' % (key, fr.get('pc')))
        check(isinstance(fr.get('module'), str) and fr['module'].startswith('/'), '%s frame module %r not a path' % (key, fr.get('module')))
        check(os.path.exists(fr['module']), '%s frame module %s does not exist' % (key, fr['module']))
        check(isinstance(fr.get('offset'), str) and HEX_RX.match(fr['offset']), '%s frame offset %r not 0x hex' % (key, fr.get('offset')))
        if 'function' in fr:
            check(isinstance(fr['function'], str) and fr['function'], '%s frame function %r' % (key, fr['function']))
        if 'file' in fr:
            check(isinstance(fr['file'], str) and fr['file'], '%s frame file %r' % (key, fr['file']))
        if 'line' in fr:
            check(is_int(fr['line']) and fr['line'] > 0, '%s frame line %r' % (key, fr['line']))


def validate_leak(ev, exe=None):
    check(is_int(ev.get('fd')) and ev['fd'] >= 0, 'fd %r' % ev.get('fd'))
    check(ev.get('reason') in ('eof_not_closed', 'peer_closed_unread', 'shutdown_not_closed'), 'reason %r' % ev.get('reason'))
    check(ev.get('state') in ('CLOSE_WAIT', 'LAST_ACK', 'CLOSE'), 'state %r' % ev.get('state'))
    for k in ('local', 'peer'):
        check(isinstance(ev.get(k), str) and ADDR_RX.match(ev[k]), '%s %r is not ip:port' % (k, ev.get(k)))
    for k in ('since_fin_ms', 'open_age_ms'):
        check(is_int(ev.get(k)) and ev[k] >= 0, '%s %r' % (k, ev.get(k)))
    check(isinstance(ev.get('opened_by'), str) and ev['opened_by'], 'opened_by %r' % ev.get('opened_by'))
    check(isinstance(ev.get('stack_id'), str) and re.match(r'^[0-9a-fA-F]{16}$', ev['stack_id']), 'stack_id %r is not 16 hex digits' % ev.get('stack_id'))
    validate_frames(ev.get('open_stack'), 'open_stack')
    if 'eof_stack' in ev or 'eof_by' in ev:
        validate_frames(ev.get('eof_stack'), 'eof_stack')
        check(isinstance(ev.get('eof_by'), str) and ev['eof_by'], 'eof_by %r' % ev.get('eof_by'))
    if 'dup_fds' in ev:
        check(isinstance(ev['dup_fds'], list) and all(is_int(x) for x in ev['dup_fds']), 'dup_fds %r' % ev['dup_fds'])
    check(isinstance(ev.get('exe'), str), 'exe %r' % ev.get('exe'))
    if exe:
        check(os.path.realpath(ev['exe']) == os.path.realpath(exe), 'exe %r, wanted %s' % (ev['exe'], exe))


def validate_closed_late(ev):
    check(is_int(ev.get('fd')), 'closed_late fd %r' % ev.get('fd'))
    check(isinstance(ev.get('stack_id'), str) and re.match(r'^[0-9a-fA-F]{16}$', ev['stack_id']), 'closed_late stack_id %r' % ev.get('stack_id'))
    for k in ('local', 'peer'):
        check(isinstance(ev.get(k), str) and ADDR_RX.match(ev[k]), 'closed_late %s %r' % (k, ev.get(k)))
    check(is_int(ev.get('held_ms')) and ev['held_ms'] >= 0, 'closed_late held_ms %r' % ev.get('held_ms'))


def validate_summary(ev):
    check(is_int(ev.get('leaks_open')) and ev['leaks_open'] >= 0, 'summary leaks_open %r' % ev.get('leaks_open'))
    check(is_int(ev.get('leaks_total')) and ev['leaks_total'] >= ev['leaks_open'], 'summary leaks_total %r' % ev.get('leaks_total'))
    check(isinstance(ev.get('findings'), list), 'summary findings %r' % ev.get('findings'))
    for f in ev['findings']:
        check(isinstance(f, dict) and isinstance(f.get('stack_id'), str) and is_int(f.get('count_now'))
              and is_int(f.get('count_ever')), 'summary finding %r' % f)


def no_leaks(prog, why=''):
    leaks = prog.leaks()
    check(not leaks, 'false report%s: %s' % (why and ' (' + why + ')', json.dumps(leaks)[:600]))


def quiet_period():
    """Long enough for a false report to appear: three grace periods and a margin."""
    time.sleep(3 * GRACE_MS / 1000.0 + 0.4)


def summary_of(prog):
    s = [e for e in prog.events() if e.get('event') == 'summary']
    return s[-1] if s else None


# ---------------------------------------------------------------- registry

TESTS = harness.Registry()
test = TESTS.test


def run_prog(argv, **kw):
    p = Prog(argv, **kw)
    _live.append(p)
    return p


_live = []


# ---------------------------------------------------------------- tests: read entry points

READ_METHODS = [
    # method arg, rd_ function, eof_by names accepted, accept4?
    ('read', 'rd_read', ('read',), False),
    ('readv', 'rd_readv', ('readv',), True),
    ('recv', 'rd_recv', ('recv',), True),
    ('recvfrom', 'rd_recvfrom', ('recvfrom',), False),
    ('recvmsg', 'rd_recvmsg', ('recvmsg',), True),
    ('recvmmsg', 'rd_recvmmsg', ('recvmmsg',), False),
    ('read_chk', 'rd_read_chk', ('__read_chk',), True),
    ('recv_chk', 'rd_recv_chk', ('__recv_chk',), False),
    ('recvfrom_chk', 'rd_recvfrom_chk', ('__recvfrom_chk',), True),
]


def make_eof_test(method, rdfn, eof_by, use_accept4):
    def t():
        argv = [TSERVER, '-n', '1', '-m', method, '-c', 'leak', '-q', '-l', '15000']
        if use_accept4:
            argv.append('-A')
        p = run_prog(argv)
        c = Conn(p, p.port())
        c.close()
        p.wait_line(r'EOF %d$' % c.fd)
        p.wait_line(r'LEAK %d$' % c.fd)
        wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
        evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        time.sleep(2 * GRACE_MS / 1000.0 + 0.3)      # room for a duplicate
        p.finish()
        leaks = p.leaks()
        check(len(leaks) == 1, 'wanted exactly one leak event, got %d: %s' % (len(leaks), json.dumps(leaks)[:500]))
        acc = 'accept4' if use_accept4 else 'accept'
        check_leak(leaks[0], c, 'eof_not_closed', opened_by=acc,
                   open_fn='tserver_accept_conn', eof_fn=rdfn, eof_by=eof_by,
                   src=TSERVER_SRC, open_marks=[acc], eof_marks=[rdfn])
        check(leaks[0].get('state') == 'CLOSE_WAIT', 'state %r' % leaks[0].get('state'))
        sf = leaks[0].get('since_fin_ms')
        check(is_int(sf) and sf >= GRACE_MS - 20, 'since_fin_ms %r is less than the grace %d' % (sf, GRACE_MS))
    return t


for _m, _fn, _by, _a4 in READ_METHODS:
    test(make_eof_test(_m, _fn, _by, _a4), name='eof_leak_' + _m)


@test
def test_eof_leak_recvmmsg_batch():
    """recvmmsg with two messages returns [data, 0]: the EOF is in the second message, not
    the return value. It is still an EOF the program read."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'recvmmsg2', '-c', 'leak', '-q', '-l', '15000'])
    c = Conn(p, p.port(), data=b'hello')
    c.close()
    p.wait_line(r'BATCH_EOF %d$' % c.fd)
    p.wait_line(r'LEAK %d$' % c.fd)
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.3)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 1, 'wanted exactly one leak event, got %d' % len(leaks))
    check_leak(leaks[0], c, 'eof_not_closed', opened_by='accept', open_fn='tserver_accept_conn',
               eof_fn='rd_recvmmsg2', eof_by='recvmmsg', src=TSERVER_SRC, open_marks=['accept'],
               eof_marks=['rd_recvmmsg2'])


# ---------------------------------------------------------------- tests: timing

@test
def test_report_while_sleeping():
    """The program reads EOF, then sleeps in nanosleep making no calls: the report still
    arrives within grace + 1 s of the client's close."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'recv', '-c', 'leak', '-l', '6000'])
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'LEAK %d$' % c.fd)
    limit = GRACE_MS / 1000.0 + 1.0
    evs, seen = p.wait_events(is_leak, 1, timeout=limit + 2.0)
    latency = seen - c.t_close
    check(p.alive(), 'program had already exited when the report came')
    check(latency <= limit + 0.1, 'report came %.2fs after the close, limit %.2fs' % (latency, limit))
    check(evs[0].get('reason') == 'eof_not_closed', 'reason %r' % evs[0].get('reason'))
    sf = evs[0].get('since_fin_ms')
    check(is_int(sf) and GRACE_MS - 50 <= sf <= GRACE_MS + 1500, 'since_fin_ms %r vs grace %d' % (sf, GRACE_MS))
    p.killed = True
    p.proc.terminate()
    p.wait_exit(5)


@test
def test_seed_sleep_before_read():
    """The blog's scenario: accept, sleep 3 s before reading; the client closes at once.
    The socket sits in CLOSE_WAIT and is reported before the server wakes."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'recv', '-s', '3000', '-c', 'close', '-q', '-l', '3000'])
    c = Conn(p, p.port())
    c.close()
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
    evs, seen = p.wait_events(is_leak, 1, timeout=GRACE_MS / 1000.0 + 1.5)
    check(not p.has_line(r'WOKE '), 'the server woke before the report')
    ev = evs[0]
    check_leak(ev, c, 'peer_closed_unread', opened_by='accept', open_fn='tserver_accept_conn')
    check(ev.get('state') == 'CLOSE_WAIT', 'state %r' % ev.get('state'))
    check(not ev.get('dup_fds'), 'the other connection named a copy of it: %r' % ev.get('dup_fds'))
    check('eof_stack' not in ev and 'eof_by' not in ev, 'eof fields on a socket whose EOF was never read: %r' % ev.get('eof_by'))
    check(seen - c.t_close <= GRACE_MS / 1000.0 + 1.1, 'report %.2fs after the close' % (seen - c.t_close))
    t_woke = p.wait_line(r'WOKE %d$' % c.fd, 6)[0]
    check(seen < t_woke, 'report after the wake')
    p.wait_line(r'CLOSED %d close$' % c.fd, 3)
    cl, _ = p.wait_events(lambda e: e.get('event') == 'closed_late' and e.get('peer') == c.server_peer, 1, REPORT_WAIT)
    check(cl[0].get('fd') == c.fd, 'closed_late fd %r' % cl[0].get('fd'))
    held = cl[0].get('held_ms')
    check(is_int(held) and 2000 <= held <= 6000, 'closed_late held_ms %r (the socket was held ~3 s)' % held)
    p.finish()
    check(len(p.leaks()) == 1, 'wanted one leak event, got %d' % len(p.leaks()))


@test
def test_seed_python_server():
    """The blog's server.py itself, run by /usr/bin/python3 under the library."""
    if not os.path.exists(SYSTEM_PYTHON):
        raise TestSkip('no ' + SYSTEM_PYTHON)
    p = run_prog([SYSTEM_PYTHON, SEED_PY, '3'])
    c = Conn(p, p.port())
    c.close()
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
    evs, seen = p.wait_events(is_leak, 1, timeout=GRACE_MS / 1000.0 + 1.5)
    check(not p.has_line(r'WOKE '), 'the server woke before the report')
    ev = evs[0]
    check_leak(ev, c, 'peer_closed_unread', opened_by=('accept', 'accept4'))
    mods = [f.get('module', '') for f in ev['open_stack']]
    check(any('_socket' in m or 'python' in m for m in mods), 'open_stack has no python frame: %s' % mods)
    check(os.path.realpath(ev.get('exe', '')) == os.path.realpath(SYSTEM_PYTHON), 'exe %r' % ev.get('exe'))
    p.wait_line(r'DONE$', 8)
    p.finish()
    check(len(p.leaks()) == 1, 'wanted one leak event, got %d' % len(p.leaks()))


def one_peer_two_listeners(argv_prefix, nodump):
    """One client address and port connected to one port on two local addresses: the library's
    keys of the two accepted connections are equal (shared/fdtable.h).  The first is leaked, the
    second served and closed.  Returns (prog, kept fd, local, peer, the second client)."""
    if not os.path.exists(SYSTEM_PYTHON):
        raise TestSkip('no ' + SYSTEM_PYTHON)
    p = run_prog(argv_prefix + [SYSTEM_PYTHON, ONE_PEER_PY] + (['nodump'] if nodump else []))
    port = p.port()
    a = socket.socket()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    a.bind(('127.0.0.1', 0))
    a.connect(('127.0.0.1', port))
    kept = int(p.wait_line(r'ACCEPTED (\d+) 127\.0\.0\.1:')[1].group(1))
    b = socket.socket()
    b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    b.bind(a.getsockname())
    b.connect(('127.0.0.2', port))
    p.wait_line(r'ACCEPTED (\d+) 127\.0\.0\.2:')
    peer = '%s:%d' % a.getsockname()
    local = '127.0.0.1:%d' % port
    a.close()
    wait_kernel_state(local, peer, 'CLOSE-WAIT', p.pid, kept)
    return p, kept, local, peer, b


def check_reported_ends(ev, fd, local, peer):
    check(ev.get('fd') == fd and ev.get('local') == local and ev.get('peer') == peer,
          'reported fd %r %r <- %r, wanted fd %d %s <- %s' % (ev.get('fd'), ev.get('local'), ev.get('peer'),
                                                              fd, local, peer))


def check_kept_reported(p, kept, local, peer, timeout):
    evs, _ = p.wait_events(is_leak, 1, timeout=timeout)
    ev = evs[0]
    check_reported_ends(ev, kept, local, peer)
    check(ev.get('state') == 'CLOSE_WAIT', 'state %r' % ev.get('state'))
    check(not ev.get('dup_fds'), 'the other connection named a copy of it: %r' % ev.get('dup_fds'))


@test
def test_one_peer_two_listeners():
    """Two connections with one key: the leaked one is reported, with its own descriptor and ends,
    and the served one never (the watcher tells them apart by /proc/PID/fd, which it may read)."""
    p, kept, local, peer, b = one_peer_two_listeners([], False)
    check_kept_reported(p, kept, local, peer, GRACE_MS / 1000.0 + 2.0)
    quiet_period()
    b.close()
    p.wait_line(r'CLOSED \d+$')
    time.sleep(GRACE_MS / 1000.0 + 0.3)
    p.finish()
    check(len(p.leaks()) == 1, 'wanted one leak event, got %s' % json.dumps(p.leaks())[:600])


@test
def test_one_peer_two_listeners_no_proc():
    """The same where /proc/PID/fd is closed to the watcher (a non-dumpable program without
    CAP_SYS_PTRACE): no report while the two cannot be told apart (never the wrong one), the
    right one as soon as the other is gone."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which('setpriv') is None:
            raise TestSkip('setpriv is not installed (util-linux): root cannot be kept out of /proc/PID/fd')
        prefix = ['setpriv', '--bounding-set', '-sys_ptrace', '--inh-caps', '-sys_ptrace']
        probe = subprocess.run(prefix + ['true'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if probe.returncode != 0:
            raise TestSkip('setpriv cannot drop CAP_SYS_PTRACE here: %s' % probe.stdout.decode('utf-8', 'replace')[:200])
    p, kept, local, peer, b = one_peer_two_listeners(prefix, True)
    quiet_period()
    no_leaks(p, 'two connections with one key')
    b.close()
    p.wait_line(r'CLOSED \d+$')
    check_kept_reported(p, kept, local, peer, GRACE_MS / 1000.0 + 2.0)
    p.finish()
    check(len(p.leaks()) == 1, 'wanted one leak event, got %s' % json.dumps(p.leaks())[:600])


def shutdown_ends(listen_addr, close_listener, prefix=()):
    """A connection shut down and never closed by a Python server listening on listen_addr; its
    client closes too, so that the socket is in CLOSE, in no dump, when it is reported: its ends
    are those the hooks kept at shutdown().  Returns (prog, fd, local, peer)."""
    if not os.path.exists(SYSTEM_PYTHON):
        raise TestSkip('no ' + SYSTEM_PYTHON)
    p = run_prog(list(prefix) + [SYSTEM_PYTHON, SHUTDOWN_ENDS_PY, listen_addr] +
                 (['closelistener'] if close_listener else []))
    port = p.port()
    c = socket.create_connection((listen_addr, port))
    fd = int(p.wait_line(r'ACCEPTED (\d+)$')[1].group(1))
    p.wait_line(r'SHUT %d$' % fd)
    peer = '%s:%d' % c.getsockname()
    local = '%s:%d' % (listen_addr, port)
    c.settimeout(5)
    check(c.recv(16) == b'', 'the client wanted EOF from the shut-down side')
    c.close()
    return p, fd, local, peer


def check_shutdown_ends_reported(p, fd, local, peer):
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    ev = evs[0]
    check_reported_ends(ev, fd, local, peer)
    check(ev.get('reason') in ('shutdown_not_closed', 'eof_not_closed'), 'reason %r' % ev.get('reason'))
    return ev


def shutdown_ends_reported(listen_addr, close_listener):
    p, fd, local, peer = shutdown_ends(listen_addr, close_listener)
    ev = check_shutdown_ends_reported(p, fd, local, peer)
    p.finish()
    return 'state=%s' % ev.get('state')


@test
def test_shutdown_ends_from_key_and_listener():
    """A connection accepted from 127.0.0.2 and shut down: reported in CLOSE with both ends, which
    the hooks took from the connection's key and its listener's address."""
    return shutdown_ends_reported('127.0.0.2', False)


@test
def test_shutdown_ends_without_getpeername():
    """The same under strace: no getpeername() at all before the report (a lingering-close
    server, Apache's, made a getpeername and a getsockname per connection for the ends)."""
    if shutil.which('strace') is None:
        raise TestSkip('strace is not installed: the system calls cannot be counted')
    trace = os.path.join(tempfile.mkdtemp(prefix='closewait-ends-'), 'trace')
    prefix = ['strace', '-f', '-qq', '-e', 'trace=getpeername,getsockname', '-o', trace]
    p, fd, local, peer = shutdown_ends('127.0.0.2', False, prefix)
    ev = check_shutdown_ends_reported(p, fd, local, peer)
    # read before the exit, whose report asks every descriptor left
    with open(trace) as f:
        calls = f.readlines()  # the program's and its watcher's (which asks the kernel by sock_diag)
    p.finish()
    peername = [l for l in calls if 'getpeername(' in l]
    sockname = [l for l in calls if 'getsockname(' in l]
    check(not peername, 'the program made getpeername calls: %r' % peername[:3])
    # the program's (its port; Python's socket object for the accepted one), the library's at listen()
    check(len(sockname) <= 3, 'the program made %d getsockname calls: %r' % (len(sockname), sockname[:4]))
    return 'state=%s getsockname=%d getpeername=0' % (ev.get('state'), len(sockname))


@test
def test_shutdown_ends_listener_gone():
    """The same where the listener was closed before the shutdown: the local address is asked of
    the connection itself, and the ends are still right."""
    return shutdown_ends_reported('127.0.0.1', True)


# ---------------------------------------------------------------- tests: no false reports

@test
def test_correct_server_3000():
    """A correct threaded echo server, 3000 connections, 8 clients at a time: no report."""
    total, workers = 3000, 8
    p = run_prog([TSERVER, '-t', '-e', '-n', str(total), '-m', 'recv', '-c', 'close', '-q',
                  '-l', '20000', '-T', '120'])
    port = p.port()
    errors = []

    def client(k):
        try:
            for i in range(total // workers):
                s = socket.create_connection((HOST, port), timeout=10)
                s.sendall(b'ping')
                got = b''
                while len(got) < 4:
                    d = s.recv(4 - len(got))
                    if not d:
                        break
                    got += d
                if got != b'ping':
                    errors.append('bad echo %r' % got)
                    s.close()
                    return
                s.close()
        except OSError as ex:
            errors.append(str(ex))

    ths = [threading.Thread(target=client, args=(k,)) for k in range(workers)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(90)
    check(not errors, 'client errors: %s' % errors[:3])
    p.wait_line(r'DONE$', 30)
    quiet_period()
    check(not close_wait_of(p.pid), 'kernel shows CLOSE_WAIT sockets of the server: %s' % close_wait_of(p.pid))
    no_leaks(p)
    p.finish()
    no_leaks(p)
    s = summary_of(p)
    if s:
        check(s.get('leaks_total') == 0, 'summary leaks_total %r' % s.get('leaks_total'))


@test
def test_trap_regular_file():
    p = run_prog([TTRAPS, 'file', str(3 * GRACE_MS + 400)])
    p.wait_line(r'EOF ')
    p.wait_line(r'DONE$', 5)
    p.finish()
    no_leaks(p, 'EOF on a regular file')


@test
def test_trap_pipe():
    p = run_prog([TTRAPS, 'pipe', str(3 * GRACE_MS + 400)])
    p.wait_line(r'EOF ')
    p.wait_line(r'DONE$', 5)
    p.finish()
    no_leaks(p, 'EOF on a pipe')


@test
def test_trap_unix_stream_eof():
    """EOF on a Unix-domain stream socket kept open: no TCP, no CLOSE_WAIT, no report."""
    p = run_prog([TTRAPS, 'unix', str(3 * GRACE_MS + 400)])
    p.wait_line(r'EOF ')
    p.wait_line(r'DONE$', 5)
    p.finish()
    no_leaks(p, 'EOF on a Unix stream socket')


@test
def test_trap_udp_zero_length():
    p = run_prog([TTRAPS, 'udp', str(3 * GRACE_MS + 400)])
    port = p.port()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for call in ('recvfrom', 'recv', 'read', 'recvmsg'):
            u.sendto(b'', (HOST, port))
            p.wait_line(r'GOT %s 0$' % call, 3)
    finally:
        u.close()
    p.wait_line(r'DONE$', 5)
    p.finish()
    no_leaks(p, 'zero-length UDP datagrams')


@test
def test_trap_recv_zero_length_live():
    """Zero-length recv, read and readv return 0 on a live connection: not an EOF."""
    hold = 3 * GRACE_MS + 400
    p = run_prog([TTRAPS, 'recv0', str(hold)])
    port = p.port()
    c = Conn(None, port, data=b'hello')
    fd = int(p.wait_line(r'ACCEPT (\d+)$')[1].group(1))
    p.wait_line(r'RECV0 0$', 3)
    p.wait_line(r'READ0 0$', 3)
    p.wait_line(r'READV0 0$', 3)
    time.sleep(hold / 1000.0 * 0.8)
    s = kernel_socket(c.server_local, c.server_peer)
    check(s and s['state'] == 'ESTAB', 'server socket not ESTABLISHED: %s' % s)
    no_leaks(p, 'zero-length recv on a live socket')
    c.close()
    p.wait_line(r'CLOSED %d close$' % fd, 5)
    p.wait_line(r'DONE$', 5)
    p.finish()
    no_leaks(p, 'zero-length recv on a live socket')


def make_close_trap(mode, what):
    def t():
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', mode, '-q', '-l', '10000'])
        c = Conn(p, p.port())
        c.close()
        p.wait_line(r'EOF %d$' % c.fd)
        p.wait_line(r'CLOSED %d %s$' % (c.fd, mode))
        def gone():
            s = kernel_socket(c.server_local, c.server_peer)
            return s is None or s['state'] != 'CLOSE-WAIT' or (p.pid, c.fd) not in s['owners']
        check(poll_until(gone, 2), 'kernel still shows the socket in CLOSE_WAIT after %s' % what)
        tgt = fd_target(p.pid, c.fd)
        if mode == 'dup2':
            check(tgt == '/dev/null', 'fd %d now %r, wanted /dev/null' % (c.fd, tgt))
        else:
            check(tgt is None, 'fd %d still open: %r' % (c.fd, tgt))
        quiet_period()
        no_leaks(p, what)
        p.finish()
        no_leaks(p, what)
        s = summary_of(p)
        if s:
            check(s.get('leaks_total') == 0 and s.get('leaks_open') == 0, 'summary %s' % s)
    return t


for _mode, _what in (('fclose', 'closed by fclose(fdopen(fd))'),
                     ('close_range', 'closed by close_range'),
                     ('syscall', 'closed by syscall(SYS_close)'),
                     ('dup2', '/dev/null dup2()ed over the socket'),
                     ('close', 'EOF followed at once by close')):
    test(make_close_trap(_mode, _what), name='trap_' + _mode)


@test
def test_trap_fd_reuse():
    """Close via syscall (unseen), then a new unconnected socket gets the same number: the
    new socket must not inherit the old one's EOF record."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'reuse', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'EOF %d$' % c.fd)
    m = p.wait_line(r'REUSE (\d+) (-?\d+)$')[1]
    old, new = int(m.group(1)), int(m.group(2))
    check(old == new, 'the new socket got fd %d, not %d: scenario not set up' % (new, old))
    tgt = fd_target(p.pid, new)
    check(tgt and tgt.startswith('socket:'), 'fd %d is %r' % (new, tgt))
    s = kernel_socket(c.server_local, c.server_peer)
    check(not s or s['state'] != 'CLOSE-WAIT', 'old socket still in CLOSE_WAIT: %s' % s)
    quiet_period()
    no_leaks(p, 'descriptor number reused by a new socket')
    p.finish()
    no_leaks(p, 'descriptor number reused by a new socket')


@test
def test_trap_half_close_quick_reply():
    """Clients send a request and shutdown(SHUT_WR); the server replies 150 ms after the
    EOF (less than the grace period) and closes."""
    n = 3
    p = run_prog([TSERVER, '-n', str(n), '-m', 'recv', '-c', 'close', '-R', '-d', str(GRACE_MS // 2),
                  '-q', '-l', '10000'])
    port = p.port()
    for i in range(n):
        c = Conn(p, port, data=b'GET /\r\n')
        c.sock.shutdown(socket.SHUT_WR)
        got = b''
        while True:
            d = c.sock.recv(100)
            if not d:
                break
            got += d
        check(got == b'REPLY\n', 'reply %r' % got)
        c.close()
        p.wait_line(r'CLOSED %d close$' % c.fd)
    quiet_period()
    no_leaks(p, 'half-closing client answered within the grace period')
    p.finish()
    no_leaks(p, 'half-closing client answered within the grace period')


@test
def test_trap_accepted_in_close_wait():
    """The client sends a request and closes before the server accepts (the connection waits
    in the accept queue, already in CLOSE_WAIT, longer than the grace period); the server then
    accepts, reads and closes at once."""
    p = run_prog([TSERVER, '-n', '1', '-w', str(2 * GRACE_MS + 300), '-m', 'read', '-c', 'close',
                  '-q', '-l', '10000'])
    port = p.port()
    c = Conn(None, port, data=b'GET /\r\n')
    c.close()
    s = poll_until(lambda: (kernel_socket(c.server_local, c.server_peer) or {}).get('state') == 'CLOSE-WAIT', 2)
    check(s, 'queued connection not in CLOSE_WAIT')
    fd = int(p.wait_line(r'ACCEPT (\d+) %d$' % c.cport, 5)[1].group(1))
    p.wait_line(r'CLOSED %d close$' % fd, 3)
    quiet_period()
    no_leaks(p, 'connection accepted already in CLOSE_WAIT, then served and closed')
    p.finish()
    no_leaks(p, 'connection accepted already in CLOSE_WAIT, then served and closed')


@test
def test_trap_idle_live_connection():
    """A connected client that sends nothing for three grace periods: no FIN, no report."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'close', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    quiet_period()
    s = kernel_socket(c.server_local, c.server_peer)
    check(s and s['state'] == 'ESTAB', 'server socket not ESTABLISHED: %s' % s)
    no_leaks(p, 'idle live connection')
    c.close()
    p.wait_line(r'CLOSED %d close$' % c.fd)
    time.sleep(GRACE_MS / 1000.0 + 0.3)
    p.finish()
    no_leaks(p, 'idle live connection')


@test
def test_trap_half_close_streaming_reply():
    """The client half-closes after its request; the server streams the reply for four grace
    periods after the EOF, then closes: a legitimate half-close, not a leak."""
    stream = 4 * GRACE_MS
    p = run_prog([TSERVER, '-n', '1', '-m', 'recv', '-c', 'close', '-W', str(stream), '-q', '-l', '10000'])
    c = Conn(p, p.port(), data=b'GET /big\r\n')
    c.sock.shutdown(socket.SHUT_WR)
    t0 = time.time()
    got = b''
    while True:
        d = c.sock.recv(65536)
        if not d:
            break
        got += d
    took = time.time() - t0
    check(got.endswith(b'END\n') and len(got) > 10000, 'reply of %d bytes' % len(got))
    check(took >= stream / 1000.0 * 0.8, 'the reply took only %.2fs' % took)
    c.close()
    p.wait_line(r'CLOSED %d close$' % c.fd)
    time.sleep(GRACE_MS / 1000.0 + 0.3)
    p.finish()
    no_leaks(p, 'half-closing client while the reply streams for %d ms' % stream)


@test
def test_trap_fd_reuse_by_file():
    """Close via syscall (unseen), then open() of /dev/null takes the number: a file at the
    old socket's number must not be reported."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'reusefile', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'EOF %d$' % c.fd)
    m = p.wait_line(r'REUSE (\d+) (-?\d+)$')[1]
    old, new = int(m.group(1)), int(m.group(2))
    check(old == new, 'the file got fd %d, not %d: scenario not set up' % (new, old))
    check(fd_target(p.pid, new) == '/dev/null', 'fd %d is %r' % (new, fd_target(p.pid, new)))
    quiet_period()
    no_leaks(p, 'descriptor number reused by a regular file')
    p.finish()
    no_leaks(p, 'descriptor number reused by a regular file')


# ---------------------------------------------------------------- tests: other leaks

@test
def test_shutdown_without_close():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'shutdown', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'EOF %d$' % c.fd)
    p.wait_line(r'LEAK %d$' % c.fd)
    tgt = fd_target(p.pid, c.fd)
    check(tgt and tgt.startswith('socket:'), 'fd %d is %r, wanted the socket still open' % (c.fd, tgt))
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.2)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 1, 'wanted exactly one leak event, got %d' % len(leaks))
    check_leak(leaks[0], c, None, reasons=('shutdown_not_closed', 'eof_not_closed'),
               opened_by='accept', open_fn='tserver_accept_conn')
    check(leaks[0].get('state') in ('CLOSE_WAIT', 'LAST_ACK', 'CLOSE'), 'state %r' % leaks[0].get('state'))
    # seen with the library of this commit: reason shutdown_not_closed, state CLOSE (the FIN
    # sent by shutdown was acknowledged: the kernel has left CLOSE_WAIT and LAST_ACK)
    return 'reason=%s state=%s' % (leaks[0].get('reason'), leaks[0].get('state'))


@test
def test_threaded_some_leak():
    """One thread per connection; 3 of 7 connections leak: exactly 3 reports, each with the
    leaking connection's own fd, one code site."""
    p = run_prog([TSERVER, '-t', '-n', '7', '-m', 'read', '-c', 'close', '-s', '100', '-q', '-l', '10000'])
    port = p.port()
    conns = []
    for i in range(7):
        conns.append(Conn(p, port, data=b'LEAK\n' if i % 2 else b'CLOSE\n'))
    for c in conns:
        c.close()
    leaking = [c for i, c in enumerate(conns) if i % 2]
    for c in conns:
        p.wait_line(r'(LEAK|CLOSED) %d' % c.fd)
    for c in leaking:
        wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
    p.wait_events(is_leak, len(leaking), timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.3)
    check(len(close_wait_of(p.pid)) == len(leaking), 'kernel CLOSE_WAIT count %d' % len(close_wait_of(p.pid)))
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == len(leaking), 'wanted %d leak events, got %d: %s' % (
        len(leaking), len(leaks), [(e.get('fd'), e.get('peer')) for e in leaks]))
    for c in leaking:
        mine = [e for e in leaks if c.matches(e)]
        check(len(mine) == 1, 'connection fd %d (peer %s): %d events' % (c.fd, c.server_peer, len(mine)))
        check_leak(mine[0], c, 'eof_not_closed', opened_by='accept', open_fn='tserver_accept_conn',
                   eof_fn='rd_read', eof_by='read')
    check(len({e['fd'] for e in leaks}) == len(leaking), 'fds not distinct')
    ids = {e.get('stack_id') for e in leaks}
    check(len(ids) == 1, 'one accept site, but stack_ids %s' % ids)
    s = summary_of(p)
    check(s is not None, 'no summary event at exit')
    f = [x for x in s.get('findings', []) if x.get('stack_id') in ids]
    check(f and f[0].get('count_ever') == len(leaking) and f[0].get('count_now') == len(leaking),
          'summary findings %s' % s.get('findings'))


def make_closed_late_test(mode):
    def t():
        """Reported, then closed 3 x grace after the EOF by a call that is not close():
        a closed_late event, and the summary counts nothing open."""
        delay = 3 * GRACE_MS
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', mode, '-d', str(delay), '-q', '-l', '10000'])
        c = Conn(p, p.port())
        c.close()
        p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        check(not p.has_line(r'CLOSED '), 'closed before the report: grace not honoured?')
        p.wait_line(r'CLOSED %d %s$' % (c.fd, mode), 5)
        cl, _ = p.wait_events(lambda e: e.get('event') == 'closed_late', 1, timeout=REPORT_WAIT)
        time.sleep(0.2)
        p.finish()
        leaks = p.leaks()
        check(len(leaks) == 1, 'wanted one leak event, got %d' % len(leaks))
        check_leak(leaks[0], c, 'eof_not_closed', open_fn='tserver_accept_conn', eof_fn='rd_read')
        e = cl[0]
        check(e.get('fd') == c.fd and e.get('peer') == c.server_peer and e.get('local') == c.server_local,
              'closed_late names fd %r %r %r' % (e.get('fd'), e.get('local'), e.get('peer')))
        check(e.get('stack_id') == leaks[0].get('stack_id'), 'closed_late stack_id differs from the leak')
        held = e.get('held_ms')
        check(is_int(held) and delay - 100 <= held <= delay + 1500, 'held_ms %r, held ~%d ms' % (held, delay))
        s = summary_of(p)
        check(s is not None, 'no summary at exit')
        check(s.get('leaks_open') == 0 and s.get('leaks_total') == 1,
              'summary leaks_open %r leaks_total %r, wanted 0 and 1' % (s.get('leaks_open'), s.get('leaks_total')))
    return t


for _mode in ('syscall', 'close_range', 'fclose', 'dup2'):
    test(make_closed_late_test(_mode), name='closed_late_via_' + _mode)


@test
def test_close_racing_report():
    """The program closes the socket (syscall(SYS_close); every other run a new socket then
    takes the number) just after the grace period, while the first report is being written
    (symbolizing takes a while). Whatever is written must be true: the leak and closed_late
    events carry the connection's own addresses, and held_ms is not shorter than the time the
    socket was really held."""
    problems = []
    for i, extra in enumerate(range(5, 200, 15)):
        d = GRACE_MS + extra
        # closed via syscall; every other time a new unconnected socket then takes the number
        mode = ('syscall', 'reuse')[i % 2]
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', mode, '-d', str(d), '-q', '-l', '10000'])
        c = Conn(p, p.port())
        c.close()
        p.wait_line(r'(CLOSED %d syscall|REUSE %d \d+)$' % (c.fd, c.fd), 5)
        time.sleep(GRACE_MS / 1000.0 + 0.4)
        p.finish()
        evs = p.events()
        leaks = [e for e in evs if e.get('event') == 'leak']
        late = [e for e in evs if e.get('event') == 'closed_late']
        for e in leaks + late:
            if e.get('local') != c.server_local or e.get('peer') != c.server_peer:
                problems.append('%s at EOF+%dms: %s has local %r peer %r, wanted %s %s' % (
                    mode, d, e['event'], e.get('local'), e.get('peer'), c.server_local, c.server_peer))
        for e in late:
            if not is_int(e.get('held_ms')) or e['held_ms'] < d - 10:
                problems.append('%s at EOF+%dms: closed_late held_ms %r' % (mode, d, e.get('held_ms')))
        if len(late) != len(leaks):
            problems.append('%s at EOF+%dms: %d leak but %d closed_late events' % (mode, d, len(leaks), len(late)))
        _live.remove(p)
        p.cleanup()
    check(not problems, '%d problem(s): %s' % (len(problems), '; '.join(problems[:4])))


@test
def test_reuse_after_report():
    """A reported socket is closed via syscall(SYS_close) (no close() seen); the next accepted
    connection gets the same number and leaks too: two reports, each with its own peer."""
    delay = 3 * GRACE_MS
    p = run_prog([TSERVER, '-n', '2', '-m', 'read', '-c', 'syscall', '-d', str(delay), '-q', '-l', '10000'])
    port = p.port()
    a = Conn(p, port)
    a.close()
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.wait_line(r'CLOSED %d syscall$' % a.fd, 5)
    b = Conn(p, port, data=b'LEAK')
    b.close()
    check(b.fd == a.fd, 'second connection got fd %d, first had %d: scenario not set up' % (b.fd, a.fd))
    p.wait_line(r'LEAK %d$' % b.fd, 5)
    p.wait_events(is_leak, 2, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.2)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 2, 'wanted 2 leak events, got %d: %s' % (len(leaks), [(e.get('fd'), e.get('peer')) for e in leaks]))
    for conn, name in ((a, 'first'), (b, 'second')):
        mine = [e for e in leaks if conn.matches(e)]
        check(len(mine) == 1, 'the %s connection (peer %s) has %d reports' % (name, conn.server_peer, len(mine)))
        check_leak(mine[0], conn, 'eof_not_closed')
    s = summary_of(p)
    check(s is not None and s.get('leaks_open') == 1 and s.get('leaks_total') == 2,
          'summary %s, wanted leaks_open 1 leaks_total 2' % (s and {k: s.get(k) for k in ('leaks_open', 'leaks_total')}))


@test
def test_many_leaks():
    """400 connections, all leaked by one thread-per-connection server: 400 reports, distinct
    fds and peers, one code site counted 400 times."""
    n = 400
    p = run_prog([TSERVER, '-t', '-n', str(n), '-m', 'recv', '-c', 'leak', '-q', '-l', '30000'])
    port = p.port()
    conns = [Conn(None, port) for _ in range(n)]
    for c in conns:
        c.close()
    poll_until(lambda: len([l for _, l in p.lines if l.startswith('LEAK ')]) >= n, 10, 0.05)
    check(len(close_wait_of(p.pid)) == n, 'kernel shows %d CLOSE_WAIT sockets, wanted %d' % (len(close_wait_of(p.pid)), n))
    p.wait_events(is_leak, n, timeout=REPORT_WAIT + 4)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.2)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == n, 'wanted %d leak events, got %d' % (n, len(leaks)))
    check(len({e.get('fd') for e in leaks}) == n, 'fds not distinct')
    peers = {e.get('peer') for e in leaks}
    check(peers == {c.server_peer for c in conns}, 'reported peers differ from the clients: %d unmatched' % len(peers ^ {c.server_peer for c in conns}))
    ids = {e.get('stack_id') for e in leaks}
    check(len(ids) == 1, 'one accept site, %d stack_ids' % len(ids))
    s = summary_of(p)
    f = [x for x in (s or {}).get('findings', []) if x.get('stack_id') in ids]
    check(f and f[0].get('count_ever') == n and f[0].get('count_now') == n, 'summary findings %s' % (s and s.get('findings')))


@test
def test_dup_copy_kept():
    """The server dup()s the socket, closes the original and keeps the copy: one report,
    carrying the copy's fd."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'dupkeep', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    m = p.wait_line(r'DUP %d (\d+)$' % c.fd)[1]
    d = int(m.group(1))
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, d)
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.2)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 1, 'wanted exactly one leak event, got %d: %s' % (len(leaks), [(e.get('fd'), e.get('reason')) for e in leaks]))
    check(c.matches(leaks[0]), 'peer %r, wanted %s' % (leaks[0].get('peer'), c.server_peer))
    check(leaks[0].get('fd') == d, 'fd %r, wanted the kept copy %d' % (leaks[0].get('fd'), d))
    check(leaks[0].get('reason') == 'eof_not_closed', 'reason %r' % leaks[0].get('reason'))


class ClientConn:
    """The client side seen from a client program: tclient connected to a Python listener."""

    def __init__(self, prog, lsock):
        m = prog.wait_line(r'CONNECTED (\d+) (\d+)$')[1]
        self.fd, cport = int(m.group(1)), int(m.group(2))
        self.sock, _ = lsock.accept()
        self.server_local = addr(self.sock.getpeername())   # the client program's local
        self.server_peer = addr(self.sock.getsockname())
        check(self.sock.getpeername()[1] == cport, 'accepted a different connection')

    def matches(self, ev):
        return ev.get('local') == self.server_local and ev.get('peer') == self.server_peer


def client_side(mode, reason, eof):
    ls = socket.socket()
    ls.bind((HOST, 0))
    ls.listen(4)
    ls.settimeout(5)
    try:
        p = run_prog([TCLIENT, str(ls.getsockname()[1]), mode, '15000'])
        c = ClientConn(p, ls)
        c.sock.close()              # the server side closes: the client's socket gets the FIN
        if eof:
            p.wait_line(r'EOF %d$' % c.fd)
        p.wait_line(r'LEAK %d$' % c.fd)
        wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
        p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        time.sleep(2 * GRACE_MS / 1000.0 + 0.2)
        p.finish()
    finally:
        ls.close()
    leaks = p.leaks()
    check(len(leaks) == 1, 'wanted exactly one leak event, got %d' % len(leaks))
    ev = leaks[0]
    check_leak(ev, c, reason, opened_by=('socket', 'connect'), open_fn='tclient_open',
               eof_fn='tclient_read' if eof else None, eof_by='read' if eof else None,
               src=TCLIENT_SRC, open_marks=['socket', 'connect'], eof_marks=['tclient_read'])
    if not eof:
        check('eof_stack' not in ev, 'eof_stack on a socket that was never read')


@test
def test_client_side_eof_leak():
    """A client (socket + connect) reads the server's EOF and keeps the descriptor."""
    client_side('read', 'eof_not_closed', True)


@test
def test_client_side_idle_pool():
    """A pooled client connection the server closed; the client never reads it."""
    client_side('unread', 'peer_closed_unread', False)


@test
def test_inet6_socket():
    """An AF_INET6 server (bound to ::ffff:127.0.0.1): the addresses are reported in the
    bracketed IPv6 form, or as plain 127.0.0.1."""
    p = run_prog([TSERVER, '-6', '-n', '1', '-m', 'recv', '-c', 'leak', '-q', '-l', '10000'])
    port = p.port()
    c = Conn(p, port)
    c.close()
    p.wait_line(r'LEAK %d$' % c.fd)
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.finish()
    ev = evs[0]
    check(ev.get('fd') == c.fd, 'fd %r, wanted %d' % (ev.get('fd'), c.fd))
    cport = c.cport
    check(ev.get('local') in ('[::ffff:127.0.0.1]:%d' % port, '127.0.0.1:%d' % port),
          'local %r for an IPv6 socket on port %d' % (ev.get('local'), port))
    check(ev.get('peer') in ('[::ffff:127.0.0.1]:%d' % cport, '127.0.0.1:%d' % cport),
          'peer %r, wanted port %d' % (ev.get('peer'), cport))
    check(ev.get('reason') == 'eof_not_closed', 'reason %r' % ev.get('reason'))


@test
def test_dup_both_kept():
    """The socket is dup()ed and both descriptors kept: one report for the socket, naming
    the other descriptor in dup_fds."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'dupboth', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    d = int(p.wait_line(r'DUP %d (\d+)$' % c.fd)[1].group(1))
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, c.fd)
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.3)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 1, 'one socket, %d leak events: %s' % (len(leaks), [(e.get('fd'), e.get('dup_fds')) for e in leaks]))
    e = leaks[0]
    fds = {e.get('fd')} | set(e.get('dup_fds') or [])
    check(fds == {c.fd, d}, 'fd %r dup_fds %r, wanted the descriptors %d and %d' % (e.get('fd'), e.get('dup_fds'), c.fd, d))
    check(c.matches(e), 'peer %r' % e.get('peer'))


@test
def test_fd_zero():
    """A daemon-like program closed stdin: the accepted connection is descriptor 0."""
    p = run_prog([TSERVER, '-Z', '-n', '1', '-m', 'read', '-c', 'leak', '-l', '3000'])
    c = Conn(p, p.port())
    check(c.fd == 0, 'the connection got fd %d, not 0: scenario not set up' % c.fd)
    c.close()
    p.wait_line(r'LEAK 0$')
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    check_leak(evs[0], c, 'eof_not_closed', opened_by='accept', open_fn='tserver_accept_conn')
    p.wait_exit(10)


@test
def test_high_fd():
    """The socket moved by dup2() to descriptor 15000 (the limit is 20000) and leaked there."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'highfd', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'DUP %d 15000$' % c.fd)
    wait_kernel_state(c.server_local, c.server_peer, 'CLOSE-WAIT', p.pid, 15000)
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    time.sleep(2 * GRACE_MS / 1000.0 + 0.3)
    p.finish()
    leaks = p.leaks()
    check(len(leaks) == 1, 'wanted exactly one leak event, got %d: %s' % (len(leaks), [e.get('fd') for e in leaks]))
    check(leaks[0].get('fd') == 15000, 'fd %r, wanted 15000' % leaks[0].get('fd'))
    check(c.matches(leaks[0]), 'peer %r' % leaks[0].get('peer'))


# ---------------------------------------------------------------- tests: errno

@test
def test_errno_preserved():
    outs = []
    for lib in (False, True):
        p = run_prog([TERRNO], lib=lib)
        rc = p.wait_exit(10)
        check(rc == 0, 'terrno exit status %s (library %s): %s' % (rc, lib, p.context()))
        outs.append([l for _, l in p.lines])
    bare, hooked = outs
    check(len(bare) > 40, 'terrno printed only %d lines' % len(bare))
    diffs = ['%s  <->  %s' % (a, b) for a, b in zip(bare, hooked) if a != b]
    check(len(bare) == len(hooked), 'line counts differ: %d without, %d with the library' % (len(bare), len(hooked)))
    check(not diffs, 'results differ (without <-> with the library): %s' % '; '.join(diffs[:6]))


# ---------------------------------------------------------------- tests: the watcher process

def threads_of(pid):
    return len(os.listdir('/proc/%d/task' % pid))


@test
def test_watcher_process_keeps_program_single_threaded():
    """The default watcher is a process of its own: a single-threaded server stays single-threaded
    (glibc keeps its single-threaded paths), the leak is still reported, and the watcher ends with
    the program."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    check(threads_of(p.pid) == 1, 'the program has %d threads' % threads_of(p.pid))
    w = watchers_of(p.pid)
    check(len(w) == 1, 'watcher processes for %d: %r' % (p.pid, w))
    with open('/proc/%d/stat' % w[0]) as f:
        ppid = int(f.read().rsplit(')', 1)[1].split()[1])
    check(ppid != p.pid, 'the watcher is a child of the program (it would show in its wait())')
    c.close()
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    check_leak(evs[0], c, 'eof_not_closed', opened_by='accept')
    check(threads_of(p.pid) == 1, 'the program has %d threads after the report' % threads_of(p.pid))
    starts = [e for e in p.events() if e.get('event') == 'start']
    check(len(starts) == 1 and starts[0].get('watcher') == 'process', 'start event: %r' % starts)
    p.finish()
    check(summary_of(p) is not None, 'no exit summary')
    check(poll_until(lambda: not os.path.exists('/proc/%d' % w[0]), 3.0), 'the watcher outlived the program')


@test
def test_watcher_process_ends_when_program_killed():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'])
    p.port()
    w = watchers_of(p.pid)
    check(len(w) == 1, 'watcher processes for %d: %r' % (p.pid, w))
    p.proc.kill()
    p.proc.wait(5)
    check(poll_until(lambda: not os.path.exists('/proc/%d' % w[0]), 3.0), 'the watcher outlived a killed program')


@test
def test_watcher_invisible_to_wait():
    """A program that reaps 'all its children' with wait() until ECHILD, and counts SIGCHLD, must
    see exactly the children it made: never the watcher, never a hang."""
    script = r"""
import os, signal, socket, sys
listener = socket.create_server(('127.0.0.1', 0))   # a TCP socket: the watcher starts
got = []
signal.signal(signal.SIGCHLD, lambda s, f: got.append(s))
signal.alarm(20)
kids = set()
for i in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    kids.add(pid)
reaped = set()
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        break
    reaped.add(pid)
print('REAPED %d STRANGERS %d SIGCHLD %d' % (len(reaped & kids), len(reaped - kids), len(got)), flush=True)
"""
    p = run_prog([sys.executable, '-c', script])
    line = p.wait_line(r'REAPED.*', timeout=15)[1].group(0)
    check('REAPED 3 STRANGERS 0' in line, 'wait() saw: %s' % line)
    n = int(line.rsplit(' ', 1)[1])
    check(n <= 3, 'SIGCHLD %d times for 3 children' % n)
    check(p.wait_exit(10) == 0, 'exit status (%s)' % p.context())


@test
def test_watcher_process_leaves_at_exec():
    """A program that execs another image without the library: its watcher goes (the new image
    has nothing of ours in it) while the process lives on."""
    script = r"""
import os, socket, sys
listener = socket.create_server(('127.0.0.1', 0))   # a TCP socket: the watcher starts
print('READY', flush=True)
sys.stdin.readline()
env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
os.execve('/bin/sleep', ['sleep', '4'], env)
"""
    p = run_prog([sys.executable, '-c', script], env={'CLOSEWAIT_INTERVAL_MS': '200'})
    p.wait_line(r'READY')
    w = watchers_of(p.pid)
    check(len(w) == 1, 'watcher processes for %d: %r' % (p.pid, w))
    p.proc.stdin.write(b'go\n')
    p.proc.stdin.flush()
    check(poll_until(lambda: not os.path.exists('/proc/%d' % w[0]), 3.0), 'the watcher stayed after exec')
    check(p.proc.poll() is None, 'the exec\'d program is gone already')
    p.wait_exit(10)


@test
def test_no_watcher_without_tcp():
    """A process that makes no TCP socket (a shell, a compiler under an inherited LD_PRELOAD) gets
    no watcher at all; its first TCP socket starts one."""
    script = r"""
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a, b = socket.socketpair()
print('NO-TCP', flush=True)
sys.stdin.readline()
t = socket.socket()
print('TCP', flush=True)
sys.stdin.readline()
"""
    p = run_prog([sys.executable, '-c', script])
    p.wait_line(r'NO-TCP')
    time.sleep(0.3)
    check(watchers_of(p.pid) == [], 'a watcher process before any TCP socket: %r' % watchers_of(p.pid))
    check(threads_of(p.pid) == 1, 'the program has %d threads before any TCP socket' % threads_of(p.pid))
    p.proc.stdin.write(b'go\n')
    p.proc.stdin.flush()
    p.wait_line(r'TCP')
    check(poll_until(lambda: len(watchers_of(p.pid)) == 1, 3.0), 'no watcher process after the first TCP socket')
    p.proc.stdin.write(b'go\n')
    p.proc.stdin.flush()
    check(p.wait_exit(10) == 0, 'exit status (%s)' % p.context())


@test
def test_watcher_thread_when_subreaper():
    """A program that is a child subreaper would inherit the orphaned watcher process (and see it in
    wait()): the library watches from a thread there, and still reports."""
    launcher = ('import ctypes, os, sys; ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); '
                'os.execv(sys.argv[1], sys.argv[1:])')
    p = run_prog([sys.executable, '-c', launcher, TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'])
    c = Conn(p, p.port())
    # the launcher's own watcher process leaves at the exec
    check(poll_until(lambda: watchers_of(p.pid) == [], 3.0), 'a watcher process for a subreaper: %r' % watchers_of(p.pid))
    check(threads_of(p.pid) >= 2, 'no watcher thread either (%d threads)' % threads_of(p.pid))
    c.close()
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    check_leak(evs[0], c, 'eof_not_closed', opened_by='accept')
    p.finish()


@test
def test_watcher_process_under_pids_limit():
    """In a pids cgroup (a container's limit) the tree's one watcher process takes one pid, and
    the leak is reported; a fork that finds no pid left makes it give its pid back (the
    deployments suite proves that with a prefork server)."""
    base = '/sys/fs/cgroup/pids'
    if not os.path.isdir(base) or not os.access(base, os.W_OK):
        raise TestSkip('no writable cgroup v1 pids hierarchy')
    for old in os.listdir(base):  # left by an earlier run whose watcher outlived the wait below
        if old.startswith('closewait-test-'):
            try:
                os.rmdir(os.path.join(base, old))
            except OSError:
                pass
    cg = os.path.join(base, 'closewait-test-%d-%d' % (os.getpid(), time.monotonic_ns()))
    try:
        os.mkdir(cg)
    except OSError as e:
        raise TestSkip('cannot make a pids cgroup: %s' % e)
    try:
        with open(os.path.join(cg, 'pids.max'), 'w') as f:
            f.write('30')
        argv = ['/bin/sh', '-c', 'echo $$ > %s/cgroup.procs && exec "$@"' % cg, 'sh',
                TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000']
        p = run_prog(argv)
        c = Conn(p, p.port())
        check(len(watchers_of(p.pid)) == 1, 'one watcher process with 30 pids allowed: %r' % watchers_of(p.pid))
        check(threads_of(p.pid) == 1, 'the program stays single-threaded (%d threads)' % threads_of(p.pid))
        c.close()
        evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        check_leak(evs[0], c, 'eof_not_closed', opened_by='accept')
        p.finish()
    finally:
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.1)


@test
def test_watcher_thread_mode():
    """CLOSEWAIT_WATCHER=thread: the watcher is a thread of the program, no process."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_WATCHER': 'thread'})
    c = Conn(p, p.port())
    check(watchers_of(p.pid) == [], 'a watcher process in thread mode')
    # (>= : a sanitizer runtime starts a thread of its own once a second one exists)
    check(threads_of(p.pid) >= 2, 'the program has %d threads, wanted its own and the watcher' % threads_of(p.pid))
    c.close()
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    check_leak(evs[0], c, 'eof_not_closed', opened_by='accept')
    starts = [e for e in p.events() if e.get('event') == 'start']
    check(len(starts) == 1 and starts[0].get('watcher') == 'thread', 'start event: %r' % starts)
    p.finish()


# ---------------------------------------------------------------- tests: contract

@test
def test_json_contract():
    """Two connections, one code site: one is closed 3 x grace after its EOF (leak +
    closed_late), the other is kept to exit (summary). Every line is checked."""
    delay = 3 * GRACE_MS
    p = run_prog([TSERVER, '-t', '-n', '2', '-m', 'recv', '-c', 'close', '-d', str(delay), '-q', '-l', '10000'])
    port = p.port()
    a = Conn(p, port, data=b'x')
    b = Conn(p, port, data=b'LEAK')
    a.close()
    b.close()
    p.wait_line(r'CLOSED %d close$' % a.fd, 5)
    p.wait_line(r'LEAK %d$' % b.fd, 5)
    cl, _ = p.wait_events(lambda e: e.get('event') == 'closed_late', 1, timeout=REPORT_WAIT)
    time.sleep(0.3)
    p.finish()
    evs = p.events()
    check(evs, 'empty log')
    for ev in evs:     # events the contract does not name (e.g. "start") are allowed
        validate_common(ev, p.pid)
    leaks = [e for e in evs if e['event'] == 'leak']
    check(len(leaks) == 2, 'wanted 2 leak events, got %d' % len(leaks))
    for e in leaks:
        validate_leak(e, exe=TSERVER)
        check(e['state'] == 'CLOSE_WAIT', 'state %r' % e['state'])
        check(e['eof_by'] == 'recv', 'eof_by %r' % e.get('eof_by'))
        check(e['opened_by'] == 'accept', 'opened_by %r' % e.get('opened_by'))
    la = [e for e in leaks if a.matches(e)]
    lb = [e for e in leaks if b.matches(e)]
    check(len(la) == 1 and len(lb) == 1, 'leak events do not match the two connections')
    check_leak(la[0], a, 'eof_not_closed', open_fn='tserver_accept_conn', eof_fn='rd_recv')
    check_leak(lb[0], b, 'eof_not_closed', open_fn='tserver_accept_conn', eof_fn='rd_recv')
    check(la[0]['stack_id'] == lb[0]['stack_id'], 'same site, different stack_id')
    closed = [e for e in evs if e['event'] == 'closed_late']
    check(len(closed) == 1, 'wanted 1 closed_late, got %d' % len(closed))
    c = closed[0]
    validate_closed_late(c)
    check(c['fd'] == a.fd and c['local'] == a.server_local and c['peer'] == a.server_peer,
          'closed_late names fd %r %s %s, wanted %d %s %s' % (c['fd'], c['local'], c['peer'], a.fd, a.server_local, a.server_peer))
    check(c['stack_id'] == la[0]['stack_id'], 'closed_late stack_id differs from the leak')
    check(delay - 100 <= c['held_ms'] <= delay + 1500, 'held_ms %d, the socket was held %d ms after EOF' % (c['held_ms'], delay))
    check(c['ts_ms'] >= la[0]['ts_ms'], 'closed_late before the leak report')
    sums = [e for e in evs if e['event'] == 'summary']
    check(len(sums) == 1, 'wanted 1 summary at exit, got %d' % len(sums))
    s = sums[0]
    validate_summary(s)
    check(s['leaks_open'] == 1 and s['leaks_total'] == 2, 'summary leaks_open %r leaks_total %r, wanted 1 and 2' % (s['leaks_open'], s['leaks_total']))
    f = [x for x in s['findings'] if x['stack_id'] == la[0]['stack_id']]
    check(len(f) == 1 and f[0]['count_now'] == 1 and f[0]['count_ever'] == 2, 'findings %s' % s['findings'])
    check(evs[-1]['event'] == 'summary', 'summary is not the last line')


@test
def test_text_format():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'], fmt='text')
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'LEAK %d$' % c.fd)
    txt = poll_until(lambda: (lambda t: t if c.server_peer in t else None)(p.raw_log()), REPORT_WAIT)
    check(txt, 'no text report naming %s: %s' % (c.server_peer, short_log(p)))
    time.sleep(0.2)
    p.finish()
    txt = p.raw_log()
    check(not txt.lstrip().startswith('{'), 'text format looks like JSON')
    check(re.search(r'\bfd\D{0,3}%d\b' % c.fd, txt), 'fd %d not in the text report: %s' % (c.fd, short_log(p)))
    check(c.server_local in txt, 'local address %s not in the text report' % c.server_local)
    check(c.server_peer in txt, 'peer address %s not in the text report' % c.server_peer)
    check('tserver_accept_conn' in txt, "opener's function tserver_accept_conn not in the text report")
    check(re.search(r'^SUMMARY:', txt, re.M), 'no SUMMARY: line at exit (README): %s' % short_log(p))


@test
def test_bad_option_value():
    """CLOSEWAIT_GRACE_MS=banana: one warning line on stderr, the default (10 s) is used."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '20000', '-T', '60'],
                 grace=None, env={'CLOSEWAIT_GRACE_MS': 'banana'})
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'LEAK %d$' % c.fd)
    err = [l for l in p.stderr_text().splitlines() if l.strip()]
    check(len(err) == 1, 'wanted one warning line on stderr, got %d: %s' % (len(err), err[:4]))
    check('CLOSEWAIT_GRACE_MS' in err[0], 'warning does not name the variable: %r' % err[0])
    time.sleep(2.0)
    check(not p.leaks(), 'reported within 2 s: the bad value was not replaced by the 10 s default')
    evs, seen = p.wait_events(is_leak, 1, timeout=13.0)
    check(seen - c.t_close >= 9.5, 'reported after %.1fs, default grace is 10 s' % (seen - c.t_close))
    sf = evs[0].get('since_fin_ms')
    check(is_int(sf) and sf >= 9500, 'since_fin_ms %r' % sf)
    p.finish()
    err = [l for l in p.stderr_text().splitlines() if l.strip()]
    check(len(err) == 1, 'stderr has %d lines at exit: %s' % (len(err), err[:4]))


@test
def test_missing_suppressions_file():
    """CLOSEWAIT_SUPPRESSIONS naming no file: one warning line, said once (by the program or by its
    watcher process, not both), and leaks are still reported."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_SUPPRESSIONS': '/nonexistent/closewait.supp'})
    c = Conn(p, p.port())
    c.close()
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.finish()
    err = [l for l in p.stderr_text().splitlines() if l.strip()]
    check(len(err) == 1, 'wanted one warning line on stderr, got %d: %s' % (len(err), err[:4]))
    check('CLOSEWAIT_SUPPRESSIONS' in err[0], 'warning does not name the variable: %r' % err[0])


@test
def test_suppressions():
    """CLOSEWAIT_SUPPRESSIONS (README): a fun: pattern matching the opener hides the report;
    the summary still counts it. A pattern matching nothing hides nothing."""
    fd, sup = tempfile.mkstemp(prefix='cwtest-supp-')
    os.close(fd)
    try:
        for pattern, hidden in (('fun:tserver_accept_*', True), ('# comment\nfun:no_such_function', False)):
            with open(sup, 'w') as f:
                f.write(pattern + '\n')
            p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                         env={'CLOSEWAIT_SUPPRESSIONS': sup})
            c = Conn(p, p.port())
            c.close()
            p.wait_line(r'LEAK %d$' % c.fd)
            if hidden:
                time.sleep(3 * GRACE_MS / 1000.0 + 0.4)
            else:
                p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
            p.finish()
            err = p.stderr_text().strip()
            check(not err, 'stderr: %r' % err[:300])
            n = len(p.leaks())
            check(n == (0 if hidden else 1), 'suppression %r: %d leak events' % (pattern, n))
            s = summary_of(p)
            check(s is not None, 'no summary')
            if hidden:
                check(s.get('suppressed') == 1, 'summary suppressed %r, wanted 1' % s.get('suppressed'))
    finally:
        os.unlink(sup)


@test
def test_stack_id_stable():
    ids = []
    for i in range(2):
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'])
        c = Conn(p, p.port())
        c.close()
        evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        ids.append(evs[0].get('stack_id'))
        p.finish()
    check(ids[0] and re.match(r'^[0-9a-fA-F]{16}$', ids[0]), 'stack_id %r' % ids[0])
    check(ids[0] == ids[1], 'stack_id differs between runs: %s' % ids)


@test
def test_exitcode():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_EXITCODE': '7'})
    c = Conn(p, p.port())
    c.close()
    p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.finish(expect_rc=7)
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'close', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_EXITCODE': '7'})
    c = Conn(p, p.port())
    c.close()
    p.wait_line(r'CLOSED %d' % c.fd)
    p.finish(expect_rc=0)


@test
def test_symbolize_off():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_SYMBOLIZE': '0'})
    c = Conn(p, p.port())
    c.close()
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.finish()
    st = evs[0].get('open_stack')
    validate_frames(st, 'open_stack')
    named = [f for f in st if 'function' in f]
    check(not named, 'CLOSEWAIT_SYMBOLIZE=0 but frames carry names: %s' % [f['function'] for f in named])
    check(any(os.path.realpath(f['module']) == os.path.realpath(TSERVER) for f in st), 'no frame in the program itself')


@test
def test_log_path_pid():
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 log_name='cw.%p.log')
    real = os.path.join(p.dir, 'cw.%d.log' % p.pid)
    c = Conn(p, p.port())
    c.close()
    found = poll_until(lambda: os.path.exists(real) and [e for e in p.events(real) if e.get('event') == 'leak'],
                       REPORT_WAIT)
    check(found, 'no leak event in %s; directory holds %s' % (os.path.basename(real), os.listdir(p.dir)))
    mode = os.stat(real).st_mode & 0o777
    check(mode == 0o600, 'log file mode %o, wanted 600' % mode)
    check(not os.path.exists(p.log), 'a file named literally %s was created' % os.path.basename(p.log))
    p.finish()


@test
def test_log_default_stderr():
    """Without CLOSEWAIT_LOG the reports go to stderr."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_LOG': None})
    c = Conn(p, p.port())
    c.close()
    def leak_lines():
        out = []
        for l in p.stderr_text().splitlines():
            try:
                e = json.loads(l)
            except ValueError:
                continue
            if isinstance(e, dict) and e.get('event') == 'leak':
                out.append(e)
        return out
    evs = poll_until(leak_lines, REPORT_WAIT)
    p.finish()
    check(evs, 'no JSON leak line on stderr: %r' % p.stderr_text()[:300])
    check(evs[0].get('fd') == c.fd and c.matches(evs[0]), 'leak on stderr names fd %r peer %r' % (
        evs[0].get('fd'), evs[0].get('peer')))
    check(not os.path.exists(p.log), 'a log file was written')


@test
def test_stack_depth():
    """CLOSEWAIT_STACK_DEPTH=2 keeps two frames, the innermost ones."""
    p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                 env={'CLOSEWAIT_STACK_DEPTH': '2'})
    c = Conn(p, p.port())
    c.close()
    evs, _ = p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
    p.finish()
    for key, fn in (('open_stack', 'tserver_accept_conn'), ('eof_stack', 'rd_read')):
        st = evs[0].get(key) or []
        check(1 <= len(st) <= 2, '%s has %d frames with CLOSEWAIT_STACK_DEPTH=2' % (key, len(st)))
        # a sanitizer build's interceptor may sit between the program and the hook
        names = frame_functions([f for f in st if not is_sanitizer_module(f.get('module'))])
        check(names and names[0] == fn, '%s innermost frame is %s, wanted %s' % (key, names[:1], fn))


BAD_VALUES = [
    ('CLOSEWAIT_FORMAT', 'xml'),
    ('CLOSEWAIT_STACK_DEPTH', '0'),
    ('CLOSEWAIT_STACK_DEPTH', '65'),
    ('CLOSEWAIT_INTERVAL_MS', '-5'),
    ('CLOSEWAIT_EXITCODE', 'abc'),
    ('CLOSEWAIT_SYMBOLIZE', 'maybe'),
    ('CLOSEWAIT_GRACE_MS', '300x'),
]


@test
def test_bad_values_other():
    """Each bad value: one warning line naming the variable, the default kept, the program
    runs and exits normally. (GRACE_MS=300x must not be read as 300: the default 10 s holds.)"""
    for var, val in BAD_VALUES:
        env = {var: val}
        fmt = 'json'
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'], env=env,
                     grace=None if var == 'CLOSEWAIT_GRACE_MS' else GRACE_MS)
        c = Conn(p, p.port())
        c.close()
        p.wait_line(r'LEAK %d$' % c.fd)
        what = '%s=%s' % (var, val)
        if var == 'CLOSEWAIT_GRACE_MS':
            time.sleep(GRACE_MS / 1000.0 + 1.0)
            check(not p.leaks(), '%s: reported after %d ms, the default grace is 10 s' % (what, GRACE_MS))
        elif var == 'CLOSEWAIT_FORMAT':
            txt = poll_until(lambda: c.server_peer in p.raw_log(), REPORT_WAIT)
            check(txt, '%s: no report' % what)
            check(not p.raw_log().lstrip().startswith('{'), '%s: not the default text format' % what)
        else:
            p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        rc = p.finish(expect_rc=None)
        check(rc == 0, '%s: exit status %s (%s)' % (what, rc, p.context()))
        err = [l for l in p.stderr_text().splitlines() if l.strip()]
        check(len(err) == 1, '%s: wanted one warning line on stderr, got %d: %s' % (what, len(err), err[:3]))
        check(var in err[0], '%s: warning does not name the variable: %r' % (what, err[0]))
        _live.remove(p)
        p.cleanup()


# ---------------------------------------------------------------- report signal, suppressions

UNIT_CFLAGS = harness.CFLAGS['unit']
_units = {}


def unit_env():
    return {k: v for k, v in os.environ.items() if not k.startswith('CLOSEWAIT_') and k != 'LD_PRELOAD'}


def build_unit(name):
    """tests/progs/NAME.c, a program that compiles a file of src/ into itself, built fresh here
    (make -C tests cannot know that it depends on src/) with the library's warning flags, and
    with ASan+UBSan when the compiler has them."""
    if name in _units:
        return _units[name]
    import atexit
    d = tempfile.mkdtemp(prefix='cwunit-')
    atexit.register(shutil.rmtree, d, True)
    out = os.path.join(d, name)
    src = os.path.join(TESTS_DIR, 'progs', name + '.c')
    cc = os.environ.get('CC', 'cc')
    errors = ''
    for extra in (['-fsanitize=address,undefined', '-fno-sanitize-recover=undefined'], []):
        r = harness.compile_c([src], out, UNIT_CFLAGS + extra, cc=cc, timeout=180, env=os.environ)
        if r.returncode != 0:
            errors = r.stdout.decode('utf-8', 'replace')
            continue
        # a sanitizer runtime that cannot run here counts as absent
        probe = subprocess.run([out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=unit_env(),
                               timeout=60)
        if probe.returncode in (0, 2) and not sanitizer_report(probe.stderr.decode('utf-8', 'replace')):
            _units[name] = out
            return out
        errors = probe.stderr.decode('utf-8', 'replace')
    raise TestFailure('cannot build %s: %s' % (os.path.basename(src), errors.strip()[-1500:]))


def run_unit(argv, timeout=60, expect_rc=0):
    """(stdout, stderr) of a unit program; a sanitizer finding or another exit status fails."""
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=unit_env(),
                       timeout=timeout)
    out = r.stdout.decode('utf-8', 'replace')
    err = r.stderr.decode('utf-8', 'replace')
    bad = sanitizer_report(err)
    check(not bad, '%s: sanitizer: %s' % (' '.join(os.path.basename(a) for a in argv[:2]), bad))
    check(r.returncode == expect_rc, '%s exited %d: %s %s' % (
        ' '.join(os.path.basename(a) for a in argv[:2]), r.returncode, out[-300:], err[-500:]))
    return out, err


SIGNAL_HINT = '(use USR1, USR2, WINCH, URG or a realtime signal)'
REFUSED_SIGNALS = ['TERM', 'INT', 'QUIT', 'HUP', 'KILL', 'STOP', 'TSTP', 'TTIN', 'TTOU', 'CONT',
                   'CHLD', 'PIPE', 'ALRM', 'VTALRM', 'PROF', 'SEGV', 'BUS', 'FPE', 'ILL', 'ABRT',
                   'TRAP', 'SYS', 'XCPU', 'XFSZ', 'IO', 'POLL', 'PWR']


@test
def test_report_signal_values():
    """CLOSEWAIT_REPORT_SIGNAL as src/options/options.c reads it (tests/progs/tsignals.c): USR1, USR2,
    WINCH, URG and realtime signals (by number, RTMIN+n, RTMAX-n) are taken; every signal that
    runs a program's life is refused by name, SIG name and number with one warning line saying
    why; anything else is one warning line; no signal is taken in either case."""
    exe = build_unit('tsignals')
    out, _ = run_unit([exe, '--rt'])
    rtmin, rtmax = (int(x) for x in out.split())
    check(rtmin == signal.SIGRTMIN and rtmax == signal.SIGRTMAX,
          'SIGRTMIN..SIGRTMAX %d..%d in C, %d..%d in Python' % (rtmin, rtmax, signal.SIGRTMIN, signal.SIGRTMAX))
    want = {}       # value -> (signal taken, what its warning must say or None)
    for n in ('USR1', 'USR2', 'WINCH', 'URG'):
        sig = int(getattr(signal, 'SIG' + n))
        want[n] = want['SIG' + n] = want[str(sig)] = (sig, None)
    for v, sig in (('RTMIN', rtmin), ('SIGRTMIN', rtmin), ('RTMIN+1', rtmin + 1),
                   ('SIGRTMIN+%d' % (rtmax - rtmin), rtmax), ('RTMAX', rtmax), ('SIGRTMAX-2', rtmax - 2),
                   (str(rtmin), rtmin), (str(rtmin + 3), rtmin + 3), (str(rtmax), rtmax)):
        want[v] = (sig, None)
    for n in REFUSED_SIGNALS:
        sig = int(getattr(signal, 'SIG' + n))
        want[n] = want['SIG' + n] = (0, ['SIG%s ' % n, 'refused'])
        want[str(sig)] = (0, [signal.Signals(sig).name + ' ', 'refused'])
    want['16'] = want['STKFLT'] = (0, ['SIGSTKFLT', 'refused'])
    for sig in range(32, rtmin):
        want[str(sig)] = (0, ['reserved', 'refused'])
    for v in ('term', 'Usr1', 'SIGSIGTERM', 'SIG', '0', '65', '-1', '+10', '10x', 'RTMIN+%d' % (rtmax - rtmin + 1),
              'RTMAX+1', 'RTMIN-1', 'banana', 'x' * 300):
        want[v] = (0, ['not a signal'])
    values = list(want)
    out, err = run_unit([exe] + values)
    got = dict(l.rsplit(' ', 1) for l in out.splitlines())
    warned = {}
    current = None
    for l in err.splitlines():
        if l.startswith('VALUE '):
            current = l[6:]
            warned[current] = []
        else:
            warned.setdefault(current, []).append(l)
    for v in values:
        sig, words = want[v]
        shown = v if len(v) <= 32 else v[:29] + '...'
        check(got.get(v) == str(sig), 'CLOSEWAIT_REPORT_SIGNAL=%s: took signal %s, wanted %d' % (shown, got.get(v), sig))
        lines = warned.get(v, [])
        if words is None:
            check(not lines, 'CLOSEWAIT_REPORT_SIGNAL=%s: warned: %s' % (shown, lines))
            continue
        check(len(lines) == 1, 'CLOSEWAIT_REPORT_SIGNAL=%s: %d warning lines, wanted one: %s' % (shown, len(lines), lines))
        line = lines[0]
        check(line.startswith('closewait: CLOSEWAIT_REPORT_SIGNAL=%s: ' % shown), 'warning %r does not name the value' % line)
        check(line.endswith(SIGNAL_HINT), 'warning %r does not end with %r' % (line, SIGNAL_HINT))
        for w in words:
            check(w in line, 'CLOSEWAIT_REPORT_SIGNAL=%s: warning %r does not say %r' % (shown, line, w))
    example = ('closewait: CLOSEWAIT_REPORT_SIGNAL=15: SIGTERM stops the program; refused, no report '
               'signal used (use USR1, USR2, WINCH, URG or a realtime signal)')
    check(warned['15'] == [example], 'the warning for 15 is %r' % warned['15'])


@test
def test_report_signal_refused_keeps_signal():
    """CLOSEWAIT_REPORT_SIGNAL=TERM, 15, INT or HUP: one warning line, and the signal still does
    what it did without the library: it kills the program."""
    for val, sig in (('TERM', signal.SIGTERM), ('15', signal.SIGTERM), ('SIGINT', signal.SIGINT),
                     ('HUP', signal.SIGHUP)):
        p = run_prog([TSERVER, '-n', '2', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                     env={'CLOSEWAIT_REPORT_SIGNAL': val})
        c = Conn(p, p.port())
        c.close()
        p.wait_events(is_leak, 1, timeout=REPORT_WAIT)     # the library is fully at work
        check(p.alive(), 'CLOSEWAIT_REPORT_SIGNAL=%s: the program died early (%s)' % (val, p.context()))
        os.kill(p.pid, sig)
        p.killed = True
        rc = p.wait_exit(5.0)
        check(rc == -sig, 'CLOSEWAIT_REPORT_SIGNAL=%s: %s did not kill the program: exit status %s (%s)' % (
            val, signal.Signals(sig).name, rc, p.context()))
        err = [l for l in p.stderr_text().splitlines() if l.strip()]
        check(len(err) == 1, 'CLOSEWAIT_REPORT_SIGNAL=%s: wanted one warning line, got %d: %s' % (val, len(err), err[:3]))
        check('CLOSEWAIT_REPORT_SIGNAL=%s:' % val in err[0] and 'refused' in err[0],
              'CLOSEWAIT_REPORT_SIGNAL=%s: warning %r' % (val, err[0]))
        check(not any(e.get('event') == 'summary' and e.get('why') == 'on request' for e in p.events()),
              'CLOSEWAIT_REPORT_SIGNAL=%s: the signal wrote a summary' % val)
        _live.remove(p)
        p.cleanup()


@test
def test_report_signal_usr2_and_realtime():
    """CLOSEWAIT_REPORT_SIGNAL=USR2 and SIGRTMIN+2 still work: the signal writes an "on request"
    summary, the program runs on and exits normally, nothing on stderr."""
    for val, sig in (('USR2', signal.SIGUSR2), ('SIGRTMIN+2', signal.SIGRTMIN + 2)):
        # no -q: a signal that interrupts tserver's poll() on stdin would end its linger; its
        # plain linger sleeps on through signals
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-l', '8000'],
                     env={'CLOSEWAIT_REPORT_SIGNAL': val})
        c = Conn(p, p.port())
        c.close()
        p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        os.kill(p.pid, sig)
        sums, _ = p.wait_events(lambda e: e.get('event') == 'summary', 1, timeout=REPORT_WAIT)
        check(sums[0].get('why') == 'on request', '%s: summary why %r' % (val, sums[0].get('why')))
        check(sums[0].get('leaks_open') == 1, '%s: summary leaks_open %r' % (val, sums[0].get('leaks_open')))
        # Alive, or (a sanitizer's sleep may end the linger at the signal) exited normally: never
        # killed by it.
        rc = p.wait_exit(10.0)
        check(rc == 0, '%s: exit status %s (%s)' % (val, rc, p.context()))
        err = p.stderr_text().strip()
        check(not err, '%s: stderr: %r' % (val, err[:300]))
        _live.remove(p)
        p.cleanup()


def write_temp(data, prefix='cwtest-supp-'):
    fd, path = tempfile.mkstemp(prefix=prefix)
    with os.fdopen(fd, 'wb') as f:
        f.write(data)
    return path


def run_suppressed(patterns, hidden):
    """A server leaks one socket under CLOSEWAIT_SUPPRESSIONS=patterns: hidden (no leak event,
    the summary counts one suppressed) or reported; stderr lines returned."""
    sup = write_temp(patterns.encode())
    try:
        p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                     env={'CLOSEWAIT_SUPPRESSIONS': sup})
        c = Conn(p, p.port())
        c.close()
        p.wait_line(r'LEAK %d$' % c.fd)
        if hidden:
            quiet_period()
        else:
            p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
        p.finish()
    finally:
        os.unlink(sup)
    n = len(p.leaks())
    check(n == (0 if hidden else 1), 'suppressions %r: %d leak events' % (patterns, n))
    if hidden:
        s = summary_of(p)
        check(s is not None and s.get('suppressed') == 1, 'suppressions %r: summary %r' % (patterns, s))
    err = [l for l in p.stderr_text().splitlines() if l.strip()]
    _live.remove(p)
    p.cleanup()
    return err


@test
def test_suppress_src_and_mod_base_names():
    """src:GLOB matches the source file path or its base name, mod:GLOB the module path or its
    base name, as in closewait-report (docs/CONTRACT.md, Suppressions): src:tserver.c hides the
    test server's leak, src:tclient.c does not."""
    for patterns, hidden in (('src:tserver.c\n', True), ('src:*progs/tserver.c\n', True),
                             ('mod:tserver\n', True), ('src:tclient.c\nmod:tclient\n', False)):
        err = run_suppressed(patterns, hidden)
        check(not err, 'suppressions %r: stderr %s' % (patterns, err[:3]))


@test
def test_suppress_unknown_prefix_warns():
    """foo:bar names no known prefix: one warning line naming the file's variable and the prefix;
    the line is ignored (the leak is reported); the other patterns still apply."""
    err = run_suppressed('foo:bar\nfun:no_such_function\n', False)
    check(len(err) == 1, 'wanted one warning line, got %d: %s' % (len(err), err[:3]))
    check('CLOSEWAIT_SUPPRESSIONS' in err[0] and 'foo:' in err[0] and 'unknown prefix' in err[0],
          'warning %r' % err[0])
    err = run_suppressed('foo:bar\nfun:tserver_accept_*\n', True)
    check(len(err) == 1, 'with a good pattern too: %d warning lines: %s' % (len(err), err[:3]))


@test
def test_suppress_not_a_regular_file():
    """CLOSEWAIT_SUPPRESSIONS=/dev/zero, a FIFO nobody writes to, a directory: one warning line,
    nothing suppressed, the program runs normally and exits promptly."""
    d = tempfile.mkdtemp(prefix='cwtest-')
    fifo = os.path.join(d, 'fifo')
    os.mkfifo(fifo)
    try:
        for path, kind in (('/dev/zero', 'character device'), (fifo, 'FIFO'), (d, 'directory')):
            t0 = time.time()
            p = run_prog([TSERVER, '-n', '1', '-m', 'read', '-c', 'leak', '-q', '-l', '10000'],
                         env={'CLOSEWAIT_SUPPRESSIONS': path})
            c = Conn(p, p.port())
            c.close()
            p.wait_events(is_leak, 1, timeout=REPORT_WAIT)
            t_fin = time.time()
            p.finish(timeout=5.0)
            check(time.time() - t_fin < 3.0, '%s: exit took %.1fs' % (path, time.time() - t_fin))
            check(t_fin - t0 < REPORT_WAIT, '%s: the leak took %.1fs to be reported' % (path, t_fin - t0))
            err = [l for l in p.stderr_text().splitlines() if l.strip()]
            check(len(err) == 1, '%s: wanted one warning line, got %d: %s' % (path, len(err), err[:3]))
            check('CLOSEWAIT_SUPPRESSIONS' in err[0] and 'not a regular file' in err[0] and kind in err[0],
                  '%s: warning %r' % (path, err[0]))
            _live.remove(p)
            p.cleanup()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# The report tool's Suppressions class, loaded from tools/closewait-report: the reference the
# library's matcher is compared with.
_report_tool = []


def report_tool():
    if not _report_tool:
        sys.path.insert(0, os.path.join(ROOT, 'tools'))
        import closewait_report
        _report_tool.append(closewait_report)
    return _report_tool[0]


def json_text(b):
    """A name as closewait-report reads it from the log: the library's JSON writer turns each
    byte that is not part of valid UTF-8 into U+FFFD."""
    if b is None:
        return None
    out, i = [], 0
    while i < len(b):
        for n in (1, 2, 3, 4):
            try:
                out.append(b[i:i + n].decode('utf-8'))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append('\ufffd')
            i += 1
    return ''.join(out)


_UNKNOWN_PREFIX = re.compile(r'[A-Za-z][A-Za-z0-9_]*:(?!:)')


def unknown_prefix_line(line):
    line = line.strip()
    return (not line.startswith(('#', 'fun:', 'mod:', 'src:'))) and bool(_UNKNOWN_PREFIX.match(line))


def expected_suppression(content, frames, scratch):
    """What the library must answer for a suppressions file and a stack, from the report tool:
    (rc, patterns, warning lines, match).  The one difference: a line with an unknown prefix is
    a warning and ignored by the library, a function glob for the tool."""
    lines = content.decode('utf-8', 'replace').splitlines()
    unknown = sum(1 for l in lines if unknown_prefix_line(l))
    with open(scratch, 'wb') as f:
        f.write('\n'.join(l for l in lines if not unknown_prefix_line(l)).encode('utf-8'))
    s = report_tool().Suppressions()
    s.load(scratch)
    tf = [{'function': json_text(fn), 'file': json_text(fi), 'module': json_text(mo)} for fn, fi, mo in frames]
    warns = min(unknown, 3) + (1 if unknown > 3 else 0)
    return (0, len(s.rules), warns, 1 if s.match(tf) else 0)


SUPP_CASES = [
    (b'# comment\r\n\r\n   fun:handle_*  \t\r\n', [(b'handle_client', None, None)]),
    (b'# x\rfun:abc\r', [(b'abc', None, None)]),
    (b'fun:zz\x0bfun:abc\x0cfun:q\x1cfun:r\x1dfun:s\x1efun:t', [(b'abc', None, None)]),
    (b'\x1ffun:abc\x1f\n', [(b'abc', None, None)]),
    (b'fun:x\xe2\x80\xa8fun:abc\xc2\x85fun:y\xe2\x80\xa9', [(b'abc', None, None)]),
    (b'\xc2\xa0\xe3\x80\x80fun:\xe2\x80\x89abc\xc2\xa0\n', [(b'abc', None, None)]),
    (b'fun:\nfun:   \nmod:\nsrc:\t\n', [(b'x', b'/x.c', b'/x')]),
    (b'fun: abc \n', [(b'abc', None, None)]),
    (b'mod:libfoo.so\n', [(None, None, b'/usr/lib/libfoo.so')]),
    (b'mod:/usr/lib/*\n', [(None, None, b'/usr/lib/libfoo.so')]),
    (b'mod:usr/lib/libfoo.so\n', [(None, None, b'/usr/lib/libfoo.so')]),
    (b'mod:*\n', [(None, None, b'/usr/lib/')]),
    (b'mod:lib\n', [(None, None, b'/usr/lib/')]),
    (b'mod:*/libcwplugin.so\n', [(None, None, b'/tmp/x/libcwplugin.so')]),
    (b'src:server.c\n', [(None, b'/src/app/server.c', None)]),
    (b'src:app/server.c\n', [(None, b'/src/app/server.c', None)]),
    (b'src:*/app/*.c\n', [(None, b'/src/app/server.c', None)]),
    (b'src:server.c\n', [(None, b'server.c', None)]),
    (b'src:tserver.c\n', [(b'main', None, b'/bin/t'), (None, b'progs/tserver.c', b'/bin/t')]),
    (b'src:*\n', [(b'main', b'', b'/bin/t')]),
    (b'std::vector*\n', [(b'std::vector<int>::push_back(int const&)', None, None)]),
    (b'ns::Conn::*\n', [(b'ns::Conn::take', None, None)]),
    (b'foo:bar\nFun:x\nlib2_x:y\nfun:abc\n', [(b'abc', None, None)]),
    (b'a:b\nc:d\ne:f\ng:h\ni:\n', [(b'a:b', None, None)]),
    (b'fun:a\xe2\x82b\n', [(b'a\xffb', None, None)]),
    (b'fun:a\xe2\x82b\n', [(b'a\xef\xbf\xbdb', None, None)]),
    (b'fun:a\xe2\x82b\n', [(b'a\xff\xffb', None, None)]),
    (b'fun:a?b\n', [(b'a\xe2\x82b', None, None)]),
    (b'fun:a\xe0\x80\x80b\n', [(b'a\xff\xff\xffb', None, None)]),
    (b'fun:a\xed\xa0\x80b\n', [(b'a\xff\xff\xffb', None, None)]),
    (b'fun:a\xf4\x90\x80\x80b\n', [(b'a\xff\xff\xff\xffb', None, None)]),
    (b'fun:a\xf0\x9f\x98b\n', [(b'a\xffb', None, None)]),
    (b'fun:a\xc1\xbfb\n', [(b'a\xff\xffb', None, None)]),
    (b'fun:a???b\n', [(b'a\xe0\x80\x80b', None, None)]),
    (b'fun:a??b\n', [(b'a\xf0\x9f\x98b', None, None)]),
    (b'fun:a\xf0\x80\x80\x80b\n', [(b'a\xff\xff\xff\xffb', None, None)]),
    (b'fun:[a-c]\n', [(b'c', None, None)]),
    (b'fun:[a-c]\n', [(b'a', None, None)]),
    (b'fun:[b-c]\n', [(b'a', None, None)]),
    (b'ab::c\ni:\n', [(b'i:', None, None)]),
    (b'fun:*\n', [(None, b'/a.c', b'/m')]),
    (b'fun:*\n', [(b'', None, None)]),
    (b'fun:*\n', [(b'x', None, None)]),
    (b'fun:#x\n', [(b'#x', None, None)]),
    (b'  # fun:abc\n', [(b'abc', None, None)]),
    (b'fun:a\\*\n', [(b'a\\zz', None, None)]),
    (b'fun:[a-c]x\n', [(b'bx', None, None)]),
    (b'fun:[!a-c]x\n', [(b'bx', None, None)]),
    (b'fun:[]]x\n', [(b']x', None, None)]),
    (b'fun:[!]]x\n', [(b'ax', None, None)]),
    (b'fun:[abc\n', [(b'[abc', None, None)]),
    (b'fun:[z-a]\n', [(b'q', None, None)]),
    (b'fun:[!z-a]\n', [(b'q', None, None)]),
    (b'fun:[a-]\n', [(b'-', None, None)]),
    (b'fun:[--0]\n', [(b'.', None, None)]),
    (b'fun:?\n', [('\u00e9'.encode(), None, None)]),
    (b'fun:??\n', [('\u00e9'.encode(), None, None)]),
    (b'fun:[\xc3\xa0-\xc3\xbf]\n', [('\u00e9'.encode(), None, None)]),
    (b'fun:*/x\n', [(b'a/b/x', None, None)]),
    (b'fun:ABC\n', [(b'abc', None, None)]),
    (b'\xef\xbb\xbffun:abc\n', [(b'abc', None, None)]),
    (b'fun:a*b*c\n', [(b'aXbYbZc', None, None)]),
    (b'fun:a*b*c\n', [(b'aXbYcZ', None, None)]),
]

PAT_ALPHABET = ['a', 'b', 'c', 'z', '-', '!', ']', '[', '*', '?', '/', '\\', ':', '^', '\u00e9', '\U0001f600']
SUBJECT_ALPHABET = [b'a', b'b', b'c', b'z', b'-', b'!', b']', b'[', b'/', b'\\', b':', b'^',
                    '\u00e9'.encode(), '\U0001f600'.encode(), b'\xff', b'\xe2\x82', b'\xef\xbf\xbd']
# "[z-a!]": Python's fnmatch drops the empty range z-a from its regular expression, which leaves
# the '!' first and negates the set; the library keeps '!' a member (src/watcher/suppress.c, set_has).
_EMPTY_FIRST_RANGE = re.compile(r'(?=\[([^!])-(.))')


def random_suppression_cases(rng, n):
    def derive(pat):
        """A subject built to match pat more often than chance, then sometimes changed."""
        out, i = [], 0
        while i < len(pat):
            ch = pat[i]
            if ch == '*':
                out += [rng.choice(SUBJECT_ALPHABET) for _ in range(rng.randint(0, 3))]
            elif ch == '?':
                out.append(rng.choice(SUBJECT_ALPHABET))
            elif ch == '[' and ']' in pat[i + 2:]:
                j = pat.index(']', i + 2)
                members = [m for m in pat[i + 1:j] if m not in '!-'] or ['a']
                out.append(rng.choice(members + ['-', '!']).encode())
                i = j
            else:
                out.append(ch.encode())
            i += 1
        if out and rng.random() < 0.3:
            k, op = rng.randrange(len(out)), rng.random()
            if op < 0.33:
                del out[k]
            elif op < 0.66:
                out.insert(k, rng.choice(SUBJECT_ALPHABET))
            else:
                out[k] = rng.choice(SUBJECT_ALPHABET)
        return b''.join(out)

    cases = []
    while len(cases) < n:
        pat = ''.join(rng.choice(PAT_ALPHABET) for _ in range(rng.randint(1, 8)))
        if any(ord(m.group(1)) > ord(m.group(2)) for m in _EMPTY_FIRST_RANGE.finditer(pat)):
            continue
        if rng.random() < 0.6:
            sub = derive(pat)
        else:
            sub = b''.join(rng.choice(SUBJECT_ALPHABET) for _ in range(rng.randint(0, 8)))
        kind = rng.choice(['fun:', 'mod:', 'src:', ''])
        if kind in ('mod:', 'src:') and rng.random() < 0.4:
            sub = b''.join(rng.choice(SUBJECT_ALPHABET) for _ in range(rng.randint(0, 4))) + b'/' + sub
        frame = {'mod:': (None, None, sub), 'src:': (None, sub, None)}.get(kind, (sub, None, None))
        cases.append(((kind + pat + '\n').encode(), [frame]))
    return cases


@test
def test_suppress_matcher_same_as_report_tool():
    """src/watcher/suppress.c on its own (tests/progs/tsuppress.c, under ASan+UBSan when available): the
    API's edge cases, then the same answers as closewait-report's Suppressions class for crafted
    files (line ends, blanks, comments, prefixes, base names, sets, UTF-8) and for 3000 random
    globs and names."""
    import random
    exe = build_unit('tsuppress')
    out, _ = run_unit([exe, 'self'])
    check(out.strip() == 'OK', 'tsuppress self: %s' % out.strip()[:500])
    cases = list(SUPP_CASES) + random_suppression_cases(random.Random(20240601), 3000)
    d = tempfile.mkdtemp(prefix='cwtest-')
    try:
        path = os.path.join(d, 'cases')
        with open(path, 'w') as f:
            for content, frames in cases:
                spec = ';'.join(','.join('-' if x is None else x.hex() for x in fr) for fr in frames)
                f.write('%s %s\n' % (content.hex(), spec))
        out, _ = run_unit([exe, 'cases', path], timeout=180)
        got = [tuple(int(x) for x in l.split()) for l in out.splitlines()]
        check(len(got) == len(cases), 'tsuppress answered %d cases of %d' % (len(got), len(cases)))
        scratch = os.path.join(d, 'scratch')
        bad = []
        for (content, frames), g in zip(cases, got):
            want = expected_suppression(content, frames, scratch)
            if g != want:
                bad.append('%r %r: (rc, patterns, warnings, match) %s, the report tool says %s' % (
                    content[:80], frames, g, want))
        check(not bad, '%d of %d cases differ: %s' % (len(bad), len(cases), ' || '.join(bad[:5])))
    finally:
        shutil.rmtree(d, ignore_errors=True)


@test
def test_suppress_file_bounds():
    """The reader's bounds (tests/progs/tsuppress.c): only a regular file (a FIFO nobody writes to
    does not block), the first 1 MiB (a line across the limit is not used), 4096 patterns, lines
    of 512 bytes after trimming, no NUL; each excess is one warning line."""
    exe = build_unit('tsuppress')
    mib = 1 << 20
    d = tempfile.mkdtemp(prefix='cwtest-')

    def pad(data, size):
        """data followed by comment lines up to exactly size bytes."""
        out = bytearray(data)
        while len(out) < size:
            n = min(100, size - len(out))
            out += (b'#' + b'x' * (n - 2) + b'\n') if n >= 2 else b'\n'
        return bytes(out)

    def load(path):
        out, err = run_unit([exe, 'load', path], timeout=20)
        m = re.match(r'rc=(-?\d+) count=(\d+) warnings=(\d+)$', out.strip())
        check(m, 'tsuppress load %s: %r' % (path, out))
        return tuple(int(x) for x in m.groups()), err

    try:
        fifo = os.path.join(d, 'fifo')
        os.mkfifo(fifo)
        link = os.path.join(d, 'link')
        os.symlink(os.path.join(d, 'f0'), link)
        files = [
            # name, content, (rc, count, warnings), words the warning must hold
            ('f0', b'', (0, 0, 0), None),
            ('f1', pad(b'fun:a\n', mib), (0, 1, 0), None),
            ('f2', pad(b'fun:early\n', mib - 5) + b'fun:straddle\nfun:late\n', (0, 1, 1), 'larger than 1 MiB'),
            ('f3', b''.join(b'fun:f%d\n' % i for i in range(5000)), (0, 4096, 1), 'more than 4096'),
            ('f4', b''.join(b'fun:f%d\n' % i for i in range(4096)) + b'# done\n\n', (0, 4096, 0), None),
            ('f5', b'fun:' + b'a' * 508 + b'\n', (0, 1, 0), None),
            ('f6', b'fun:' + b'a' * 509 + b'\n', (0, 0, 1), 'longer than 512'),
            ('f7', b'  \t fun:' + b'a' * 508 + b' \t \n', (0, 1, 0), None),
            ('f8', b'fun:a\x00b\nfun:c\n', (0, 1, 1), 'NUL'),
            ('f9', b'x:1\r\ny:2\r\n\r\nz:3\nw:4\nv:5\nfun:ok\n', (0, 1, 4),
             ['line 1: unknown prefix (fun:, mod: or src:) "x:"', 'line 2: unknown prefix', 'line 4: unknown prefix',
              ': 2 more unusable lines; ignored']),
        ]
        for name, content, _, _ in files:
            with open(os.path.join(d, name), 'wb') as f:
                f.write(content)
        checks = [(os.path.join(d, n), want, words) for n, _, want, words in files]
        checks += [(link, (0, 0, 0), None),
                   ('/dev/zero', (-1, 0, 1), 'not a regular file (a character device)'),
                   ('/dev/null', (-1, 0, 1), 'not a regular file (a character device)'),
                   (fifo, (-1, 0, 1), 'not a regular file (a FIFO)'),
                   (d, (-1, 0, 1), 'not a regular file (a directory)'),
                   (os.path.join(d, 'none'), (-1, 0, 1), 'cannot open (no such file)')]
        for path, want, words in checks:
            t0 = time.time()
            got, err = load(path)
            check(time.time() - t0 < 10, '%s: loading took %.1fs' % (path, time.time() - t0))
            check(got == want, '%s: (rc, patterns, warnings) %s, wanted %s; stderr %r' % (
                path, got, want, err[-300:]))
            lines = err.splitlines()
            check(len(lines) == want[2], '%s: %d stderr lines: %r' % (path, len(lines), err[-300:]))
            for l in lines:
                check(l.startswith('closewait: CLOSEWAIT_SUPPRESSIONS=%s: ' % path), 'warning %r' % l)
            for w in ([words] if isinstance(words, str) else words or []):
                check(w in err, '%s: the warning does not say %r: %r' % (path, w, err[-300:]))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- main

def sanitizer_notes():
    out = []
    for p in _live:
        r = sanitizer_report(p.stderr_text())
        if r:
            out.append('%s: %s' % (os.path.basename(p.argv[0]), r))
    return (' [sanitizer: ' + '; '.join(out) + ']') if out else ''


def deaths():
    """What the failed test's programs died of, if a signal killed them (a crash explains
    most of what a test then sees)."""
    out = []
    for p in _live:
        rc = p.proc.poll()
        if rc is not None and rc < 0 and not getattr(p, 'killed', False):
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
            out.append('%s pid %d died of %s' % (os.path.basename(p.argv[0]), p.pid, sig))
    return (' [' + '; '.join(out) + ']') if out else ''


def main():
    global LIB, VERBOSE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('-k', dest='k', help='run only tests whose name contains this')
    ap.add_argument('--lib', help='library to preload (default $CLOSEWAIT_LIB or ./libclosewait.so)')
    ap.add_argument('-v', action='store_true', help='print tracebacks of failures')
    ap.add_argument('--keep-failed', action='store_true',
                    help="keep a failed test's log, stdout and stderr in its temporary directory")
    args = ap.parse_args()
    VERBOSE = args.v
    LIB = harness.library(args.lib)

    selected = TESTS.select(args.k)

    try:
        harness.build_programs('progs')       # what make -C tests does
    except (TestFailure, OSError, subprocess.SubprocessError) as ex:
        print('FAIL build: tests/progs: %s' % str(ex).strip()[-800:])
        print('0 passed, %d failed' % (len(selected) + 1))
        return 1
    missing = harness.missing_library(LIB)
    if shutil.which('ss') is None:
        missing.append('ss (iproute2)')

    # CLOSEWAIT_TEST_SKIP="name,name:reason": tests a build cannot run, said as SKIP with the reason
    skip_spec = os.environ.get('CLOSEWAIT_TEST_SKIP', '')
    skip_names, _, skip_reason = skip_spec.partition(':')
    skip_set = {n.strip() for n in skip_names.split(',') if n.strip()}

    t_all = time.time()
    runner = CoreRunner(verbose=VERBOSE, always_skipped=False)
    runner.keep_failed = args.keep_failed
    for name, fn in selected:
        if name in skip_set:
            runner.skipped += 1
            print('SKIP %s: %s' % (name, skip_reason or 'CLOSEWAIT_TEST_SKIP'), flush=True)
            continue
        if missing:
            print('FAIL %s: not found: %s' % (name, ', '.join(missing)), flush=True)
            runner.failed += 1
            continue
        runner.run_one(name, fn)
    log('total %.1fs' % (time.time() - t_all))
    return runner.finish()


class CoreRunner(harness.Runner):
    """A sanitizer report in a program's stderr fails a test that passed; a failure says what
    the programs died of; each test's programs are cleaned up (--keep-failed keeps what did not
    pass)."""

    def after_pass(self, name):
        for p in _live:
            bad = sanitizer_report(p.stderr_text())
            if bad:
                raise TestFailure('sanitizer report in %s: %s' % (os.path.basename(p.argv[0]), bad))

    def failure_extra(self, name):
        return deaths() + sanitizer_notes()

    def cleanup(self, name, ok):
        while _live:
            _live.pop().cleanup(keep=self.keep_failed and self.outcome != 'PASS')

if __name__ == '__main__':
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
