#!/usr/bin/env python3
"""The owner's story in every report (issue 12): which thread last used a leaked socket and what
it is blocked in now, and, in programs built on libuv, libevent and libev, the callbacks the
program registered for the socket.  Real programs (tests/owner/progs) under the library, real
sockets on 127.0.0.1, the kernel's view (ss, /proc/PID/task) as ground truth.

    python3 tests/owner/run.py [-k SUBSTRING] [-v]
    python3 tests/owner/run.py --build      (what `make -C tests` runs: the programs only)

A program whose library is not installed (libuv1-dev, libevent-dev, libev-dev) is a SKIP with
the reason.  The closing line is 'N passed, N failed, N skipped'.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402
from harness import TestFailure, TestSkip, check, poll_until  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, 'progs')
BUILD = os.path.join(HERE, 'build')
HOST = harness.HOST
GRACE_MS = 300
WAIT = 15.0
SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:', 'WARNING: ThreadSanitizer',
                   'ERROR: ThreadSanitizer')

# program: (libraries, header that says the library's development files are there, package)
PROGRAMS = {
    'tproxy': (['-pthread'], None, None),
    'tnoloop': (['-ldl'], None, None),
    'tuv': (['-luv'], 'uv.h', 'libuv1-dev'),
    'tevent': (['-levent'], 'event2/bufferevent.h', 'libevent-dev'),
    'tlibev': (['-lev'], 'ev.h', 'libev-dev'),
    'tdlopen': (['-ldl'], None, None),
    'tplugin.so': (['-fPIC', '-shared', '-luv'], 'uv.h', 'libuv1-dev'),
}
FLAGS = ['-O1', '-g', '-Wall', '-Wextra', '-Werror', '-fno-omit-frame-pointer']


def has_header(header):
    r = subprocess.run(['cc', '-E', '-x', 'c', '-'], input='#include <%s>\n' % header, capture_output=True,
                       text=True, env=harness.clean_env())
    return r.returncode == 0


def program(name):
    """The built program, or TestSkip when its library is not installed."""
    libs, header, package = PROGRAMS[name]
    if header is not None and not has_header(header):
        raise TestSkip('%s is not installed (no <%s>): .ci/run installs it' % (package, header))
    os.makedirs(BUILD, exist_ok=True)
    src = os.path.join(SRC, (name[:-3] if name.endswith('.so') else name) + '.c')
    return harness.build_prog(src, os.path.join(BUILD, name), FLAGS, libs=libs)


def marker_line(name, mark):
    with open(os.path.join(SRC, name + '.c')) as f:
        for i, line in enumerate(f, 1):
            if '/* @%s */' % mark in line:
                return i
    raise TestFailure('no marker @%s in %s.c' % (mark, name))


class Prog:
    """A test program under the library; its stdout lines collected by a thread."""

    def __init__(self, argv, fmt='json'):
        self.dir = tempfile.mkdtemp(prefix='cwowner-')
        self.log = os.path.join(self.dir, 'closewait.log')
        env = harness.lib_env(self.log, harness.preload_value(), fmt, GRACE_MS)
        self.err = open(os.path.join(self.dir, 'stderr'), 'wb')
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env)
        self.pid = self.proc.pid
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))
                self.cond.notify_all()

    def wait_line(self, pattern, timeout=WAIT, start=0):
        """The first stdout line from the start-th on that matches the regex."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.match(line)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0:
                    raise TestFailure('no line /%s/ within %.0fs; stdout %s; stderr %s' % (
                        pattern, timeout, self.lines[-6:], self.stderr()[-400:]))
                self.cond.wait(min(left, 0.1))

    def text(self):
        try:
            with open(self.log, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def stderr(self):
        with open(os.path.join(self.dir, 'stderr'), 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def leak(self, peer, timeout=WAIT):
        def find():
            return [e for e in harness.parse_events(self.text()) if e.get('event') == 'leak' and e.get('peer') == peer]
        evs = poll_until(find, timeout, 0.05)
        check(evs, 'no leak event for peer %s within %.0fs; log %s' % (peer, timeout, self.text()[-600:]))
        return evs[0]

    def close(self):
        """Ends the program; a sanitizer's finding in its stderr fails the test."""
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(5)
        self.err.close()
        err = self.stderr()
        shutil.rmtree(self.dir, ignore_errors=True)
        for mark in SANITIZER_MARKS:
            if mark in err:
                i = err.index(mark)
                raise TestFailure('sanitizer report: %s' % ' | '.join(err[i:].splitlines()[:6]))


class SilentUpstream:
    """A loopback server that accepts and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


_OWNER_RX = re.compile(r'pid=(\d+),fd=(\d+)')


def kernel_sockets_of(pid):
    """The kernel's TCP sockets of pid: {fd: (state, local, peer)} (ss -tanp)."""
    out = subprocess.run(['ss', '-Htanp'], capture_output=True, text=True, timeout=10).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        for p, fd in _OWNER_RX.findall(line):
            if int(p) == pid:
                found[int(fd)] = (parts[0], parts[3], parts[4])
    return found


def wait_kernel(pid, fd, state):
    got = poll_until(lambda: kernel_sockets_of(pid).get(fd, (None,))[0] == state and kernel_sockets_of(pid)[fd], 5.0, 0.05)
    check(got, 'the kernel does not show fd %d of pid %d in %s (it shows %s)' % (fd, pid, state, kernel_sockets_of(pid).get(fd)))
    return got


def connect(port, data=b''):
    c = socket.create_connection((HOST, port), timeout=5)
    if data:
        c.sendall(data)
    return c


def connect_accepted(prog, port, data=b''):
    """A client the program has accepted: (client, its port, the server's fd).  Only the lines
    printed since it connected are searched: a port the kernel gives again after earlier clients
    closed would otherwise match an earlier client's ACCEPT."""
    start = len(prog.lines)
    c = connect(port, data)
    cport = c.getsockname()[1]
    return c, cport, int(prog.wait_line(r'ACCEPT (\d+) %d$' % cport, start=start).group(1))


def under_interceptor():
    """A sanitizer runtime preloaded before the library intercepts the calls first: the caller
    the library sees is the interceptor."""
    return bool(harness.preload_extra())


def relay_caller_rx():
    if under_interceptor():
        return r'\S+ \S+:\d+'
    return r'relay tproxy\.c:%d' % marker_line('tproxy', 'relay_read')


def program_frames(frames):
    """The frames below a sanitizer's interceptor (all of them, without one)."""
    frames = [f for f in frames or [] if isinstance(f, dict)]
    kept = [f for f in frames if not re.match(r'lib(a|t|ub|l|hwa)san\.so', os.path.basename(str(f.get('module'))))]
    return kept or [{}]


def function_of(frame):
    return (frame or {}).get('function') if isinstance(frame, dict) else None


# ---------------------------------------------------------------- the tests

registry = harness.Registry()
test = registry.test


def proxy_setup(fmt, mode=None):
    """tproxy with a silent upstream and one client that sent its request: (prog, upstream,
    client, accepted fd, worker tid, upstream fd or None)."""
    exe = program('tproxy')
    up = SilentUpstream()
    prog = Prog([exe, str(up.port)] + ([mode] if mode else []), fmt)
    try:
        port = int(prog.wait_line(r'PORT (\d+)$').group(1))
        client, cport, fd = connect_accepted(prog, port, b'GET / HTTP/1.0\r\n\r\n')
        tid = int(prog.wait_line(r'WORKER (\d+)$').group(1))
        ufd = None
        if mode == 'drop':
            prog.wait_line(r'DROPPED %d$' % fd)
        else:
            ufd = int(prog.wait_line(r'UPSTREAM (\d+)$').group(1))
    except Exception:
        prog.close()
        up.close()
        raise
    return prog, up, client, fd, tid, ufd


@test
def test_proxy_names_blocked_thread():
    """The client gives up; the thread serving it is stuck reading the silent upstream: the leak
    names that thread, read(), the upstream fd, its connection and opensock."""
    prog, up, client, fd, tid, ufd = proxy_setup('json')
    try:
        ustate, ulocal, upeer = wait_kernel(prog.pid, ufd, 'ESTAB')
        check(upeer == '%s:%d' % (HOST, up.port), 'upstream fd %d goes to %s, not the upstream' % (ufd, upeer))
        t_blocked = time.time()
        peer = '%s:%d' % (HOST, client.getsockname()[1])
        client.close()
        wait_kernel(prog.pid, fd, 'CLOSE-WAIT')
        ev = prog.leak(peer)
        t_report = ev.get('ts_ms', 0) / 1000.0  # when the watcher wrote it
        check(ev.get('fd') == fd and ev.get('reason') == 'peer_closed_unread', 'leak %s' % {k: ev.get(k) for k in ('fd', 'reason')})
        o = ev.get('owner')
        check(isinstance(o, dict), 'no owner in the leak event: %s' % sorted(ev))
        check(o.get('tid') == tid, 'owner tid %r, the worker is %d' % (o.get('tid'), tid))
        check(os.path.isdir('/proc/%d/task/%d' % (prog.pid, tid)), 'the worker thread is gone from /proc')
        check(o.get('alive') is True and o.get('name') == 'relay', 'owner %r' % {k: o.get(k) for k in ('alive', 'name')})
        check(o.get('blocked_in') == 'read', 'blocked_in %r, wanted read' % o.get('blocked_in'))
        check(o.get('blocked_fd') == ufd, 'blocked_fd %r, the upstream is fd %d' % (o.get('blocked_fd'), ufd))
        # blocked since before the upstream was seen established; the figure counts from the
        # watcher's tick before the call (at most one interval early), taken when the look began
        ms = o.get('blocked_ms')
        low = (t_report - t_blocked) * 1000 - 500
        check(isinstance(ms, int) and low <= ms <= (t_report - t_blocked) * 1000 + 5000,
              'blocked_ms %r, the read began %.0f ms before the report' % (ms, (t_report - t_blocked) * 1000))
        caller = o.get('blocked_caller')
        if not (under_interceptor() and re.match(r'lib[at]san\.so', os.path.basename(str((caller or {}).get('module'))))):
            check(function_of(caller) == 'relay' and caller.get('line') == marker_line('tproxy', 'relay_read'),
                  'blocked_caller %r, wanted relay at line %d' % (caller, marker_line('tproxy', 'relay_read')))
        s = o.get('blocked_fd_socket')
        check(isinstance(s, dict), 'no blocked_fd_socket: %s' % o)
        check((s.get('local'), s.get('peer')) == (ulocal, upeer), 'upstream %s -> %s, the kernel says %s -> %s' % (
            s.get('local'), s.get('peer'), ulocal, upeer))
        check(s.get('state') == 'ESTABLISHED' and s.get('opened_by') == 'socket' and s.get('role') == 'client',
              'upstream socket %r' % {k: s.get(k) for k in ('state', 'opened_by', 'role')})
        top = program_frames(s.get('open_stack'))[0]
        check(function_of(top) == 'opensock' and top.get('line') == marker_line('tproxy', 'opensock'),
              'the upstream was opened at %r, wanted opensock line %d' % (top, marker_line('tproxy', 'opensock')))
        check(kernel_sockets_of(prog.pid).get(ufd, ('',))[0] == 'ESTAB', 'the upstream is not established any more')
    finally:
        prog.close()
        up.close()


@test
def test_proxy_text_report():
    """The same, as a person reads it: two lines under the leak's."""
    prog, up, client, fd, tid, ufd = proxy_setup('text')
    try:
        wait_kernel(prog.pid, ufd, 'ESTAB')
        client.close()
        wait_kernel(prog.pid, fd, 'CLOSE-WAIT')
        rx = re.compile(r'==%d==  its owner, thread %d \(relay\), has been blocked \d+\.\d s in read\(\) on fd %d '
                        r'called from %s\n==%d==  fd %d: client %s:\d+ -> %s:%d \(ESTABLISHED\), '
                        r'opened by socket at opensock tproxy\.c:%d\n' % (
                            prog.pid, tid, ufd, relay_caller_rx(), prog.pid, ufd, re.escape(HOST),
                            re.escape(HOST), up.port, marker_line('tproxy', 'opensock')))
        got = poll_until(lambda: rx.search(prog.text()), WAIT, 0.05)
        check(got, 'the text report lacks the owner lines: %s' % prog.text()[-1500:])
        check('==%d==closewait: fd %d held in CLOSE_WAIT' % (prog.pid, fd) in prog.text(), 'no leak line for fd %d' % fd)
    finally:
        prog.close()
        up.close()


@test
def test_proxy_owner_gone():
    """The thread that read the request ended without closing the client: its owner has exited."""
    prog, up, client, fd, tid, _ = proxy_setup('json', 'drop')
    try:
        gone = poll_until(lambda: not os.path.exists('/proc/%d/task/%d' % (prog.pid, tid)), 5.0, 0.05)
        check(gone, 'the worker thread %d did not end' % tid)
        peer = '%s:%d' % (HOST, client.getsockname()[1])
        client.close()
        wait_kernel(prog.pid, fd, 'CLOSE-WAIT')
        o = prog.leak(peer).get('owner')
        check(isinstance(o, dict) and o.get('tid') == tid and o.get('alive') is False,
              'owner %r, wanted thread %d, not alive' % (o, tid))
        check('blocked_in' not in o, 'a thread that is gone is blocked in nothing: %r' % o)
    finally:
        prog.close()
        up.close()


@test
def test_thread_records_given_back():
    """600 threads come and go (more than the 512 thread records of a process); the next one,
    stuck on the upstream, still has a record: each thread's is given back at its exit."""
    exe = program('tproxy')
    up = SilentUpstream()
    prog = Prog([exe, str(up.port)], 'json')
    try:
        port = int(prog.wait_line(r'PORT (\d+)$').group(1))
        for i in range(600):
            c = connect(port, b'BYE')
            c.settimeout(10)
            check(c.recv(16) == b'', 'the thread serving BYE client %d did not close' % i)
            c.close()
        done = poll_until(lambda: sum(1 for l in prog.lines if l.startswith('BYE ')) >= 600, WAIT, 0.05)
        check(done, 'only %d BYE threads ran' % sum(1 for l in prog.lines if l.startswith('BYE ')))
        alive = poll_until(lambda: len(os.listdir('/proc/%d/task' % prog.pid)) <= 3, 10.0, 0.05)
        check(alive, 'the BYE threads did not all end: %d tasks' % len(os.listdir('/proc/%d/task' % prog.pid)))
        client, cport, fd = connect_accepted(prog, port, b'GET / HTTP/1.0\r\n\r\n')
        ufd = int(prog.wait_line(r'UPSTREAM (\d+)$').group(1))
        wait_kernel(prog.pid, ufd, 'ESTAB')
        client.close()
        wait_kernel(prog.pid, fd, 'CLOSE-WAIT')
        o = prog.leak('%s:%d' % (HOST, cport)).get('owner') or {}
        check(o.get('blocked_in') == 'read' and o.get('blocked_fd') == ufd,
              'after 600 threads came and went the stuck one has no record: owner %r' % o)
    finally:
        prog.close()
        up.close()


@test
def test_report_tool_groups_by_owner():
    """closewait-report: two clients of the stuck proxy are one finding whose owners say, once
    with a count of 2, where the threads wait and where that socket was opened."""
    exe = program('tproxy')
    up = SilentUpstream()
    prog = Prog([exe, str(up.port)], 'json')
    try:
        port = int(prog.wait_line(r'PORT (\d+)$').group(1))
        peers = []
        for _ in range(2):
            c, cport, _ = connect_accepted(prog, port, b'GET / HTTP/1.0\r\n\r\n')
            ufd = int(poll_until(lambda: len([l for l in prog.lines if l.startswith('UPSTREAM ')]) > len(peers), WAIT, 0.05)
                      and [l for l in prog.lines if l.startswith('UPSTREAM ')][len(peers)].split()[1])
            wait_kernel(prog.pid, ufd, 'ESTAB')
            c.close()
            peers.append('%s:%d' % (HOST, cport))
        for p in peers:
            prog.leak(p)
        r = subprocess.run([sys.executable, os.path.join(harness.ROOT, 'tools', 'closewait-report'), '--format', 'json',
                            prog.log], capture_output=True, text=True, timeout=60, env=harness.clean_env())
        check(r.returncode in (0, 1), 'closewait-report failed (%d): %s' % (r.returncode, r.stderr[-400:]))
        import json
        findings = json.loads(r.stdout).get('findings', [])
        check(len(findings) == 1 and findings[0].get('count_ever') == 2, 'findings %r' % [
            {k: f.get(k) for k in ('stack_id', 'count_ever')} for f in findings])
        owners = findings[0].get('owners')
        want = 'blocked in read() called from relay (tproxy.c:%d) on a client socket opened at opensock (tproxy.c:%d)' % (
            marker_line('tproxy', 'relay_read'), marker_line('tproxy', 'opensock'))
        if under_interceptor():     # the caller is the sanitizer's interceptor
            key = list(owners or {})
            want = key[0] if len(key) == 1 and key[0].endswith(want.split(' on a ', 1)[1]) else want
        check(owners == {want: 2}, 'owners %r, wanted {%r: 2}' % (owners, want))
        check(function_of(program_frames(findings[0].get('blocked_fd_open_stack'))[0]) == 'opensock',
              'blocked_fd_open_stack %r' % findings[0].get('blocked_fd_open_stack'))
        md = subprocess.run([sys.executable, os.path.join(harness.ROOT, 'tools', 'closewait-report'), prog.log],
                            capture_output=True, text=True, timeout=60, env=harness.clean_env()).stdout
        check('- owner: `%s` x2' % want in md, 'the Markdown report lacks the owner line: %s' % md[-1200:])
    finally:
        prog.close()
        up.close()


def loop_leak(name, fmt='json'):
    """A server of an event-loop library: one client sends, then closes; the server reads the EOF
    and keeps the socket.  Returns (prog, fd, peer, leak event or None for text)."""
    exe = program(name)
    prog = Prog([exe], fmt)
    try:
        port = int(prog.wait_line(r'PORT (\d+)$').group(1))
        client, cport, fd = connect_accepted(prog, port, b'hello\n')
        wait_kernel(prog.pid, fd, 'ESTAB')
        client.close()
        wait_kernel(prog.pid, fd, 'CLOSE-WAIT')
        peer = '%s:%d' % (HOST, cport)
        return prog, fd, peer, (prog.leak(peer) if fmt == 'json' else None)
    except Exception:
        prog.close()
        raise


def check_callbacks(ev, name, registered_by, want):
    cb = ev.get('callbacks')
    check(isinstance(cb, dict), 'no callbacks in the leak event: %s' % sorted(ev))
    check(cb.get('registered_by') == registered_by, 'registered_by %r, wanted %s' % (cb.get('registered_by'), registered_by))
    for role, fn in want.items():
        f = cb.get(role)
        check(function_of(f) == fn, '%s callback %r, wanted %s' % (role, f, fn))
        check(str(f.get('file', '')).endswith(name + '.c') and isinstance(f.get('line'), int),
              '%s callback has no file:line in %s.c: %r' % (role, name, f))
    stack = harness.functions(cb.get('registration_stack'))
    return stack


@test
def test_libuv_forgot_uv_close():
    """libuv: on_read returns at EOF without uv_close(); both stacks are libuv's, the callbacks
    are the program's."""
    prog, fd, peer, ev = loop_leak('tuv')
    try:
        check(ev.get('fd') == fd and ev.get('reason') == 'eof_not_closed', 'leak %s' % {k: ev.get(k) for k in ('fd', 'reason')})
        stack = check_callbacks(ev, 'tuv', 'uv_read_start', {'read': 'on_read', 'connection': 'on_connection'})
        r = subprocess.run([sys.executable, os.path.join(harness.ROOT, 'tools', 'closewait-report'), '--format', 'text',
                            prog.log], capture_output=True, text=True, timeout=60, env=harness.clean_env()).stdout
        check(re.search(r'event-loop callbacks: read on_read \(tuv\.c:\d+\), connection on_connection \(tuv\.c:\d+\) x1', r)
              and re.search(r'Callbacks registered at:\n    #0 on_connection at ', r),
              'closewait-report does not show the callbacks: %s' % r[-1500:])
        check(stack[:1] == ['on_connection'], 'registration stack %s does not start in on_connection' % stack)
        opened = harness.functions(ev.get('open_stack'))
        check('on_read' not in opened and 'on_connection' not in opened,
              'the open stack names the program\'s callbacks itself (%s): the test shows nothing new' % opened)
        o = ev.get('owner') or {}
        check(o.get('tid') == prog.pid and o.get('alive') is True, 'owner %r, wanted the loop thread %d' % (o, prog.pid))
    finally:
        prog.close()


@test
def test_libuv_text_report():
    prog, fd, peer, _ = loop_leak('tuv', 'text')
    try:
        rx = re.compile(r'==%d==  event-loop callbacks: read on_read tuv\.c:\d+, connection on_connection tuv\.c:\d+; '
                        r'registered by uv_read_start at:\n    #0 0x[0-9a-f]+ in on_connection ' % prog.pid)
        check(poll_until(lambda: rx.search(prog.text()), WAIT, 0.05), 'no callbacks line: %s' % prog.text()[-1500:])
    finally:
        prog.close()


@test
def test_libevent_forgot_bufferevent_free():
    """libevent: event_cb returns at EOF without bufferevent_free()."""
    prog, fd, peer, ev = loop_leak('tevent')
    try:
        check(ev.get('fd') == fd and ev.get('reason') == 'eof_not_closed', 'leak %s' % {k: ev.get(k) for k in ('fd', 'reason')})
        stack = check_callbacks(ev, 'tevent', 'bufferevent_setcb',
                                {'read': 'read_cb', 'event': 'event_cb', 'connection': 'accept_cb'})
        check(stack[:1] == ['accept_cb'], 'registration stack %s does not start in accept_cb' % stack)
    finally:
        prog.close()


@test
def test_libev_forgot_close():
    """libev: read_cb stops its watcher at EOF and forgets close()."""
    prog, fd, peer, ev = loop_leak('tlibev')
    try:
        check(ev.get('fd') == fd and ev.get('reason') == 'eof_not_closed', 'leak %s' % {k: ev.get(k) for k in ('fd', 'reason')})
        stack = check_callbacks(ev, 'tlibev', 'ev_io_start', {'event': 'read_cb', 'connection': 'accept_cb'})
        check(stack[:1] == ['accept_cb'], 'registration stack %s does not start in accept_cb' % stack)
    finally:
        prog.close()


@test
def test_loop_entry_points_without_the_libraries():
    """A program without the libraries that calls the library's event-loop entry points by name
    gets the libraries' error values, and runs on."""
    exe = program('tnoloop')
    plain = subprocess.run([exe], capture_output=True, text=True, timeout=10, env=harness.clean_env())
    check(all(l.endswith(' absent') for l in plain.stdout.splitlines()) and plain.returncode == 0,
          'without the library the names should be absent: %r' % plain.stdout)
    env = harness.clean_env()
    env['LD_PRELOAD'] = harness.preload_value()
    r = subprocess.run([exe], capture_output=True, text=True, timeout=10, env=env)
    want = ['uv_listen -38', 'uv_accept -38', 'uv_read_start -38', 'event_new null', 'bufferevent_setcb returned',
            'ev_io_start returned']
    check(r.returncode == 0 and r.stdout.splitlines() == want, 'under the library: rc %d, %r (stderr %r)' % (
        r.returncode, r.stdout, r.stderr[-300:]))


@test
def test_libuv_in_a_plugin_loaded_rtld_local():
    """A plugin linked with libuv, loaded with RTLD_LOCAL: libuv is outside the global scope, and
    the plugin's uv_listen (which reaches the library first) still gets the real one."""
    plugin, exe = program('tplugin.so'), program('tdlopen')
    plain = subprocess.run([exe, plugin], capture_output=True, text=True, timeout=20, env=harness.clean_env())
    check(plain.stdout.strip() == 'plugin_listen 0', 'without the library: %r %r' % (plain.stdout, plain.stderr[-200:]))
    env = harness.clean_env()
    env['LD_PRELOAD'] = harness.preload_value()
    r = subprocess.run([exe, plugin], capture_output=True, text=True, timeout=20, env=env)
    check(r.returncode == 0 and r.stdout.strip() == 'plugin_listen 0',
          'under the library the plugin\'s uv_listen returned %r (rc %d, stderr %r)' % (r.stdout, r.returncode, r.stderr[-300:]))


def main():
    if sys.argv[1:] == ['--build']:
        for name in PROGRAMS:
            try:
                program(name)
            except TestSkip as ex:
                print('owner: %s not built: %s' % (name, ex))
        return 0
    args = harness.suite_arguments(__doc__)
    selected = registry.select(args.k)
    missing = harness.missing_library()
    if missing:
        return harness.fail_all(selected, 'library not built: %s' % ' '.join(missing))
    return harness.Runner(verbose=args.v).run(selected)


if __name__ == '__main__':
    sys.exit(main())
