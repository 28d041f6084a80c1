#!/usr/bin/env python3
"""Deployments: is libclosewait.so safe to preload where real programs run?

    python3 tests/deploy/run.py [-k SUBSTRING] [-v] [--keep]

Each test runs real programs (tests/deploy/progs/*.c, built here into tests/deploy/build/, and
nginx) the way deployments run them: daemons that close every descriptor or detach from the
caller's pipe, workers that give up root, seccomp filters, PID namespaces and pids cgroups,
outputs that block, hostile neighbours, and faults of the library's own watcher.  The library's
JSON reports are compared with the kernel's view (ss, /proc).

The library is $CLOSEWAIT_LIB, else libclosewait.so at the repository root (`make` builds it).
Runs as root; a setup the machine cannot make (no setpriv, no unshare, no writable pids cgroup,
no tmpfs mount, no nginx) is a SKIP with the reason.  Only 127.0.0.1 is used.  Every process a
test starts is killed at its end.

Output: one line per test (PASS name / FAIL name: why / SKIP name: why), then the closing line
'N passed, N failed, N skipped'.  Exit status 1 if any test failed.
"""
import argparse
import grp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deployment import (  # noqa: E402
    GRACE_MS, NOBODY, REPORT_WAIT, Case, Client, Fail, Orphans, Skip, check, check_leak_site,
    close_wait_sockets, connect_accepted, describe_events, exit_summaries,
    fill_pipe, held_in_close_wait, holders_of_pipe, is_leak, leaks_of, missing_library, poll_until,
    proc_caps, proc_stat, proc_uids, read_until_eof, signal_name, status_text, stderr_lines,
    wait_close_wait, watcher_processes, watchers_of, build_programs, all_pids,
    one_line, library, functions, WatcherSampler)
import harness  # noqa: E402  (tests/harness, put on sys.path by deployment)

P = {}                   # program name -> path, set by main()
QUIET = 2 * GRACE_MS / 1000.0 + 0.3    # long enough for a duplicate or false report to show
TEST_LIMIT = 45          # seconds: a test still running then has hung somewhere
CAP_SYS_PTRACE = 19
TESTS = harness.Registry(strip_prefix=False)
test = TESTS.test


class Problems:
    """Several independent expectations of one test: all are checked, all failures are told."""

    def __init__(self):
        self.items = []

    def check(self, cond, msg):
        if not cond:
            self.items.append(msg)
        return cond

    def done(self):
        if self.items:
            raise Fail('; '.join('(%d) %s' % (i + 1, m) for i, m in enumerate(self.items)))


# ---------------------------------------------------------------- common steps

def drive(prog, port, pattern):
    """One client per letter of the program's pattern, accepted in order; S connections are
    greeted.  Then the clients close (the peer's FIN).  Returns [(client, kind, fd)]."""
    out = []
    for want in pattern:
        c, kind, fd = connect_accepted(prog, port)
        check(kind == want, '%s accepted a %s connection, the pattern says %s' % (prog.name, kind, want))
        if kind == 'S':
            hello = c.read_line(3.0)
            check(hello == 'HELLO', '%s did not greet a served connection (got %r); %s' % (
                prog.name, hello, prog.context()))
        out.append((c, kind, fd))
    for c, _, _ in out:
        c.close()
    return out


def leaked(conns):
    return [c for c, kind, _ in conns if kind == 'L']


def expect_exact_leaks(prog, pid, clients, fn='leak_here', exe=None, timeout=REPORT_WAIT):
    """Exactly one leak event per leaked client, from pid, none other (after a quiet period),
    each naming fn in its open_stack."""
    n = len(clients)
    prog.wait_events(lambda e: is_leak(e, pid), n, timeout, what='leak events of pid %d' % pid)
    time.sleep(QUIET)
    evs = leaks_of(prog.events(), pid)
    got = sorted(str(e.get('peer')) for e in evs)
    want = sorted(c.server_peer for c in clients)
    check(got == want, 'pid %d: expected exactly %d leak event(s), for peers %s; got %d: %s' % (
        pid, n, want, len(evs), describe_events(evs)))
    for e in evs:
        check_leak_site(e, fn, exe)
    return evs


def lib_uses_sanitizer():
    return any(re.match(r'lib(a|t|ub|l|hwa)san\.so', os.path.basename(x)) for x in library().split(':'))


def nobody_group():
    try:
        return grp.getgrgid(NOBODY).gr_name
    except KeyError:
        return None


# ---------------------------------------------------------------- 1. a daemon that closes every descriptor

@test
def close_all_daemon_leaks_reported_and_exit_summary(case):
    """main starts with close(3..1023) (the library's log descriptor goes too), then leaks 2 of
    4 connections: exactly those 2 are reported while it runs, and its own timer's normal exit
    writes the summary with 2 held."""
    exe = P['leaky_server']
    p = case.start([exe, '-c', '-p', 'LSLS', '-t', '5'])
    conns = drive(p, p.port(), 'LSLS')
    wait_close_wait([p.pid], 2)
    expect_exact_leaks(p, p.pid, leaked(conns), exe=exe)
    check(p.alive(), 'the program ended before its timer: %s' % p.context())
    rc = p.wait_exit(10)
    check(rc == 0, 'expected exit status 0 from its timer, got %s; %s' % (status_text(rc), p.context()))
    sums = exit_summaries(p.events(), p.pid)
    check(len(sums) == 1, 'expected one exit summary, got %d; log: %s' % (len(sums), describe_events(p.events())))
    check(sums[0].get('leaks_open') == 2 and sums[0].get('leaks_total') == 2,
          'exit summary says leaks_open=%s leaks_total=%s, expected 2 and 2' % (
              sums[0].get('leaks_open'), sums[0].get('leaks_total')))
    check(len(leaks_of(p.events(), p.pid)) == 2, 'leak events after exit: %s' % describe_events(p.events()))


# ---------------------------------------------------------------- 2. out=$(daemon 2>&1)

def captured_daemon_run(case, lib, log_file):
    """Runs the daemon as out=$(daemon 2>&1) would: stdout and stderr one pipe, read to EOF.
    Returns (seconds to EOF or None, output, pids holding the pipe after the limit, parent's rc)."""
    pidfile = case.path('daemon.pid')
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    env = case.env(lib, log=case.path('daemon.log') if log_file else None)
    proc = case.popen([P['daemon'], pidfile, '8'], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, env=env, cwd='/')
    data, t_eof = read_until_eof(proc.stdout.fileno(), 4.0)
    holders = holders_of_pipe(proc.stdout.fileno()) if t_eof is None else []
    try:
        rc = proc.wait(3)
    except subprocess.TimeoutExpired:
        rc = None
    proc.stdout.close()
    # the daemon itself: stopped now (and by the cleanup's sweep in any case)
    if poll_until(lambda: os.path.exists(pidfile), 2.0):
        try:
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    return t_eof, data.decode('utf-8', 'replace'), holders, rc


def daemon_output_capture(case, log_file):
    t0, out0, holders0, rc0 = captured_daemon_run(case, False, False)
    check(t0 is not None and t0 < 1.0 and rc0 == 0,
          'setup: without the library the capture took %s s (parent %s; holders %s): the test daemon is wrong' % (
              t0, status_text(rc0), holders0))
    t, out, holders, rc = captured_daemon_run(case, True, log_file)
    check(rc == 0, 'the daemon\'s parent ended with %s; output %r' % (status_text(rc), one_line(out)))
    check(t is not None, 'out=$(daemon 2>&1) had not returned after 4 s (without the library: %.2f s): '
          'the pipe is still held by %s' % (t0, ', '.join(holders) or 'nobody visible'))
    check(t < 2.0, 'out=$(daemon 2>&1) returned after %.2f s, expected < 2 s (without the library: %.2f s)' % (t, t0))


@test
def daemon_output_capture_returns_at_once_log_stderr(case):
    """A classic daemon (fork, parent exits, setsid, /dev/null on 0-2) started as
    out=$(daemon 2>&1) returns at once under the library with reports to stderr."""
    daemon_output_capture(case, log_file=False)


@test
def daemon_output_capture_returns_at_once_log_file(case):
    """The same daemon with CLOSEWAIT_LOG a file."""
    daemon_output_capture(case, log_file=True)


# ---------------------------------------------------------------- 3. workers that give up root

def privilege_dropping_worker(case, wrap):
    exe = P['privdrop_worker']
    p = case.start(wrap + [exe, '3'], name='privdrop_worker')
    port = p.port()
    worker = int(p.wait_line(r'WORKER (\d+)$').group(1))
    p.wait_line(r'DROPPED uid=%d euid=%d$' % (NOBODY, NOBODY))
    watch = WatcherSampler(case.token)          # the watchers while the worker lives
    case.undo.append(watch.stop)
    if wrap:
        caps = proc_caps(p.pid)
        check(caps is not None and not caps & (1 << CAP_SYS_PTRACE),
              'setup: the program still has CAP_SYS_PTRACE under setpriv (CapEff %s)' % (
                  None if caps is None else '%x' % caps))
    conns = [connect_accepted(p, port) for _ in range(3)]
    for c, _, _ in conns:
        c.close()
    wait_close_wait([worker], 3)
    probs = Problems()
    try:
        poll_until(lambda: len(leaks_of(p.events(), worker)) >= 3, REPORT_WAIT)
        time.sleep(QUIET)
        evs = leaks_of(p.events(), worker)
        want = sorted(c.server_peer for c, _, _ in conns)
        got = sorted(str(e.get('peer')) for e in evs)
        if probs.check(got == want, 'expected exactly 3 leak events with pid %d (the worker), for peers %s; '
                       'got %d: %s; %s' % (worker, want, len(evs), describe_events(p.events()), p.context())):
            for e in evs:
                try:
                    check_leak_site(e, 'leak_here', exe)
                except Fail as ex:
                    probs.check(False, str(ex))
    finally:
        seen = watch.stop().seen
    nobody_watchers = [w for w in seen.values() if w.uids and w.uids[0] == NOBODY]
    thread = any(e.get('event') == 'start' and e.get('pid') == worker and e.get('watcher') == 'thread'
                 for e in p.events())
    # Once the worker is nobody, what watches it must not be root: a watcher process as nobody
    # (or, where the library watches the worker from a thread of its own, no process at all).
    probs.check(nobody_watchers or thread,
                'no watcher process with uid %d while the worker lived (and the worker does not watch from '
                'a thread); watchers seen: %s' % (NOBODY, sorted(seen.values(), key=lambda w: w.pid)))
    probs.done()
    rc, _ = p.finish(5)
    check(rc == 0, 'the program ended with %s after stdin closed; %s' % (status_text(rc), p.context()))


@test
def privilege_dropping_worker_without_cap_sys_ptrace(case):
    """Under setpriv without CAP_SYS_PTRACE: a root parent forks a worker that becomes nobody and
    leaks 3 connections: exactly 3 leaks with the worker's pid, and its watcher is not root."""
    if shutil.which('setpriv') is None:
        raise Skip('setpriv is not installed (util-linux)')
    probe = subprocess.run(['setpriv', '--bounding-set', '-sys_ptrace', '--inh-caps=-sys_ptrace', 'true'],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    if probe.returncode != 0:
        raise Skip('setpriv cannot drop CAP_SYS_PTRACE here: %s' % one_line(probe.stdout.decode('utf-8', 'replace')))
    privilege_dropping_worker(case, ['setpriv', '--bounding-set', '-sys_ptrace', '--inh-caps=-sys_ptrace'])


@test
def privilege_dropping_worker_as_plain_root(case):
    """The same worker started by plain root (CAP_SYS_PTRACE held)."""
    privilege_dropping_worker(case, [])


# ---------------------------------------------------------------- 4. nginx, user nobody, 2 workers

NGINX_CONF = """daemon off;
master_process on;
worker_processes 2;
user nobody %(group)s;
error_log %(d)s/error.log notice;
pid %(d)s/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %(d)s/body;
  proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fastcgi;
  uwsgi_temp_path %(d)s/uwsgi;
  scgi_temp_path %(d)s/scgi;
  server {
    listen 127.0.0.1:%(port)d;
    root %(d)s/html;
    # A slow upstream, and clients that give up: with proxy_ignore_client_abort nginx keeps the
    # client's connection open (CLOSE_WAIT) until the upstream answers.
    location /slow/ {
      proxy_pass http://127.0.0.1:%(upstream)d;
      proxy_ignore_client_abort on;
      proxy_read_timeout 60s;
    }
  }
}
"""


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SilentUpstream:
    """An upstream on 127.0.0.1 that accepts and never answers (bounded: 30 s at most)."""

    def __init__(self):
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        end = time.monotonic() + 30
        while not self.stop and time.monotonic() < end:
            try:
                s, _ = self.sock.accept()
                self.held.append(s)
            except OSError:
                pass

    def close(self):
        self.stop = True
        self.thread.join(2)
        for s in self.held + [self.sock]:
            s.close()


def http_get(port, path, timeout=3.0):
    s = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    s.sendall(('GET %s HTTP/1.0\r\nHost: test\r\n\r\n' % path).encode())
    data = b''
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    except OSError:
        pass
    s.close()
    return data.decode('utf-8', 'replace')


@test
def nginx_workers_as_nobody_report_what_the_kernel_holds(case):
    """Real nginx (user nobody, 2 workers, master as root): requests succeed; 6 clients that give
    up on a slow upstream stay in CLOSE_WAIT in the workers (the kernel says so), and the
    reports are exactly those sockets, each with its worker's pid; no watcher process of a
    worker runs as root."""
    nginx = '/usr/sbin/nginx'
    if not os.access(nginx, os.X_OK):
        raise Skip('%s is missing (tests/real/install-deps.sh installs nginx-light)' % nginx)
    group = nobody_group()
    if group is None:
        raise Skip('no group with gid %d for nginx workers' % NOBODY)
    upstream = SilentUpstream()
    case.undo.append(upstream.close)
    port = free_port()
    os.makedirs(case.path('html'))
    with open(case.path('html/index.html'), 'w') as f:
        f.write('deployed\n')
    with open(case.path('nginx.conf'), 'w') as f:
        f.write(NGINX_CONF % {'d': case.dir, 'port': port, 'upstream': upstream.port, 'group': group})
    p = case.start([nginx, '-p', case.dir, '-c', case.path('nginx.conf'), '-e', case.path('error.log')], name='nginx')

    def workers():
        return [pid for pid in all_pids() if (proc_stat(pid) or {}).get('ppid') == p.pid
                and (proc_stat(pid) or {}).get('comm', '').startswith('nginx')]

    def error_log():
        try:
            with open(case.path('error.log'), errors='replace') as f:
                return one_line('\n'.join(l for l in f.read().splitlines() if '[notice]' not in l)[-1500:], 600) or '(no error)'
        except OSError:
            return '(none)'
    ok = poll_until(lambda: len(workers()) == 2 and http_get(port, '/index.html').startswith('HTTP/1.1 200'), 5.0, 0.1)
    check(ok, 'nginx did not serve /index.html with 2 workers within 5 s (workers %s); %s; error.log: %s' % (
        workers(), p.context(), error_log()))
    ws = workers()
    probs = Problems()
    for w in ws:
        probs.check(proc_uids(w) == (NOBODY, NOBODY), 'nginx worker %d runs as %s, expected nobody' % (w, proc_uids(w)))
    clients = []
    for _ in range(6):
        c = Client(port)
        c.sock.sendall(b'GET /slow/x HTTP/1.1\r\nHost: test\r\n\r\n')
        clients.append(c)
    check(poll_until(lambda: len(upstream.held) >= 6, 3.0),
          'setup: nginx passed %d of the 6 requests to the upstream within 3 s; error.log: %s' % (
              len(upstream.held), error_log()))
    for c in clients:
        c.close()
    held = wait_close_wait(ws, 6)      # {(local, peer): {worker pid}}
    check(len(held) == 6, 'the kernel shows %d CLOSE_WAIT sockets in the workers, the test made 6: %s' % (len(held), held))
    truth = {}
    for (local, peer), pids in held.items():
        check(len(pids) == 1, 'socket %s -> %s held by several workers: %s' % (local, peer, pids))
        truth.setdefault(next(iter(pids)), set()).add(peer)
    try:
        p.wait_events(lambda e: is_leak(e) and e.get('pid') in ws, 6, REPORT_WAIT, what='leak events of the workers')
    except Fail as ex:
        raise Fail('%s; error.log: %s' % (ex, error_log()))
    time.sleep(QUIET)
    evs = p.events()
    for w in ws:
        got = sorted(str(e.get('peer')) for e in leaks_of(evs, w))
        probs.check(got == sorted(truth.get(w, ())), 'worker %d: leak events for peers %s, the kernel shows it holding %s' % (
            w, got, sorted(truth.get(w, ()))))
    others = [e for e in leaks_of(evs) if e.get('pid') not in ws]
    probs.check(not others, 'leak events from pids that are not workers: %s' % describe_events(others))
    for e in leaks_of(evs):
        probs.check('ngx_event_accept' in functions(e), 'leak of fd %s: open_stack does not name ngx_event_accept: %s' % (
            e.get('fd'), functions(e)))
    root_watchers = [w for x in ws for w in watchers_of(x) if w.uids and 0 in w.uids]
    probs.check(not root_watchers, 'watcher processes running as root watch nobody\'s workers: %s' % root_watchers)
    probs.check(http_get(port, '/index.html').startswith('HTTP/1.1 200'), 'a request failed after the leaks')
    probs.done()


# ---------------------------------------------------------------- 5. seccomp

def under_seccomp(case, mode):
    exe = P['leaky_server']
    p = case.start([P['seccomp_launch'], mode, exe, '-p', 'LSLS'], name='leaky_server')
    m = p.wait_line(r'(PORT \d+|SECCOMP_UNAVAILABLE.*)$')
    if m.group(1).startswith('SECCOMP_UNAVAILABLE'):
        raise Skip('no seccomp filters here: %s' % m.group(1))
    conns = drive(p, p.port(), 'LSLS')
    wait_close_wait([p.pid], 2)
    probs = Problems()
    try:
        expect_exact_leaks(p, p.pid, leaked(conns), exe=exe)
    except Fail as ex:
        probs.check(False, str(ex))
    rc, _ = p.finish(5)
    probs.check(rc == 0, 'the program ended with %s, expected exit status 0 (%s mode filter); stderr: %s' % (
        status_text(rc), mode, one_line(p.stderr_text())))
    probs.done()


@test
def seccomp_errno_filter_program_unharmed_leaks_reported(case):
    """pidfd_getfd, process_vm_readv and ptrace fail with EPERM (a container's filter): the
    program runs and exits normally and its 2 leaks are reported with function names."""
    under_seccomp(case, 'errno')


@test
def seccomp_kill_filter_program_unharmed_leaks_reported(case):
    """The same calls kill the caller (SECCOMP_RET_KILL_PROCESS): the program must never make
    them itself, and its 2 leaks are still reported."""
    under_seccomp(case, 'kill')


# ---------------------------------------------------------------- 6. a hostile worker scribbles over the region

@test
def scribbled_region_harms_no_watcher_and_no_root_process(case):
    """A worker that becomes nobody overwrites every memfd:closewait shared mapping it has with
    random bytes for 2 s, while its root parent leaks 2 connections: the parent's 2 leaks are
    reported, the parent is unharmed, and no watcher process dies of a signal."""
    exe = P['scribble']
    mark = Orphans.mark()
    watch = WatcherSampler(case.token)
    p = case.start([exe, '2'])
    port = p.port()
    p.wait_line(r'WORKER (\d+)$')
    p.wait_line(r'SCRIBBLING$')
    conns = [connect_accepted(p, port)[0] for _ in range(2)]
    for c in conns:
        c.close()
    probs = Problems()
    poll_until(lambda: len(leaks_of(p.events(), p.pid)) >= 2, REPORT_WAIT)
    try:
        p.wait_line(r'REAPED', 5.0)
    except Fail as ex:
        probs.check(False, str(ex))
    time.sleep(QUIET)
    evs = leaks_of(p.events(), p.pid)
    want = sorted(c.server_peer for c in conns)
    probs.check(sorted(str(e.get('peer')) for e in evs) == want,
                'expected exactly 2 leak events of the root parent (pid %d) for %s, got %d: %s' % (
                    p.pid, want, len(evs), describe_events(p.events())))
    scribbled = p.lines_matching(r'SCRIBBLED maps=(\d+) bytes=(\d+)')
    probs.check(scribbled and int(scribbled[0].group(1)) > 0,
                'setup: the worker found no memfd:closewait mapping to overwrite (%s)' % (
                    scribbled[0].group(0) if scribbled else 'it did not finish'))
    rc, _ = p.finish(5)
    probs.check(rc == 0, 'the root parent ended with %s, expected exit status 0; %s' % (status_text(rc), p.context()))
    # every watcher has ended with its program: how?  (They are our children once their
    # launcher exits: the runner is a subreaper.)
    poll_until(lambda: (Orphans.reap() or True) and not watcher_processes(case.token), 3.0)
    seen = watch.stop().seen
    Orphans.reap()
    if Orphans.enabled:
        # the test signals nothing: an orphan (a watcher, also one that never got as far as
        # naming itself) killed by a signal died of what it read
        died = ['%d (%s) %s' % (pid, comm, how) for pid, comm, how, sig in Orphans.since(mark) if sig]
        probs.check(not died, 'watcher process(es) died of a signal: %s' % ', '.join(died))
    err = p.stderr_text()
    bad = [m for m in ('Segmentation fault', 'AddressSanitizer', 'runtime error', 'core dumped', 'Bus error')
           if m in err]
    probs.check(not bad, 'stderr shows %s: %s' % (bad, one_line(err)))
    probs.done()
    return '%s; watchers seen %d%s' % (scribbled[0].group(0), len(seen),
                                       '' if Orphans.enabled else ' (their exit statuses unknown: not a subreaper)')


# ---------------------------------------------------------------- 7. faults of the watcher itself

def one_watcher(pid):
    ws = poll_until(lambda: watchers_of(pid), 3.0)
    check(ws, 'setup: no watcher process found for pid %d (watchers of this test: %s)' % (
        pid, watcher_processes()))
    return ws


@test
def watcher_killed_later_leaks_still_reported(case):
    """SIGKILL to a running server's watcher: 2 leaks made afterwards are still reported, and
    one line on stderr says the watcher was lost."""
    exe = P['leaky_server']
    p = case.start([exe, '-p', 'LLLL'])
    port = p.port()
    first = drive(p, port, 'LL')
    expect_exact_leaks(p, p.pid, leaked(first), exe=exe)
    for w in one_watcher(p.pid):
        os.kill(w.pid, signal.SIGKILL)
        case.killed.append(w.pid)
    poll_until(lambda: (Orphans.reap() or True) and not [w for w in watchers_of(p.pid) if w.pid in case.killed], 2.0)
    second = drive(p, port, 'LL')
    probs = Problems()
    try:
        expect_exact_leaks(p, p.pid, leaked(first) + leaked(second), exe=exe)
    except Fail as ex:
        probs.check(False, 'after the watcher was killed: ' + str(ex))
    lines = [l for l in stderr_lines(p.stderr_text()) if 'watcher' in l.lower()]
    probs.check(len(lines) == 1, 'expected one line on stderr about the watcher, got %d: %s' % (
        len(lines), one_line(p.stderr_text()) or '(stderr empty)'))
    rc, _ = p.finish(5)
    probs.check(rc == 0, 'the program ended with %s; %s' % (status_text(rc), p.context()))
    probs.done()


@test
def watcher_stopped_exit_is_prompt_and_summary_true(case):
    """SIGSTOP to the watcher, then the program exits: the exit takes < 2.5 s and the exit
    summary's leaks_open is what the kernel shows the program holding."""
    exe = P['leaky_server']
    p = case.start([exe, '-p', 'LSL'])
    conns = drive(p, p.port(), 'LSL')
    expect_exact_leaks(p, p.pid, leaked(conns), exe=exe)
    for w in one_watcher(p.pid):
        os.kill(w.pid, signal.SIGSTOP)
        case.killed.append(w.pid)
    held = len(held_in_close_wait([p.pid]))
    check(held == 2, 'setup: the kernel shows %d CLOSE_WAIT sockets held by the program, expected 2' % held)
    rc, took = p.finish(6)
    probs = Problems()
    probs.check(rc is not None, 'the program had not exited 6 s after being asked (watcher stopped); %s' % p.context())
    probs.check(rc is None or took < 2.5, 'the exit took %.2f s with the watcher stopped, expected < 2.5 s' % took)
    probs.check(rc is None or rc == 0, 'the program ended with %s' % status_text(rc))
    sums = exit_summaries(p.events(), p.pid)
    probs.check(len(sums) == 1 and sums[0].get('leaks_open') == held,
                'expected one exit summary with leaks_open=%d (what the kernel showed held), got %s' % (
                    held, describe_events(sums) if sums else 'none; log: %s' % describe_events(p.events())))
    probs.done()


def start_where_pid_was(case, argv, pid, tries=5):
    """Starts argv as a plain program, trying to get `pid` (free now) through ns_last_pid: the
    kernel gives the next pid after it.  (program, whether the pid was reused)."""
    for _ in range(tries):
        try:
            with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
                f.write(str(pid - 1))
        except OSError:
            break
        prog = case.start(argv, lib=False)
        if prog.pid == pid:
            return prog, True
        prog.kill_group()
        prog.reap()
    return case.start(argv, lib=False), False


@test
def watcher_killed_no_signal_reaches_another_process(case):
    """Kill the watcher, start an unrelated process (given the watcher's pid where the kernel
    allows it), let the program exit: that process receives no signal at all."""
    exe = P['leaky_server']
    p = case.start([exe, '-p', 'L'])
    conns = drive(p, p.port(), 'L')
    expect_exact_leaks(p, p.pid, leaked(conns), exe=exe)
    ws = one_watcher(p.pid)
    for w in ws:
        os.kill(w.pid, signal.SIGKILL)
        case.killed.append(w.pid)
    gone = poll_until(lambda: (Orphans.reap() or True) and all(proc_stat(w.pid) is None for w in ws), 3.0)
    check(gone, 'setup: the killed watcher %s is still there' % ws)
    record = case.path('signals.txt')
    rec, reused = start_where_pid_was(case, [P['sigrec'], record], ws[0].pid)
    rec.wait_line(r'READY \d+$')
    rc, took = p.finish(6)
    time.sleep(0.3)
    rec_rc, _ = rec.finish(3)
    with open(record) as f:
        got = f.read().split()
    sigs = [signal_name(int(x)) for x in got if x.isdigit()]
    check(not sigs, 'the unrelated process %d%s received %s' % (
        rec.pid, ' (on the dead watcher\'s pid)' if reused else '', ', '.join(sigs)))
    check(rc == 0, 'the program ended with %s (exit took %.2f s); %s' % (status_text(rc), took, p.context()))
    check(rec_rc == 0, 'the unrelated process ended with %s' % status_text(rec_rc))
    return 'pid reused' if reused else 'pid not reused (ns_last_pid unavailable or raced)'


# ---------------------------------------------------------------- 8. outputs and inputs that block

@test
def log_fifo_without_reader_does_not_block(case):
    """CLOSEWAIT_LOG is a FIFO nobody reads: the program starts and answers a connection within
    1 s, and exits within 1 s of being asked."""
    fifo = case.path('log.fifo')
    os.mkfifo(fifo)
    t0 = time.monotonic()
    p = case.start([P['leaky_server'], '-p', 'S'], log=fifo)
    try:
        port = p.port(3.0)
    except Fail:
        raise Fail('no PORT line 3 s after the start with CLOSEWAIT_LOG a FIFO without reader: the program '
                   'blocked (%s)' % p.context())
    c = Client(port)
    hello = c.read_line(3.0)
    answered = time.monotonic() - t0
    c.close()
    check(hello == 'HELLO', 'the connection was not answered (got %r); %s' % (hello, p.context()))
    check(answered < 1.0, 'the first connection was answered %.2f s after the start, expected < 1 s' % answered)
    rc, took = p.finish(3)
    check(rc is not None, 'the program had not exited 3 s after being asked; %s' % p.context())
    check(took < 1.0 and rc == 0, 'the exit took %.2f s (%s), expected < 1 s and status 0' % (took, status_text(rc)))


@test
def suppressions_dev_zero_serves_and_watcher_stays_cheap(case):
    """CLOSEWAIT_SUPPRESSIONS=/dev/zero (an endless file): the program serves normally, no
    watcher process uses more than 0.5 s of CPU, and none is left once the program exits."""
    argv = [P['leaky_server'], '-p', 'LS']
    if shutil.which('prlimit') and not lib_uses_sanitizer():
        argv = ['prlimit', '--as=%d' % (4 << 30), '--'] + argv      # a reader that hoards cannot eat the machine
    watch = WatcherSampler(case.token)
    p = case.start(argv, env={'CLOSEWAIT_SUPPRESSIONS': '/dev/zero'}, name='leaky_server')
    probs = Problems()
    try:
        drive(p, p.port(3.0), 'LS')
    except Fail as ex:
        probs.check(False, 'it did not serve: %s' % ex)
    time.sleep(1.5)
    rc, took = p.finish(5)
    probs.check(rc is not None, 'the program had not exited %.1f s after being asked; %s' % (took, p.context()))
    probs.check(rc is None or rc == 0, 'the program ended with %s' % status_text(rc))
    gone = poll_until(lambda: (Orphans.reap() or True) and not watcher_processes(case.token), 3.0)
    probs.check(gone, 'watcher process(es) still running 3 s after the program exited: %s' % watcher_processes(case.token))
    cpu = watch.stop().cpu
    hogs = {w: c for w, c in cpu.items() if c > 0.5}
    probs.check(not hogs, 'watcher CPU over 0.5 s: %s' % ', '.join('pid %d %.2f s' % kv for kv in sorted(hogs.items())))
    probs.check(cpu, 'setup: no watcher process seen while the program ran')
    probs.done()


@test
def stderr_full_pipe_exit_is_prompt(case):
    """stderr is a full pipe nobody reads (reports go there): the program's exit takes < 2 s."""
    r, w = os.pipe()
    case.undo.append(lambda: os.close(r))
    filled = fill_pipe(w)
    p = case.start([P['leaky_server'], '-p', 'LL'], log=None, stderr=w)
    os.close(w)
    conns = drive(p, p.port(), 'LL')
    wait_close_wait([p.pid], len(leaked(conns)))
    time.sleep(GRACE_MS / 1000.0 + 1.0)          # the reports are due: their writes block
    check(p.alive(), 'the program ended by itself with %s' % status_text(p.proc.poll()))
    rc, took = p.finish(6)
    check(rc is not None, 'the program had not exited 6 s after being asked (stderr a full pipe of %d bytes)' % filled)
    check(took < 2.0, 'the exit took %.2f s with stderr a full pipe, expected < 2 s' % took)
    check(rc == 0, 'the program ended with %s' % status_text(rc))


@test
def thread_mode_stderr_closed_pipe_no_sigpipe(case):
    """CLOSEWAIT_WATCHER=thread, stderr a pipe whose read end is closed: writing a report must
    not kill the program with SIGPIPE; it exits with status 0."""
    r, w = os.pipe()
    os.close(r)
    p = case.start([P['leaky_server'], '-p', 'L'], log=None, stderr=w, env={'CLOSEWAIT_WATCHER': 'thread'})
    os.close(w)
    drive(p, p.port(), 'L')
    wait_close_wait([p.pid], 1)
    time.sleep(GRACE_MS / 1000.0 + 1.0)          # the report is due
    check(p.alive(), 'the program died with %s once its report was due' % status_text(p.proc.poll()))
    rc, _ = p.finish(5)
    check(rc == 0, 'the program ended with %s at exit, expected status 0' % status_text(rc))


@test
def log_on_full_filesystem_program_runs_one_warning(case):
    """CLOSEWAIT_LOG on a full tmpfs: the program runs and exits normally, and one line on
    stderr says the reports could not be written."""
    mnt = case.path('full')
    os.mkdir(mnt)
    m = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=10)
    if m.returncode != 0:
        raise Skip('cannot mount a tmpfs: %s' % one_line(m.stdout.decode('utf-8', 'replace')))
    case.undo.append(lambda: subprocess.run(['umount', '-l', mnt], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, timeout=10))
    try:
        with open(os.path.join(mnt, 'filler'), 'wb') as f:
            for _ in range(1024):
                f.write(b'\0' * 4096)
                f.flush()
    except OSError:
        pass
    log = os.path.join(mnt, 'closewait.log')
    p = case.start([P['leaky_server'], '-p', 'LL'], log=log)
    drive(p, p.port(), 'LL')
    wait_close_wait([p.pid], 2)
    time.sleep(GRACE_MS / 1000.0 + 1.0)
    check(p.alive(), 'the program ended by itself with %s' % status_text(p.proc.poll()))
    rc, took = p.finish(5)
    check(rc == 0, 'the program ended with %s (exit took %.2f s)' % (status_text(rc), took))
    lines = [l for l in stderr_lines(p.stderr_text()) if not l.lstrip().startswith('{')]
    said = [l for l in lines if 'closewait' in l.lower() and re.search(r'writ|space', l, re.I)]
    check(len(said) == 1, 'expected one line on stderr saying the reports could not be written, got %d: %s' % (
        len(said), one_line('\n'.join(lines)) or '(stderr empty)'))


# ---------------------------------------------------------------- 9. containers

def pids_cgroup_parent():
    """A pids cgroup directory we may create children in: cgroup v2 (pids enabled for children
    of the root) or the v1 pids hierarchy.  (path, version) or Skip."""
    why = []
    for root in ('/sys/fs/cgroup', '/sys/fs/cgroup/unified'):
        try:
            with open(os.path.join(root, 'cgroup.subtree_control')) as f:
                if 'pids' in f.read().split() and os.access(root, os.W_OK):
                    return root, 2
                why.append('%s: pids not enabled in cgroup.subtree_control' % root)
        except OSError:
            pass
    v1 = '/sys/fs/cgroup/pids'
    if os.path.isdir(v1) and os.access(v1, os.W_OK) and os.path.exists(os.path.join(v1, 'cgroup.procs')):
        return v1, 1
    why.append('no writable cgroup v1 pids hierarchy')
    raise Skip('no writable pids cgroup: ' + '; '.join(why))


@test
def pids_cgroup_prefork_forks_never_fail(case):
    """In a pids cgroup of 100 (a container's limit), a prefork server forks 60 workers that
    accept connections: none of its fork() calls fails, and the workers serve."""
    parent, version = pids_cgroup_parent()
    cg = os.path.join(parent, 'cwdeploy-%s' % case.token)
    try:
        os.mkdir(cg)
    except OSError as e:
        raise Skip('cannot create a cgroup under %s: %s' % (parent, e))

    def remove():
        poll_until(lambda: _rmdir(cg), 3.0, 0.1)
    case.undo.append(remove)
    try:
        with open(os.path.join(cg, 'pids.max'), 'w') as f:
            f.write('100')
    except OSError as e:
        raise Skip('cannot set pids.max in %s: %s' % (cg, e))
    argv = ['/bin/sh', '-c', 'echo $$ > %s/cgroup.procs && exec "$@"' % cg, 'sh', P['prefork'], '60']
    p = case.start(argv, name='prefork')
    port = p.port()
    m = p.wait_line(r'FORKED ok=(\d+) failed=(\d+)$', 15.0)
    ok, failed = int(m.group(1)), int(m.group(2))
    probs = Problems()
    reasons = [x.group(1) for x in p.lines_matching(r'FORK_FAILED \d+ (.*)$')]
    probs.check(failed == 0 and ok == 60, '%d of 60 fork() calls failed in a pids cgroup of 100 (cgroup v%d): %s' % (
        failed, version, ', '.join(sorted(set(reasons)))))
    try:
        with open(os.path.join(cg, 'pids.current')) as f:
            current = f.read().strip()
    except OSError:
        current = '?'
    served = 0
    for _ in range(10):
        try:
            c = Client(port, timeout=3.0)
            if c.read_line(3.0) == 'HELLO':
                served += 1
            c.close()
        except OSError:
            pass
    probs.check(served == 10, 'the workers answered %d of 10 connections' % served)
    rc, _ = p.finish(10)
    probs.check(rc == 0, 'the server ended with %s; %s' % (status_text(rc), p.context()))
    probs.done()
    return 'pids.current %s with 60 workers (cgroup v%d)' % (current, version)


def _rmdir(path):
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


@test
def pid_namespace_init_reaps_only_its_children(case):
    """`unshare --pid --fork --mount-proc`: the program is PID 1 (it inherits every orphan of its
    namespace), makes TCP sockets, forks 3 children that each make one and exit, and reaps with
    wait() until ECHILD: wait() returns exactly its 3 children; its own leak is still reported."""
    if shutil.which('unshare') is None:
        raise Skip('unshare is not installed (util-linux)')
    probe = subprocess.run(['unshare', '--pid', '--fork', '--mount-proc', 'true'], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10)
    if probe.returncode != 0:
        raise Skip('unshare --pid --fork --mount-proc is not permitted: %s' % one_line(probe.stdout.decode('utf-8', 'replace')))
    p = case.start(['unshare', '--pid', '--fork', '--mount-proc', P['pid1']], name='pid1')
    pid = int(p.wait_line(r'PID (\d+)$').group(1))
    check(pid == 1, 'setup: the program is pid %d in its namespace, not 1' % pid)
    port = p.port()
    end = p.wait_line(r'(ECHILD|WAIT_TIMEOUT.*)$', 12.0).group(1)
    children = sorted(int(m.group(1)) for m in p.lines_matching(r'CHILD (\d+)$'))
    reaped = sorted(int(m.group(1)) for m in p.lines_matching(r'REAPED (\d+) '))
    probs = Problems()
    probs.check(end == 'ECHILD', 'wait() did not reach ECHILD within 8 s: %s' % end)
    strangers = [x for x in reaped if x not in children]
    probs.check(not strangers, 'wait() in PID 1 returned pids it never forked: %s (its children: %s)' % (strangers, children))
    probs.check(sorted(set(reaped) & set(children)) == children, 'wait() returned %s, its children are %s' % (reaped, children))
    c, _, _ = connect_accepted(p, port)
    c.close()
    try:
        p.wait_events(lambda e: is_leak(e) and 'leak_here' in functions(e), 1, REPORT_WAIT, what='leak events naming leak_here')
        time.sleep(QUIET)
        evs = leaks_of(p.events())
        probs.check(len(evs) == 1 and evs[0].get('peer') == c.server_peer,
                    'expected exactly one leak event, for %s; got %s' % (c.server_peer, describe_events(evs)))
    except Fail as ex:
        probs.check(False, str(ex))
    truth = [s for s in close_wait_sockets() if s['peer'] == c.server_peer]
    probs.check(truth, 'the kernel does not show the leaked connection %s in CLOSE_WAIT' % c.server_peer)
    rc, _ = p.finish(5)
    probs.check(rc == 0, 'the namespace\'s init ended with %s; %s' % (status_text(rc), p.context()))
    probs.done()


# ---------------------------------------------------------------- 10. report signals that would take over termination

def report_signal_refused(case, value, sig):
    p = case.start([P['leaky_server'], '-p', ''], env={'CLOSEWAIT_REPORT_SIGNAL': value})
    p.port()
    time.sleep(0.3)
    lines = stderr_lines(p.stderr_text())
    probs = Problems()
    probs.check(len(lines) == 1 and 'CLOSEWAIT_REPORT_SIGNAL' in lines[0],
                'CLOSEWAIT_REPORT_SIGNAL=%s: expected one warning line on stderr naming the variable, got %d: %s' % (
                    value, len(lines), one_line('\n'.join(lines)) or '(stderr empty)'))
    p.signal(sig)
    rc = p.wait_exit(2.0)
    probs.check(rc is not None, 'CLOSEWAIT_REPORT_SIGNAL=%s: the program was still running 2 s after %s '
                '(the library took the signal over)' % (value, signal_name(sig)))
    probs.check(rc is None or rc == -sig or rc >= 0, 'ended with %s after %s' % (status_text(rc), signal_name(sig)))
    probs.done()


@test
def report_signal_TERM_refused(case):
    """CLOSEWAIT_REPORT_SIGNAL=TERM: refused with one warning; SIGTERM still ends the program."""
    report_signal_refused(case, 'TERM', signal.SIGTERM)


@test
def report_signal_15_refused(case):
    """CLOSEWAIT_REPORT_SIGNAL=15 (SIGTERM by number): refused; SIGTERM still ends the program."""
    report_signal_refused(case, '15', signal.SIGTERM)


@test
def report_signal_INT_refused(case):
    """CLOSEWAIT_REPORT_SIGNAL=INT: refused; SIGINT still ends the program."""
    report_signal_refused(case, 'INT', signal.SIGINT)


@test
def report_signal_2_refused(case):
    """CLOSEWAIT_REPORT_SIGNAL=2 (SIGINT by number): refused; SIGINT still ends the program."""
    report_signal_refused(case, '2', signal.SIGINT)


@test
def report_signal_HUP_refused(case):
    """CLOSEWAIT_REPORT_SIGNAL=HUP: refused; SIGHUP still ends the program."""
    report_signal_refused(case, 'HUP', signal.SIGHUP)


# ---------------------------------------------------------------- 11. a log file owned by another user

@test
def log_owned_by_another_user_left_alone(case):
    """CLOSEWAIT_LOG names a file (mode 0666) owned by nobody, the program runs as root: the
    library writes nothing into it and says why on stderr."""
    log = case.path('nobodys.log')
    with open(log, 'w'):
        pass
    os.chmod(log, 0o666)
    os.chown(log, NOBODY, NOBODY)
    p = case.start([P['leaky_server'], '-p', 'L'], log=log)
    drive(p, p.port(), 'L')
    wait_close_wait([p.pid], 1)
    time.sleep(GRACE_MS / 1000.0 + 1.0)          # the report is due
    rc, _ = p.finish(5)
    st = os.stat(log)
    probs = Problems()
    probs.check(st.st_size == 0, 'the library wrote %d bytes into a log owned by uid %d: %s' % (
        st.st_size, NOBODY, one_line(open(log, errors='replace').read(), 200)))
    probs.check(st.st_uid == NOBODY, 'the log now belongs to uid %d' % st.st_uid)
    text = [l for l in stderr_lines(p.stderr_text()) if not l.lstrip().startswith('{')]
    why = [l for l in text if ('CLOSEWAIT_LOG' in l or log in l) and re.search(r'own|uid|user', l, re.I)]
    probs.check(why, 'no warning on stderr naming the log and its owner; stderr: %s' % (one_line('\n'.join(text)) or '(empty)'))
    probs.check(rc == 0, 'the program ended with %s' % status_text(rc))
    probs.done()


# ---------------------------------------------------------------- 12. privileges dropped before the first socket

@test
def dropped_privileges_before_first_socket_named_frames(case):
    """A program that becomes nobody before its first socket and leaks: the report names the
    program's own function (leak_here), with no unnamed frame of the program."""
    exe = P['leaky_server']
    logs = case.path('logs')       # like /tmp: a log the program may still open once it is nobody
    os.mkdir(logs)
    os.chmod(logs, 0o1777)
    p = case.start([exe, '-u', '-p', 'L'], log=os.path.join(logs, 'closewait.log'))
    p.wait_line(r'DROPPED uid=%d' % NOBODY)
    conns = drive(p, p.port(), 'L')
    wait_close_wait([p.pid], 1)
    expect_exact_leaks(p, p.pid, leaked(conns), exe=exe)
    rc, _ = p.finish(5)
    check(rc == 0, 'the program ended with %s; %s' % (status_text(rc), p.context()))


# ---------------------------------------------------------------- main

class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('-k', dest='k', help='run only the tests whose name contains this')
    ap.add_argument('-v', action='store_true', help='print the traceback of a failure')
    ap.add_argument('--keep', action='store_true', help="keep a failed test's temporary directory")
    args = ap.parse_args()
    selected = [(n, f) for n, f in TESTS if not args.k or args.k in n]
    setup_error = None
    if os.geteuid() != 0:
        setup_error = 'SKIP', 'the suite runs as root (it changes users, mounts, cgroups)'
    elif missing_library():
        setup_error = 'FAIL', 'library not found: %s (run make at the repository root)' % ', '.join(missing_library())
    elif shutil.which('ss') is None:
        setup_error = 'FAIL', 'ss (iproute2) is not installed: no ground truth'
    else:
        try:
            P.update(build_programs())
        except Fail as ex:
            setup_error = 'FAIL', 'build: %s' % ex
        except OSError as ex:
            setup_error = 'FAIL', 'build: %s' % ex
    if setup_error:
        return harness.fail_all(selected, setup_error[1], setup_error[0])
    Orphans.enable()
    signal.signal(signal.SIGALRM, _alarm)
    t_all = time.monotonic()
    runner = DeployRunner(verbose=args.v, note_sep=': ', clock=time.monotonic)
    runner.keep = args.keep
    for name, fn in selected:
        runner.case = Case(name)
        runner.run_one(name, fn)
    if args.v:
        sys.stderr.write('total %.1f s\n' % (time.monotonic() - t_all))
    return runner.finish()


class DeployRunner(harness.Runner):
    """Each test gets its Case (killed at its end) and at most TEST_LIMIT seconds."""
    fail_exceptions = (Fail, _Timeout)

    def call(self, name, fn):
        signal.alarm(TEST_LIMIT)
        note = fn(self.case)
        signal.alarm(0)
        return note

    def failure_text(self, name, ex):
        signal.alarm(0)
        if isinstance(ex, _Timeout):
            return 'the test itself did not finish within %d s; %s' % (
                TEST_LIMIT, '; '.join(p.context() for p in self.case.programs if hasattr(p, 'context')))
        return self.text(ex)

    def cleanup(self, name, ok):
        signal.alarm(0)
        self.case.cleanup(keep=self.keep and not ok)

if __name__ == '__main__':
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
