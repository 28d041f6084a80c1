#!/usr/bin/env python3
"""The eBPF front-end (closewait-ebpf: closewait --attach PID, closewait --ebpf) against the real
kernel: Go programs and a static C server, which the libc interposer cannot see, and a server
followed after it was started.  The kernel's view (ss) is the ground truth; 127.0.0.1 only.
Every test says SKIP with the reason where eBPF (root or CAP_BPF+CAP_PERFMON, tracefs), Go or a
static libc is not there.

    python3 tests/ebpf/run.py [-k FILTER] [-v]
"""
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402
from harness import TestFailure, TestSkip, check  # noqa: E402

ROOT = harness.ROOT
HERE = os.path.dirname(os.path.abspath(__file__))
PROGS = os.path.join(HERE, 'progs')
EBPF = os.environ.get('CLOSEWAIT_EBPF') or os.path.join(ROOT, 'closewait-ebpf')
WRAPPER = os.path.join(ROOT, 'tools', 'closewait')
GRACE_MS = 500
tests = harness.Registry()
WORK = tempfile.mkdtemp(prefix='cw-ebpf-')
_ready = {}


def source_line(name, marker):
    """The line of `marker` in tests/ebpf/progs/name."""
    with open(os.path.join(PROGS, name)) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    raise TestFailure('no %r in %s' % (marker, name))


def need_ebpf():
    if 'ebpf' not in _ready:
        if not os.path.exists(EBPF):
            _ready['ebpf'] = 'closewait-ebpf is not built (make says which of clang, bpftool, libbpf-dev it lacks)'
        else:
            r = subprocess.run([EBPF, '--check'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            _ready['ebpf'] = None if r.returncode == 0 else (r.stderr.decode('utf-8', 'replace').strip() or 'exit %d' % r.returncode)
    if _ready['ebpf']:
        raise TestSkip('eBPF not available: ' + _ready['ebpf'])


def go_build(name, stripped=False):
    """tests/ebpf/progs/name.go built here (standard library only, no network, a fresh GOCACHE);
    `stripped`: without symbols nor DWARF (-ldflags=-s -w), as container images ship them."""
    key = 'go:%s:%s' % (name, stripped)
    if key not in _ready:
        go = shutil.which('go')
        if go is None:
            _ready[key] = (None, 'no Go toolchain (apt-get install golang-go)')
        else:
            env = harness.clean_env()
            env.update({'GOCACHE': os.path.join(WORK, 'gocache'), 'GOPATH': os.path.join(WORK, 'gopath'),
                        'GOFLAGS': '-mod=mod', 'GOPROXY': 'off', 'GO111MODULE': 'on', 'CGO_ENABLED': '0',
                        'HOME': WORK})
            out = os.path.join(WORK, name + ('-stripped' if stripped else ''))
            flags = ['-ldflags=-s -w'] if stripped else []
            r = subprocess.run([go, 'build'] + flags + ['-o', out, os.path.join(PROGS, name + '.go')], cwd=WORK, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
            _ready[key] = (out, None) if r.returncode == 0 else (None, 'go build failed: ' + harness.one_line_text(r.stdout.decode()[-300:]))
    path, why = _ready[key]
    if path is None:
        raise TestSkip(why)
    return path


def c_static_build():
    """The leaky C server, static and without frame pointers (as distribution packages are)."""
    if 'c' not in _ready:
        out = os.path.join(WORK, 'leaky_c_server')
        r = subprocess.run(['gcc', '-O2', '-g', '-static', '-fomit-frame-pointer', '-o', out,
                            os.path.join(PROGS, 'leaky_c_server.c')], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=120)
        _ready['c'] = (out, None) if r.returncode == 0 else (None, 'no static libc to link with: ' + harness.one_line_text(r.stdout.decode()[-200:]))
    path, why = _ready['c']
    if path is None:
        raise TestSkip(why)
    return path


class Traced:
    """A program (under closewait-ebpf, or alone), its stdout lines collected, stdin held open."""

    def __init__(self, argv, env=None, stderr_path=None):
        self.err = open(stderr_path, 'wb') if stderr_path else subprocess.DEVNULL
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, env=env,
                                  cwd=WORK)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for raw in self.p.stdout:
            self.lines.append(raw.decode('utf-8', 'replace').strip())

    def wait_line(self, prefix, timeout=20, count=1):
        got = harness.poll_until(lambda: len([l for l in self.lines if l.startswith(prefix)]) >= count, timeout)
        check(got, 'no %d line(s) %r from %s within %ds (got %s)' % (count, prefix, self.p.args[0], timeout, self.lines[-5:]))
        return [l for l in self.lines if l.startswith(prefix)]

    def port(self):
        return int(self.wait_line('PORT ')[0].split()[1])

    def finish(self, timeout=20):
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise TestFailure('%s did not end within %ds of its stdin closing' % (self.p.args[0], timeout))
        return self.p.returncode

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def ebpf_env(log, extra=None):
    e = harness.clean_env()
    e.update({'CLOSEWAIT_LOG': log, 'CLOSEWAIT_FORMAT': 'json', 'CLOSEWAIT_GRACE_MS': str(GRACE_MS),
              'CLOSEWAIT_EBPF_DEBUG': '1'})
    e.update(extra or {})
    return e


def events(log):
    return harness.read_events(log) if os.path.exists(log) else []


def wait_leaks(log, n, timeout=15, **match):
    def ok():
        ls = [l for l in harness.leaks(events(log)) if all(l.get(k) == v for k, v in match.items())]
        return ls if len(ls) >= n else None
    got = harness.poll_until(ok, timeout, interval=0.1)
    check(got, 'expected %d leak event(s) %s in %s within %ds; events: %s'
          % (n, match or '', log, timeout, [(e.get('event'), e.get('fd'), e.get('reason')) for e in events(log)]))
    return got


def frame_at(frames, function, file_suffix, line):
    """Some frame names `function` at file_suffix:line."""
    return any(f.get('function') == function and (f.get('file') or '').endswith(file_suffix) and f.get('line') == line
               for f in frames or [])


def describe(frames):
    return ['%s %s:%s' % (f.get('function'), os.path.basename(f.get('file') or '?'), f.get('line')) for f in frames or []][:40]


def ss_held_by(port, pid):
    """ss's CLOSE-WAIT sockets on local port `port` held by pid, as (local, peer) pairs."""
    return [(s['local'], s['peer']) for s in harness.close_wait_sockets()
            if s['local'].endswith(':%d' % port) and pid in s['pids']]


def ss_client_held_by(port, pid):
    """CLOSE-WAIT sockets whose peer port is `port` held by pid."""
    return [(s['local'], s['peer']) for s in harness.close_wait_sockets()
            if s['peer'].endswith(':%d' % port) and pid in s['pids']]


def client(port, first, hold=0.05):
    """Connect, send `first` (and a little more), half-close, wait, close: the server reads EOF."""
    s = socket.create_connection((harness.HOST, port), timeout=5)
    s.sendall(first.encode() * 4)
    s.shutdown(socket.SHUT_WR)
    time.sleep(hold)
    s.close()


def traced_pid(tr):
    """The program closewait-ebpf started: its only child."""
    def child():
        try:
            with open('/proc/%d/task/%d/children' % (tr.p.pid, tr.p.pid)) as f:
                kids = f.read().split()
            return int(kids[0]) if kids else None
        except OSError:
            return None
    pid = harness.poll_until(child, 10)
    check(pid, 'closewait-ebpf started no program')
    return pid


def debug_counts(path):
    with open(path, 'rb') as f:
        text = f.read().decode('utf-8', 'replace')
    m = re.search(r'closewait-ebpf: births (\d+), listens (\d+), eofs (\d+), closes (\d+), dups (\d+), fins (\d+), lost (\d+)', text)
    check(m, 'no counters line from closewait-ebpf in its stderr: %r' % text[-300:])
    keys = ('births', 'listens', 'eofs', 'closes', 'dups', 'fins', 'lost')
    return dict(zip(keys, (int(x) for x in m.groups())))


# ---------------------------------------------------------------------------------- tests

@tests.test
def test_go_http_client_never_closes_body():
    need_ebpf()
    server_bin, client_bin = go_build('go_http_server'), go_build('go_http_client_leak')
    server = Traced([server_bin, '300'])  # a clean server, alone: closes idle connections
    try:
        port = server.port()
        log, err = os.path.join(WORK, 'http_client.jsonl'), os.path.join(WORK, 'http_client.err')
        tr = Traced([WRAPPER, '--ebpf', '--', client_bin, 'http://127.0.0.1:%d/' % port, '3'], env=ebpf_env(log),
                    stderr_path=err)
        try:
            tr.wait_line('DONE')
            pid = traced_pid(tr)
            held = harness.poll_until(lambda: len(ss_client_held_by(port, pid)) >= 3 and ss_client_held_by(port, pid), 10)
            check(held, 'ss shows %s held in CLOSE_WAIT by the client, not 3' % ss_client_held_by(port, pid))
            found = wait_leaks(log, 3, reason='peer_closed_unread')
            line = source_line('go_http_client_leak.go', 'http.Get(url)')
            for lk in found:
                check(lk['pid'] == pid, 'leak of pid %s, the client is %d' % (lk['pid'], pid))
                check(frame_at(lk['open_stack'], 'main.fetchStatus', 'go_http_client_leak.go', line),
                      'no main.fetchStatus go_http_client_leak.go:%d in the open stack: %s' % (line, describe(lk['open_stack'])))
            check({(lk['local'], lk['peer']) for lk in found} == set(held),
                  'reported %s, ss says %s' % ({(lk['local'], lk['peer']) for lk in found}, set(held)))
            check(tr.finish() == 0, 'the client did not exit 0 under closewait-ebpf')
            summ = harness.of_kind(events(log), 'summary')
            check(summ and summ[-1]['why'] == 'exit' and summ[-1]['leaks_open'] == 3,
                  'exit summary: %s' % summ)
        finally:
            tr.kill()
    finally:
        server.finish()
    return 'main.fetchStatus go_http_client_leak.go:%d' % line


@tests.test
def test_go_tcp_server_forgets_close():
    need_ebpf()
    prog = go_build('go_tcp_forget')
    log, err = os.path.join(WORK, 'tcp_forget.jsonl'), os.path.join(WORK, 'tcp_forget.err')
    tr = Traced([EBPF, '--', prog], env=ebpf_env(log), stderr_path=err)
    try:
        port = tr.port()
        pid = traced_pid(tr)
        for _ in range(2):
            client(port, 'x')
        tr.wait_line('SERVED', count=2)
        held = harness.poll_until(lambda: len(ss_held_by(port, pid)) >= 2 and ss_held_by(port, pid), 10)
        check(held, 'ss shows %s in CLOSE_WAIT at the server, not 2' % ss_held_by(port, pid))
        found = wait_leaks(log, 2, reason='eof_not_closed')
        accept_line = source_line('go_tcp_forget.go', 'l.Accept()')
        drain_line = source_line('go_tcp_forget.go', 'io.Copy(io.Discard, c)')
        for lk in found:
            check(frame_at(lk['open_stack'], 'main.acceptLoop', 'go_tcp_forget.go', accept_line),
                  'no main.acceptLoop go_tcp_forget.go:%d in the open stack: %s' % (accept_line, describe(lk['open_stack'])))
            check(frame_at(lk.get('eof_stack'), 'main.drain', 'go_tcp_forget.go', drain_line),
                  'no main.drain go_tcp_forget.go:%d in the EOF stack: %s' % (drain_line, describe(lk.get('eof_stack'))))
        check({(lk['local'], lk['peer']) for lk in found} == set(held), 'reported %s, ss says %s'
              % ({(lk['local'], lk['peer']) for lk in found}, set(held)))
        tr.finish()
    finally:
        tr.kill()
    return 'main.acceptLoop :%d, EOF in main.drain :%d' % (accept_line, drain_line)


@tests.test
def test_go_stripped_binary_named_from_gopclntab():
    need_ebpf()
    prog = go_build('go_tcp_forget', stripped=True)
    r = subprocess.run(['readelf', '-S', '-W', prog], stdout=subprocess.PIPE, text=True, timeout=30)
    check('.debug_info' not in r.stdout and '.symtab' not in r.stdout and '.gopclntab' in r.stdout,
          'the stripped build still has symbols or DWARF, or no .gopclntab')
    log, err = os.path.join(WORK, 'stripped.jsonl'), os.path.join(WORK, 'stripped.err')
    tr = Traced([EBPF, '--', prog], env=ebpf_env(log), stderr_path=err)
    try:
        port = tr.port()
        pid = traced_pid(tr)
        client(port, 'x')
        tr.wait_line('SERVED')
        check(len(ss_held_by(port, pid)) == 1 or harness.poll_until(lambda: len(ss_held_by(port, pid)) == 1, 5),
              'ss: %s' % ss_held_by(port, pid))
        lk = wait_leaks(log, 1, reason='eof_not_closed')[0]
        accept_line = source_line('go_tcp_forget.go', 'l.Accept()')
        check(frame_at(lk['open_stack'], 'main.acceptLoop', 'go_tcp_forget.go', accept_line),
              'no main.acceptLoop go_tcp_forget.go:%d from .gopclntab: %s' % (accept_line, describe(lk['open_stack'])))
        tr.finish()
    finally:
        tr.kill()
    return 'main.acceptLoop :%d without symbols or DWARF' % accept_line


@tests.test
def test_go_clean_server_under_load_no_report():
    need_ebpf()
    prog = go_build('go_http_server')
    log, err = os.path.join(WORK, 'clean.jsonl'), os.path.join(WORK, 'clean.err')
    tr = Traced([EBPF, '--', prog, '200'], env=ebpf_env(log), stderr_path=err)
    conns = 0
    try:
        port = tr.port()
        pid = traced_pid(tr)
        import http.client

        def worker(n, keep):
            nonlocal conns
            c = None
            for i in range(n):
                if c is None:
                    c = http.client.HTTPConnection(harness.HOST, port, timeout=5)
                    conns += 1
                c.request('GET', '/')
                check(c.getresponse().read() == b'hello\n', 'bad reply')
                if not keep:
                    c.close()
                    c = None
            if c is not None:
                c.close()
        threads = [threading.Thread(target=worker, args=(100, i % 2 == 0)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        # Idle keep-alive connections the server closes itself, and every client's FIN: past the grace.
        time.sleep((GRACE_MS + 1500) / 1000.0)
        check(ss_held_by(port, pid) == [], 'ss shows CLOSE-WAIT at the server: %s' % ss_held_by(port, pid))
        leaks = harness.leaks(events(log))
        check(leaks == [], 'reports for a clean server: %s' % [(l['fd'], l['reason']) for l in leaks])
        tr.finish()
        counts = debug_counts(err)
        check(counts['births'] >= conns + 1, 'the tracer saw %d births for %d connections and a listener' % (counts['births'], conns))
        check(counts['lost'] == 0, 'records lost: %d' % counts['lost'])
    finally:
        tr.kill()
    return '%d connections, %d births traced, no report' % (conns, counts['births'])


@tests.test
def test_static_c_server_leaks():
    need_ebpf()
    prog = c_static_build()
    log, err = os.path.join(WORK, 'static_c.jsonl'), os.path.join(WORK, 'static_c.err')
    tr = Traced([EBPF, '--', prog], env=ebpf_env(log), stderr_path=err)
    try:
        port = tr.port()
        pid = traced_pid(tr)
        client(port, 'L')
        client(port, 'L')
        client(port, 'S')
        tr.wait_line('KEPT', count=2)
        tr.wait_line('CLOSED')
        held = harness.poll_until(lambda: len(ss_held_by(port, pid)) >= 2 and ss_held_by(port, pid), 10)
        check(held and len(held) == 2, 'ss shows %s in CLOSE_WAIT, not 2' % ss_held_by(port, pid))
        found = wait_leaks(log, 2, reason='eof_not_closed')
        time.sleep(GRACE_MS / 1000.0 + 0.5)
        check(len(harness.leaks(events(log))) == 2, 'the served connection was reported too')
        take = source_line('leaky_c_server.c', 'accept(lfd, NULL, NULL)')
        keep = source_line('leaky_c_server.c', 'while (read(fd, buf, sizeof buf) > 0)')
        for lk in found:
            check(frame_at(lk['open_stack'], 'take_connection', 'leaky_c_server.c', take),
                  'no take_connection leaky_c_server.c:%d in the open stack (a DWARF unwind): %s' % (take, describe(lk['open_stack'])))
            check(frame_at(lk.get('eof_stack'), 'keep_forever', 'leaky_c_server.c', keep),
                  'no keep_forever leaky_c_server.c:%d in the EOF stack: %s' % (keep, describe(lk.get('eof_stack'))))
        check({(lk['local'], lk['peer']) for lk in found} == set(held), 'reported %s, ss says %s'
              % ({(lk['local'], lk['peer']) for lk in found}, set(held)))
        tr.finish()
    finally:
        tr.kill()
    return 'take_connection leaky_c_server.c:%d (no frame pointers)' % take


@tests.test
def test_attach_running_c_server():
    need_ebpf()
    prog = c_static_build()
    server = Traced([prog])  # started without the library or eBPF
    try:
        port = server.port()
        client(port, 'L')
        client(port, 'L')
        server.wait_line('KEPT', count=2)
        before = harness.poll_until(lambda: len(ss_held_by(port, server.p.pid)) >= 2 and ss_held_by(port, server.p.pid), 10)
        check(before, 'ss shows %s in CLOSE_WAIT before the attach' % ss_held_by(port, server.p.pid))
        # One more, born before the attach and still established: its peer closes after it.
        open_before = socket.create_connection((harness.HOST, port), timeout=5)
        open_before.sendall(b'LLLL')
        log, err = os.path.join(WORK, 'attach.jsonl'), os.path.join(WORK, 'attach.err')
        t0 = time.time()
        tr = Traced([WRAPPER, '--attach', str(server.p.pid)], env=ebpf_env(log), stderr_path=err)
        try:
            listed = wait_leaks(log, 2, timeout=10, before_attach=True)
            listed_in = time.time() - t0
            check({(lk['local'], lk['peer']) for lk in listed} == set(before), 'listed %s, ss says %s'
                  % ({(lk['local'], lk['peer']) for lk in listed}, set(before)))
            for lk in listed:
                check(lk['state'] == 'CLOSE_WAIT' and lk['opened_by'] == 'before_attach' and isinstance(lk['fd'], int),
                      'a before-attach listing: %s' % lk)
                check(lk['since_fin_ms'] >= 0, 'its age: %s' % lk['since_fin_ms'])
            with open(err, 'rb') as f:
                check(b'attached to process %d' % server.p.pid in f.read(), 'no "attached" line')
            # Born before, its FIN after the attach: reported after the grace period, not listed at
            # once; where it was opened is not known, where it read the EOF is.
            open_before.close()
            server.wait_line('KEPT', count=3)
            late = wait_leaks(log, 1, reason='eof_not_closed')[0]
            keep = source_line('leaky_c_server.c', 'while (read(fd, buf, sizeof buf) > 0)')
            check(late['opened_by'] == 'before_attach' and not late.get('before_attach') and late['since_fin_ms'] >= GRACE_MS,
                  'a socket born before the attach and closed by its peer after it: %s' % late)
            check(frame_at(late.get('eof_stack'), 'keep_forever', 'leaky_c_server.c', keep),
                  'its EOF stack: %s' % describe(late.get('eof_stack')))
            client(port, 'L')
            server.wait_line('KEPT', count=4)
            new = wait_leaks(log, 2, reason='eof_not_closed')
            new = [lk for lk in new if lk['opened_by'] != 'before_attach']
            take = source_line('leaky_c_server.c', 'accept(lfd, NULL, NULL)')
            check(frame_at(new[0]['open_stack'], 'take_connection', 'leaky_c_server.c', take),
                  'no take_connection :%d in the open stack of the leak after the attach: %s'
                  % (take, describe(new[0]['open_stack'])))
            check(new, 'no leak opened after the attach')
            check(len(ss_held_by(port, server.p.pid)) == 4, 'ss: %s' % ss_held_by(port, server.p.pid))
            tr.p.send_signal(signal.SIGINT)
            tr.p.wait(10)
            check(tr.p.returncode == 0, 'closewait-ebpf exit status %s after Ctrl-C' % tr.p.returncode)
            summ = harness.of_kind(events(log), 'summary')
            check(summ and summ[-1]['why'] == 'detach' and summ[-1]['leaks_open'] == 4, 'detach summary: %s' % summ)
        finally:
            tr.kill()
        # Detached: the server was never stopped and still serves.
        check(server.p.poll() is None, 'the server died')
        client(port, 'S')
        server.wait_line('CLOSED')
    finally:
        server.finish()
    return 'listed 2 in %.1fs, then take_connection :%d' % (listed_in, take)


@tests.test
def test_attach_process_that_exits():
    need_ebpf()
    prog = c_static_build()
    server = Traced([prog])
    try:
        port = server.port()
        log, err = os.path.join(WORK, 'attach_exit.jsonl'), os.path.join(WORK, 'attach_exit.err')
        tr = Traced([EBPF, '--attach', str(server.p.pid)], env=ebpf_env(log), stderr_path=err)
        try:
            harness.poll_until(lambda: os.path.exists(err) and b'attached' in open(err, 'rb').read(), 10)
            client(port, 'L')
            server.wait_line('KEPT')
            wait_leaks(log, 1, reason='eof_not_closed')
            server.finish()
            rc = harness.poll_until(lambda: tr.p.poll() is not None, 10)
            check(rc, 'closewait-ebpf still runs after its process exited')
            check(tr.p.returncode == 0, 'exit status %s' % tr.p.returncode)
            summ = harness.of_kind(events(log), 'summary')
            check(summ and summ[-1]['why'] == 'exit' and summ[-1]['leaks_open'] == 1, 'exit summary: %s' % summ)
        finally:
            tr.kill()
    finally:
        server.kill()


def workers_of(tr):
    return [int(x) for x in tr.wait_line('WORKERS ')[0].split()[1:]]


@tests.test
def test_prefork_server_workers_followed():
    """--ebpf: the processes the program forks are followed from their first instruction."""
    need_ebpf()
    prog = c_static_build()
    log, err = os.path.join(WORK, 'prefork.jsonl'), os.path.join(WORK, 'prefork.err')
    tr = Traced([EBPF, '--', prog, '-f', '2'], env=ebpf_env(log), stderr_path=err)
    try:
        port = tr.port()
        workers = workers_of(tr)
        for _ in range(4):
            client(port, 'L')
        tr.wait_line('KEPT', count=4)
        held = harness.poll_until(lambda: sum(len(ss_held_by(port, w)) for w in workers) >= 4, 10)
        check(held, 'ss: %s' % [ss_held_by(port, w) for w in workers])
        found = wait_leaks(log, 4, reason='eof_not_closed')
        take = source_line('leaky_c_server.c', 'accept(lfd, NULL, NULL)')
        for lk in found:
            check(lk['pid'] in workers, 'leak of pid %s, the workers are %s' % (lk['pid'], workers))
            check(len(ss_held_by(port, lk['pid'])) > 0 and (lk['local'], lk['peer']) in ss_held_by(port, lk['pid']),
                  'ss does not show %s held by %d' % ((lk['local'], lk['peer']), lk['pid']))
            check(frame_at(lk['open_stack'], 'take_connection', 'leaky_c_server.c', take),
                  'no take_connection :%d in a worker\'s open stack: %s' % (take, describe(lk['open_stack'])))
        check(tr.finish() == 0, 'the server did not exit 0')
        summ = harness.of_kind(events(log), 'summary')
        check({e['pid'] for e in summ if e['why'] == 'exit'} == {lk['pid'] for lk in found},
              'exit summaries of %s' % [(e['pid'], e['why']) for e in summ])
    finally:
        tr.kill()
    return '4 leaks in workers %s' % workers


@tests.test
def test_attach_prefork_master_follows_workers():
    """--attach to a prefork server's first process: its workers, running already, are followed."""
    need_ebpf()
    prog = c_static_build()
    server = Traced([prog, '-f', '2'])
    try:
        port = server.port()
        workers = workers_of(server)
        client(port, 'L')
        server.wait_line('KEPT')
        log, err = os.path.join(WORK, 'attach_prefork.jsonl'), os.path.join(WORK, 'attach_prefork.err')
        tr = Traced([EBPF, '--attach', str(server.p.pid)], env=ebpf_env(log), stderr_path=err)
        try:
            listed = wait_leaks(log, 1, timeout=10, before_attach=True)
            check(listed[0]['pid'] in workers, 'listed in pid %s, workers %s' % (listed[0]['pid'], workers))
            client(port, 'L')
            server.wait_line('KEPT', count=2)
            new = wait_leaks(log, 1, reason='eof_not_closed')
            take = source_line('leaky_c_server.c', 'accept(lfd, NULL, NULL)')
            check(new[0]['pid'] in workers and frame_at(new[0]['open_stack'], 'take_connection', 'leaky_c_server.c', take),
                  'the leak after the attach: pid %s, %s' % (new[0]['pid'], describe(new[0]['open_stack'])))
            tr.p.send_signal(signal.SIGINT)
            tr.p.wait(10)
        finally:
            tr.kill()
    finally:
        server.finish()
    return 'listed in %d, then a leak in %d' % (listed[0]['pid'], new[0]['pid'])


@tests.test
def test_missing_permission_one_line():
    if not os.path.exists(EBPF):
        raise TestSkip('closewait-ebpf is not built')
    if os.geteuid() != 0 or shutil.which('setpriv') is None:
        raise TestSkip('needs root and setpriv to drop to an unprivileged user')
    r = subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all',
                        EBPF, '--attach', str(os.getpid())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    lines = r.stderr.decode('utf-8', 'replace').strip().splitlines()
    check(r.returncode == 2, 'exit status %d' % r.returncode)
    check(len(lines) == 1 and 'CAP_BPF' in lines[0] and 'CAP_PERFMON' in lines[0] and 'sudo' in lines[0],
          'not one line naming what is missing and how: %s' % lines)
    return lines[0][:80] + '...'


def main():
    a = harness.suite_arguments(__doc__, 'show tracebacks of failures, keep the work directory')
    try:
        return harness.Runner(verbose=a.v).run(tests.select(a.k))
    finally:
        if not a.v:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
