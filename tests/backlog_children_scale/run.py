#!/usr/bin/env python3
"""CLOSE_WAIT beyond the forgotten close(): the listen backlog, sockets inherited by children,
and a proxy-sized process.  Real programs under the library, real sockets on 127.0.0.1, the
kernel's view (ss, /proc) as ground truth.

    python3 tests/backlog_children_scale/run.py [-k SUBSTRING]

Honours CLOSEWAIT_LIB (the library, or a colon-separated LD_PRELOAD list).
"""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402
from harness import check, functions, leaks, ss_close_wait, watchers_of  # noqa: E402,F401
ROOT = harness.ROOT
PY = '/usr/bin/python3' if os.path.exists('/usr/bin/python3') else sys.executable
GRACE = 500
LIB = harness.library(absolute=False)
WORK = tempfile.mkdtemp(prefix='cw-sources-')
SPAWNER = os.path.join(WORK, 'spawner')

Fail = harness.TestFailure


def poll(fn, timeout, step=0.05):
    return harness.poll_until(fn, timeout, step, inclusive=False)


def build(src, out, flags):
    """Compiles one of progs/ (without the library); a compiler error raises CalledProcessError."""
    r = harness.compile_c([os.path.join(HERE, 'progs', src)], out, flags)
    sys.stdout.write(r.stdout.decode('utf-8', 'replace'))
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, r.args)


class Run:
    """A program under the library; each process writes its own JSON log (%p)."""

    def __init__(self, argv, env=None):
        self.dir = tempfile.mkdtemp(dir=WORK)
        e = harness.lib_env(os.path.join(self.dir, 'cw.%p.log'), LIB, 'json', GRACE, env)
        self.p = subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.out.append(line.strip())
                self.cond.notify_all()

    def line(self, prefix, timeout=10):
        end = time.time() + timeout
        with self.cond:
            while True:
                for l in self.out:
                    if l.startswith(prefix):
                        return l[len(prefix):].strip()
                left = end - time.time()
                if left <= 0:
                    raise Fail('no %r line from %s within %ss (stdout %s)' % (prefix, self.p.args, timeout, self.out))
                self.cond.wait(left)

    def events(self, pid=None):
        evs = []
        for path in sorted(glob.glob(os.path.join(self.dir, 'cw.*.log'))):
            if pid is not None and not path.endswith('.%d.log' % pid):
                continue
            with open(path) as f:
                for raw in f:
                    evs.append(json.loads(raw))
        return evs

    def finish(self, timeout=20):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise Fail('%s did not exit within %ss' % (self.p.args, timeout))


# ---------------------------------------------------------------- the listen backlog

def test_backlog_seed_scenario():
    """listen(1), a handler that holds each connection, clients that give up while queued."""
    r = Run([PY, os.path.join(HERE, 'progs', 'backlog_server.py'), '3', '2.5'])
    port = int(r.line('PORT'))
    clients = []

    def client(i):
        c = socket.socket()
        c.settimeout(5)
        try:
            c.connect(('127.0.0.1', port))
            clients.append(c)
            time.sleep(1.5)
        finally:
            c.close()

    ts = []
    for i in range(3):
        t = threading.Thread(target=client, args=(i,))
        t.start()
        ts.append(t)
        time.sleep(0.2)
    # the kernel's view: connections dead in the queue, owned by nobody yet
    queued = poll(lambda: [l for l in ss_close_wait(port) if 'users:' not in l], 4)
    check(queued, 'ss shows no ownerless CLOSE-WAIT connection on :%d' % port)
    for t in ts:
        t.join(10)
    r.line('DONE', 15)
    r.finish()
    evs = r.events()
    bl = [e for e in evs if e.get('event') == 'backlog']
    dead = [e for e in bl if e.get('reason') == 'peer_closed_in_backlog']
    full = [e for e in bl if e.get('reason') == 'accept_queue_full']
    check(dead, 'no peer_closed_in_backlog finding: %s' % bl)
    check(len(dead) <= 4, 'one finding with counts wanted, got %d lines' % len(dead))
    check(max(e['queued_dead'] for e in dead) >= 1, 'queued_dead never counted: %s' % dead)
    check(max(e['accepted_dead'] for e in dead) >= 1, 'accepted_dead never counted: %s' % dead)
    for e in dead + full:
        check(e['listen'].endswith(':%d' % port), 'listen %r' % e['listen'])
        check(e['backlog'] == 1, 'backlog %r' % e['backlog'])
        check(e.get('listen_stack'), 'no listen_stack')
    check(full and full[0]['queue_limit'] == 1 and full[0]['queue_len'] > 1,
          'accept_queue_full with queue_limit 1 wanted: %s' % full)
    # the first connection, accepted and then left unread while the handler sleeps
    check(leaks(evs, 'peer_closed_unread'), 'the held connection was not reported')
    return '%d backlog line(s), accepted_dead=%d' % (len(dead), max(e['accepted_dead'] for e in dead))


def test_backlog_healthy_server_quiet():
    """A server that accepts at once: clients that send and half-close are not backlog deaths."""
    r = Run([PY, os.path.join(HERE, 'progs', 'backlog_server.py'), '50', '0', '64'])
    port = int(r.line('PORT'))
    for i in range(50):
        c = socket.create_connection(('127.0.0.1', port))
        try:
            c.sendall(b'ping')
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closes at once, unread data and all: a reset may come first
        c.close()
    r.line('DONE', 15)
    r.finish()
    evs = r.events()
    check(not [e for e in evs if e.get('event') in ('backlog', 'leak')], 'unexpected findings: %s' % evs)


# ---------------------------------------------------------------- sockets inherited by children

def inherited_case(mode, parent_linger, child_linger):
    r = Run([SPAWNER, mode, str(parent_linger), str(child_linger)])
    port = int(r.line('PORT'))
    c = socket.create_connection(('127.0.0.1', port))
    child = int(r.line('CHILD')) if mode in ('exec', 'fork', 'spawn') else None
    r.line('CLOSED')
    c.close()
    return r, port, child


def test_inherited_fork_exec():
    r, port, child = inherited_case('exec', 4, 4)
    owners = poll(lambda: [l for l in ss_close_wait(port) if 'pid=%d,' % child in l], 3)
    check(owners, 'ss does not show the child %d holding the CLOSE-WAIT socket' % child)
    ev = poll(lambda: leaks(r.events(), 'inherited'), GRACE / 1000 + 3)
    check(len(ev) == 1, 'one inherited leak wanted, got %s' % ev)
    e = ev[0]
    check(e['holder_pid'] == child, 'holder_pid %r, child %d' % (e['holder_pid'], child))
    check(e['pid'] == r.p.pid, 'written by %r, parent is %d' % (e['pid'], r.p.pid))
    check(e['spawned_by'] == 'fork', 'spawned_by %r' % e['spawned_by'])
    check('accept_connection' in functions(e['open_stack']), 'open stack %s' % functions(e['open_stack']))
    check('hand_to_child' in functions(e['spawn_stack']), 'spawn stack %s' % functions(e['spawn_stack']))
    check(e['peer'].startswith('127.0.0.1:'), 'peer %r' % e['peer'])
    r.finish()


def test_inherited_fork_only():
    r, port, child = inherited_case('fork', 4, 4)
    ev = poll(lambda: leaks(r.events(), 'inherited'), GRACE / 1000 + 3)
    check(len(ev) == 1 and ev[0]['holder_pid'] == child and ev[0]['pid'] == r.p.pid,
          'the parent should report the child %d holding it: %s' % (child, ev))
    time.sleep(1)
    child_view = leaks(r.events(child))
    check(not child_view, 'the child reported its inherited socket while the parent lives: %s' % child_view)
    r.finish()


def test_child_side_view():
    """The parent is gone: the child, running the library too, reports the socket it inherited,
    saying so."""
    r, port, child = inherited_case('fork', 0, 4)
    r.finish()
    ev = poll(lambda: leaks(r.events(child)), GRACE / 1000 + 3)
    check(len(ev) == 1, 'the orphaned child should report one leak: %s' % ev)
    e = ev[0]
    check(e['reason'] == 'inherited' and e['holder_pid'] == child, 'child view %s' % e)
    check('hand_to_child' in functions(e.get('spawn_stack')), 'spawn stack %s' % functions(e.get('spawn_stack')))
    check('accept_connection' in functions(e['open_stack']), 'open stack %s' % functions(e['open_stack']))


def test_inherited_posix_spawn():
    r, port, child = inherited_case('spawn', 4, 4)
    ev = poll(lambda: leaks(r.events(), 'inherited'), GRACE / 1000 + 3)
    check(len(ev) == 1 and ev[0]['holder_pid'] == child and ev[0]['spawned_by'] == 'posix_spawn',
          'posix_spawn child %d: %s' % (child, ev))
    r.finish()


def test_inherited_system_background():
    r, port, _ = inherited_case('system', 4, 4)
    ev = poll(lambda: leaks(r.events(), 'inherited'), GRACE / 1000 + 4)
    check(len(ev) == 1 and ev[0]['spawned_by'] == 'system', 'system(): %s' % ev)
    holder = ev[0]['holder_pid']
    with open('/proc/%d/comm' % holder) as f:
        comm = f.read().strip()
    check(comm == 'sleep', 'holder %d is %r, wanted the backgrounded sleep' % (holder, comm))
    r.finish()


def test_cloexec_does_not_cross():
    """The same exec with SOCK_CLOEXEC-like behaviour: a child that does not hold the socket is
    not blamed (here the parent keeps nothing and the child never had it: no report)."""
    r = Run([SPAWNER, 'exec', '3', '3'], env={})
    port = int(r.line('PORT'))
    c = socket.create_connection(('127.0.0.1', port))
    child = int(r.line('CHILD'))
    r.line('CLOSED')
    # kill the child: nobody holds the socket any more, the kernel closes it
    os.kill(child, 9)
    c.close()
    time.sleep(GRACE / 1000 + 1.5)
    check(not leaks(r.events()), 'reported a socket nobody holds: %s' % leaks(r.events()))
    r.finish()


# ---------------------------------------------------------------- exact stacks

def test_same_site_two_callers():
    """One accept() site, two callers, alternating: each leak names its own caller."""
    exe = os.path.join(WORK, 'two_paths')
    build('two_paths.c', exe, ['-O1', '-g', '-fno-inline'])
    n = 9
    r = Run([exe, str(n)])
    port = int(r.line('PORT'))
    clients = []
    for i in range(n):
        clients.append(socket.create_connection(('127.0.0.1', port)))
        r.line('LEAK', 5)
    time.sleep(0.3)
    expected = {}
    with r.cond:
        for l in r.out:
            if l.startswith('LEAK'):
                _, fd, path = l.split()
                expected[int(fd)] = 'path_' + path
    for c in clients:
        c.close()
    got = poll(lambda: len(leaks(r.events())) >= n and leaks(r.events()), GRACE / 1000 + 3)
    check(got and len(got) == n, 'expected %d leaks, got %s' % (n, len(got or [])))
    for e in got:
        fns = functions(e['open_stack'])
        want = expected[e['fd']]
        other = 'path_b' if want == 'path_a' else 'path_a'
        check(want in fns and other not in fns, 'fd %d: stack %s, wanted %s' % (e['fd'], fns[:4], want))
    r.finish()
    return '%d leaks, each with its own caller' % n


# ---------------------------------------------------------------- the system log

def test_syslog_sink():
    """CLOSEWAIT_LOG=syslog: the JSON lines reach the system log socket, one record each."""
    if os.path.exists('/dev/log'):
        return 'skipped: a system log is running here; not taking its socket'
    if os.geteuid() != 0:
        return 'skipped: binding /dev/log needs root'
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sink.bind('/dev/log')
        sink.settimeout(0.2)
        r = Run([SPAWNER, 'exec', '3', '3'], env={'CLOSEWAIT_LOG': 'syslog'})
        port = int(r.line('PORT'))
        c = socket.create_connection(('127.0.0.1', port))
        r.line('CLOSED')
        c.close()
        records = []
        end = time.time() + GRACE / 1000 + 3
        while time.time() < end and not any('"event":"leak"' in x for x in records):
            try:
                records.append(sink.recv(65536).decode('utf-8', 'replace'))
            except socket.timeout:
                pass
        r.finish()
    finally:
        sink.close()
        os.unlink('/dev/log')
    leak_records = [x for x in records if '"event":"leak"' in x]
    check(leak_records, 'no leak record reached the system log: %s' % records[:3])
    rec = leak_records[0]
    check('closewait[' in rec, 'record not tagged closewait[pid]: %r' % rec[:120])
    payload = json.loads(rec[rec.index('{'):])
    check(payload['reason'] == 'inherited' and payload['event'] == 'leak', 'payload %s' % payload)
    return '%d record(s) received' % len(records)


# ---------------------------------------------------------------- scale

def cpu_ticks(path):
    with open(path) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])


def watcher_ticks(pid):
    """CPU of the watcher: its process (the default), or the program's threads but the main one."""
    total = 0
    for w in watchers_of(pid):
        total += cpu_ticks('/proc/%d/stat' % w)
    for task in os.listdir('/proc/%d/task' % pid):
        if int(task) != pid:
            total += cpu_ticks('/proc/%d/task/%s/stat' % (pid, task))
    return total


def test_proxy_many_idle_sockets():
    n, leak_every, closing = 15000, 50, 300
    r = Run([PY, os.path.join(HERE, 'progs', 'proxy_server.py'), str(n), '14', str(leak_every)],
            env={'CLOSEWAIT_GRACE_MS': '1000'})
    port = int(r.line('PORT'))
    conns = []
    for i in range(n):
        conns.append(socket.create_connection(('127.0.0.1', port)))
    r.line('READY', 30)
    t0 = watcher_ticks(r.p.pid)
    w0 = time.time()
    for c in conns[:closing]:
        c.close()
    expected = closing // leak_every
    got = poll(lambda: len(leaks(r.events())) >= expected, 1.0 + 3)
    time.sleep(1.5)
    evs = leaks(r.events())
    held = ss_close_wait(port)
    cpu = (watcher_ticks(r.p.pid) - t0) / os.sysconf('SC_CLK_TCK')
    wall = time.time() - w0
    for c in conns[closing:]:
        c.close()
    r.finish(30)
    check(len(held) == expected, 'ss shows %d CLOSE-WAIT sockets, expected %d' % (len(held), expected))
    check(len(evs) == expected, 'expected exactly %d leak reports, got %d' % (expected, len(evs)))
    check(all(e['reason'] == 'peer_closed_unread' for e in evs), 'reasons %s' % {e['reason'] for e in evs})
    check(cpu / wall < 0.10, 'watcher used %.1f%% of a core with %d idle sockets' % (100 * cpu / wall, n))
    return '%d idle sockets, %d leaks reported, watcher %.2f%% of a core' % (n, len(evs), 100 * cpu / wall)


def main():
    only = None
    if '-k' in sys.argv:
        only = sys.argv[sys.argv.index('-k') + 1]
    build('spawner.c', SPAWNER, ['-O1', '-g', '-Wall', '-Werror'])
    tests = [(k[5:], v) for k, v in sorted(globals().items(), key=lambda kv: kv[1].__code__.co_firstlineno
                                            if callable(kv[1]) and hasattr(kv[1], '__code__') else 0)
             if k.startswith('test_') and callable(v)]
    runner = harness.Runner(one_line_failures=False, always_skipped=False)
    for name, fn in tests:
        if only and only not in name:
            continue
        runner.run_one(name, fn)
    shutil.rmtree(WORK, ignore_errors=True)
    return runner.finish()


if __name__ == '__main__':
    sys.exit(main())
