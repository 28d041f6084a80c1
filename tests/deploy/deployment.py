"""Helpers of the deployment suite (tests/deploy/run.py): one per concept.

  build_programs()      the C programs of progs/, built into build/
  Case                  one test's temporary directory, environment and processes, all
                        killed at its end (process groups, and a sweep by an environment mark)
  Program               a program started in its own process group, its stdout lines read as
                        they come, stderr kept in a file
  Client                a connection from the test to a program on 127.0.0.1
  read_events() ...     the library's JSON Lines log
  close_wait_sockets()  the kernel's ground truth (ss)
  watcher_processes()   the library's watcher processes, from /proc
  Orphans               the runner is a child subreaper: the watcher processes the library
                        starts become its children when their launcher exits, so how each one
                        ended (an exit status, a signal) is known exactly

Standard library only.
"""
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
PROGS = os.path.join(HERE, 'progs')
BUILD = os.path.join(HERE, 'build')
HOST = '127.0.0.1'
NOBODY = 65534
GRACE_MS = 300
# How long to wait for something that should come (a report is due ~0.4 s after the FIN):
# generous, it costs time only on failure.  Timing requirements are asserted separately.
REPORT_WAIT = 5.0
TOKEN_VAR = 'CWDEPLOY_TOKEN'
CLK_TCK = os.sysconf('SC_CLK_TCK')

sys.path.insert(0, TESTS)
import harness  # noqa: E402  (tests/harness: what every suite shares)

Fail = harness.TestFailure
Skip = harness.TestSkip
check = harness.check
library = harness.library
_procinfo_watchers_of = harness.watchers_of


def poll_until(fn, timeout, interval=0.05):
    """Calls fn until it returns something true or `timeout` seconds pass; the last value."""
    return harness.poll_until(fn, timeout, interval, clock=time.monotonic)


def missing_library():
    return harness.missing_library(library())


signal_name = harness.signal_name


def status_text(rc):
    """A Popen returncode in words."""
    if rc is None:
        return 'still running'
    if rc < 0:
        return 'killed by %s' % signal_name(-rc)
    return 'exit status %d' % rc


def one_line(text, limit=400):
    t = ' | '.join(l for l in text.splitlines() if l.strip())
    return t if len(t) <= limit else t[:limit] + '...'


# ---------------------------------------------------------------- building the programs

CFLAGS = harness.CFLAGS['deploy']


def build_programs():
    """Builds every progs/*.c into build/ (when the source is newer); returns {name: path}.
    Raises Fail with gcc's words if one does not build (the shared build, tests/harness)."""
    return harness.build_programs('deploy')


# ---------------------------------------------------------------- /proc

def proc_stat(pid):
    """From /proc/PID/stat: dict(comm, state, ppid, pgid, utime, stime, start), None if gone."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            raw = f.read().decode('utf-8', 'replace')
    except OSError:
        return None
    i = raw.rfind(')')
    rest = raw[i + 2:].split()
    try:
        return {'comm': raw[raw.find('(') + 1:i], 'state': rest[0], 'ppid': int(rest[1]),
                'pgid': int(rest[2]), 'utime': int(rest[11]), 'stime': int(rest[12]),
                'start': int(rest[19])}
    except (IndexError, ValueError):
        return None


def proc_uids(pid):
    """(real, effective) uid of a process, None if gone."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('Uid:'):
                    v = line.split()
                    return int(v[1]), int(v[2])
    except OSError:
        pass
    return None


def proc_caps(pid, which='CapEff'):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(which + ':'):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return None


def proc_environ(pid):
    try:
        with open('/proc/%d/environ' % pid, 'rb') as f:
            return f.read().split(b'\0')
    except OSError:
        return []


def proc_argv0(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')[0].decode('utf-8', 'replace')
    except OSError:
        return None


def all_pids():
    return [int(d) for d in os.listdir('/proc') if d.isdigit()]


def cpu_seconds(pid):
    st = proc_stat(pid)
    return None if st is None else (st['utime'] + st['stime']) / CLK_TCK


def boot_ticks():
    """Now, in the clock ticks since boot that /proc/PID/stat's start time counts."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLK_TCK)


def holders_of_pipe(fd):
    """Pids (and their names) that hold the pipe behind our descriptor fd."""
    want = os.readlink('/proc/self/fd/%d' % fd)
    out = []
    me = os.getpid()
    for pid in all_pids():
        if pid == me:
            continue
        try:
            for f in os.listdir('/proc/%d/fd' % pid):
                try:
                    if os.readlink('/proc/%d/fd/%s' % (pid, f)) == want:
                        out.append('%d (%s, argv0 %s)' % (pid, (proc_stat(pid) or {}).get('comm'), proc_argv0(pid)))
                        break
                except OSError:
                    pass
        except OSError:
            pass
    return out


# ---------------------------------------------------------------- the library's watchers

class Watcher:
    def __init__(self, pid, target, uids, state):
        self.pid, self.target, self.uids, self.state = pid, target, uids, state

    def __repr__(self):
        return 'watcher %d (watching %s, uid %s, state %s)' % (
            self.pid, ','.join(map(str, self.target)) or '?', self.uids[0] if self.uids else '?', self.state)


def pidfd_targets(pid):
    """The processes a process holds pidfds of (from /proc/PID/fdinfo: the watcher holds one on
    each program process it watches)."""
    out = set()
    try:
        fds = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink('/proc/%d/fd/%s' % (pid, fd)) != 'anon_inode:[pidfd]':
                continue
            with open('/proc/%d/fdinfo/%s' % (pid, fd)) as f:
                for line in f:
                    if line.startswith('Pid:'):
                        out.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def watcher_processes(token=None):
    """Every live process whose argv[0] is closewait-watcher (with our environment mark, when
    token is given: the watcher starts with its program's environment), with the program
    processes it holds pidfds of."""
    out = []
    mark = ('%s=%s' % (TOKEN_VAR, token)).encode()
    for pid in all_pids():
        if proc_argv0(pid) != 'closewait-watcher':
            continue
        if token is not None and mark not in proc_environ(pid):
            continue
        st = proc_stat(pid)
        if st is None or st['state'] in 'ZX':
            continue
        out.append(Watcher(pid, sorted(pidfd_targets(pid)), proc_uids(pid), st['state']))
    return out


def watchers_of(pid):
    """The watcher processes that watch program pid: started by it (the shared lookup of
    tests/harness) or holding a pidfd of it."""
    found = set(_procinfo_watchers_of(pid))
    out = []
    for w in watcher_processes():
        if w.pid in found or pid in w.target:
            out.append(w)
    return out


class WatcherSampler:
    """Looks at this test's watcher processes every 50 ms from a thread, for as long as the test
    needs: every one seen (pid -> its last Watcher view) and the most CPU each used."""

    def __init__(self, token, interval=0.05):
        self.token, self.interval = token, interval
        self.seen = {}
        self.cpu = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self):
        for w in watcher_processes(self.token):
            c = cpu_seconds(w.pid)
            with self._lock:
                self.seen[w.pid] = w
                if c is not None:
                    self.cpu[w.pid] = max(self.cpu.get(w.pid, 0.0), c)

    def _run(self):
        deadline = time.monotonic() + 120          # bounded, whatever happens to the test
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.sample()
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        self.sample()
        return self

    def watchers(self):
        with self._lock:
            return sorted(self.seen.values(), key=lambda w: w.pid)


def threads_of(pid):
    try:
        return len(os.listdir('/proc/%d/task' % pid))
    except OSError:
        return 0


# ---------------------------------------------------------------- orphans (subreaper)

PR_SET_CHILD_SUBREAPER = 36


class Orphans:
    """The runner as child subreaper: a process our programs leave behind (the library's watcher
    once its launcher exits, a daemon once its parent exits) becomes our child, and its end is
    reaped here.  `ended` maps pid -> (name, how it ended)."""
    enabled = False
    ended = {}
    order = []             # pids in the order they were reaped
    _ours = set()          # pids of Popen children: those are reaped by their Popen, never here

    @classmethod
    def enable(cls):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            cls.enabled = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            cls.enabled = False

    @classmethod
    def own(cls, pid):
        cls._ours.add(pid)

    @classmethod
    def disown(cls, pid):
        cls._ours.discard(pid)

    @classmethod
    def mark(cls):
        """A point in the reaping order: since(mark) gives what was reaped after it."""
        return len(cls.order)

    @classmethod
    def since(cls, mark):
        return [(pid,) + cls.ended[pid] for pid in cls.order[mark:]]

    @classmethod
    def reap(cls):
        """Reaps every ended orphan; returns the pids reaped now."""
        if not cls.enabled:
            return []
        me = os.getpid()
        got = []
        for pid in all_pids():
            if pid in cls._ours:
                continue
            st = proc_stat(pid)
            if st is None or st['ppid'] != me or st['state'] != 'Z':
                continue
            try:
                r, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if r != pid:
                continue
            if os.WIFSIGNALED(status):
                how = 'killed by %s%s' % (signal_name(os.WTERMSIG(status)),
                                          ' (core dumped)' if os.WCOREDUMP(status) else '')
            else:
                how = 'exit status %d' % os.WEXITSTATUS(status)
            cls.ended[pid] = (st['comm'], how, os.WIFSIGNALED(status) and os.WTERMSIG(status))
            cls.order.append(pid)
            got.append(pid)
        return got


# ---------------------------------------------------------------- one test's world

class Case:
    """A test's temporary directory, environment mark and processes.  cleanup() kills every
    process the test started (its process groups, and anything carrying its mark) and undoes
    what it set up (mounts, cgroups)."""
    serial = 0

    def __init__(self, name):
        Case.serial += 1
        self.name = name
        self.token = '%d-%d' % (os.getpid(), Case.serial)
        self.dir = tempfile.mkdtemp(prefix='cwdeploy-')
        os.chmod(self.dir, 0o755)
        self.t_start = boot_ticks() - CLK_TCK    # a second of slack
        self.programs = []
        self.groups = set()
        self.undo = []          # callables, run last-first at cleanup
        self.killed = []        # pids we signalled on purpose

    def path(self, name):
        return os.path.join(self.dir, name)

    def env(self, lib=True, extra=None, log=None):
        """The environment of a program: ours without any CLOSEWAIT_ variable or LD_PRELOAD, the
        test's mark, and with the library: json reports to `log` with a short grace."""
        e = {k: v for k, v in os.environ.items() if not k.startswith('CLOSEWAIT_') and k != 'LD_PRELOAD'}
        e[TOKEN_VAR] = self.token
        if lib:
            e['LD_PRELOAD'] = library()
            e['CLOSEWAIT_FORMAT'] = 'json'
            e['CLOSEWAIT_GRACE_MS'] = str(GRACE_MS)
            if log is not None:
                e['CLOSEWAIT_LOG'] = log
        for k, v in (extra or {}).items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    def start(self, argv, **kw):
        p = Program(self, argv, **kw)
        self.programs.append(p)
        self.groups.add(p.pid)
        return p

    def popen(self, argv, **kw):
        """A plain Popen in its own process group, killed at cleanup."""
        kw.setdefault('start_new_session', True)
        p = subprocess.Popen(argv, **kw)
        Orphans.own(p.pid)
        self.groups.add(p.pid)
        self.programs.append(_Bare(p))
        return p

    def marked(self):
        """Live processes (not us) that carry this test's mark or belong to one of its process
        groups and started after it."""
        me = os.getpid()
        mark = ('%s=%s' % (TOKEN_VAR, self.token)).encode()
        out = []
        for pid in all_pids():
            if pid == me:
                continue
            st = proc_stat(pid)
            if st is None or st['state'] in 'ZX':
                continue
            if (st['pgid'] in self.groups and st['start'] >= self.t_start) or mark in proc_environ(pid):
                out.append(pid)
        return out

    def cleanup(self, keep=False):
        for p in self.programs:
            p.kill_group()
        for _ in range(10):
            left = self.marked()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for p in self.programs:
            p.reap()
        for fn in reversed(self.undo):
            try:
                fn()
            except Exception as ex:      # noqa: BLE001 - cleanup goes on
                sys.stderr.write('cleanup of %s: %s\n' % (self.name, ex))
        poll_until(lambda: not Orphans.reap() and not self.marked(), 2.0, 0.05)
        Orphans.reap()
        if keep:
            print('    kept %s' % self.dir, flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class _Bare:
    """A Popen started by Case.popen, for cleanup."""

    def __init__(self, p):
        self.proc = p
        self.pid = p.pid

    def kill_group(self):
        if self.proc.returncode is None:     # not reaped: its pid still names the group
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def reap(self):
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        Orphans.disown(self.pid)


# ---------------------------------------------------------------- programs

class Program:
    """A program started in a process group of its own (a new session), stdin a pipe (closing it
    asks our test programs to end), stdout lines collected by a thread, stderr in a file unless
    given.  With lib=True it runs under the library with json reports to its own log file."""

    def __init__(self, case, argv, lib=True, env=None, log='file', stderr=None, name=None, cwd='/',
                 pass_fds=()):
        self.case = case
        self.argv = list(argv)
        self.name = name or os.path.basename(argv[0])
        n = sum(1 for p in case.programs if p.name == self.name)
        tag = self.name if n == 0 else '%s-%d' % (self.name, n + 1)
        # log: 'file' (a file of its own in the test's directory), None (the library's default,
        # stderr) or a path; events are read back from a path that is not a FIFO or device
        if log == 'file':
            log = case.path(tag + '.log')
        self.log = log if (lib and log and (not os.path.exists(log) or os.path.isfile(log))) else None
        self.env = case.env(lib, env, log=log)
        self.stderr_path = None
        self._stderr_file = None
        if stderr is None:
            self.stderr_path = case.path(tag + '.stderr')
            self._stderr_file = open(self.stderr_path, 'wb')
            stderr = self._stderr_file
        self.lines = []
        self.cond = threading.Condition()
        self.eof = False
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                     env=self.env, cwd=cwd, start_new_session=True, close_fds=True,
                                     pass_fds=pass_fds)
        self.pid = self.proc.pid
        Orphans.own(self.pid)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode('utf-8', 'replace').rstrip('\n')
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    # ---- what it says

    def stdout_text(self):
        with self.cond:
            return '\n'.join(l for _, l in self.lines)

    def stderr_text(self):
        if self.stderr_path is None:
            return ''
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def context(self):
        """The program's recent stdout and stderr and its state, for a failure message."""
        with self.cond:
            out = ' | '.join(l for _, l in self.lines[-8:])
        return '%s: stdout [%s] stderr [%s] (%s)' % (self.name, out, one_line(self.stderr_text(), 500),
                                                     status_text(self.proc.poll()))

    def wait_line(self, pattern, timeout=5.0, start=0):
        """The first stdout line from the start-th on matching the regex: its match object."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, l in self.lines[start:]:
                    m = rx.match(l)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    raise Fail('%s printed no line /%s/ within %.1f s; %s' % (
                        self.name, pattern, timeout, self.context()))
                self.cond.wait(min(left, 0.1))

    def lines_matching(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return [m for m in (rx.match(l) for _, l in self.lines) if m]

    def port(self, timeout=5.0):
        return int(self.wait_line(r'PORT (\d+)$', timeout).group(1))

    # ---- its reports

    def events(self):
        return read_events(self.log) if self.log else []

    def wait_events(self, pred, count, timeout=REPORT_WAIT, what='matching events'):
        """Polls the log until at least `count` events satisfy pred; returns them.  `what` names
        them in a failure ('leak events of pid 12')."""
        deadline = time.monotonic() + timeout
        while True:
            evs = [e for e in self.events() if pred(e)]
            if len(evs) >= count:
                return evs
            if time.monotonic() >= deadline:
                raise Fail('expected %d %s within %.1f s, got %d; log: %s; %s' % (
                    count, what, timeout, len(evs), describe_events(self.events()), self.context()))
            time.sleep(0.05)

    # ---- its life

    def alive(self):
        return self.proc.poll() is None

    def close_stdin(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Its exit status (a Popen returncode), or None if it is still running after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def finish(self, timeout=5.0):
        """Asks it to end (stdin's EOF) and waits: (returncode, seconds it took)."""
        t0 = time.monotonic()
        self.close_stdin()
        rc = self.wait_exit(timeout)
        return rc, time.monotonic() - t0

    def kill_group(self):
        if self.proc.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def reap(self):
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(2)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        Orphans.disown(self.pid)


# ---------------------------------------------------------------- clients

class Client:
    """A connection to a program on 127.0.0.1.  Named, on the program's side, by `server_peer`
    (the peer address in its leak reports)."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.local_port = self.sock.getsockname()[1]
        self.server_peer = '%s:%d' % self.sock.getsockname()[:2]
        self.server_local = '%s:%d' % self.sock.getpeername()[:2]

    def read_line(self, timeout=5.0):
        self.sock.settimeout(timeout)
        buf = b''
        try:
            while not buf.endswith(b'\n'):
                b = self.sock.recv(256)
                if not b:
                    break
                buf += b
        except OSError:
            pass
        return buf.decode('utf-8', 'replace').strip()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect_accepted(prog, port, timeout=5.0):
    """A client whose connection the program has accepted ('ACCEPT kind fd peerport' printed):
    (client, kind, fd).  One at a time, so that the n-th connection is the n-th accept."""
    start = len(prog.lines)     # a port given again must not match an earlier client's ACCEPT
    c = Client(port)
    m = prog.wait_line(r'ACCEPT (\w) (\d+) %d$' % c.local_port, timeout, start)
    return c, m.group(1), int(m.group(2))


# ---------------------------------------------------------------- reports

def read_events(path):
    """The complete lines of a JSON Lines log, parsed (a line still being written is left out).
    A line that is not a JSON object fails the test."""
    return harness.read_events(path)


def is_leak(e, pid=None):
    return e.get('event') == 'leak' and (pid is None or e.get('pid') == pid)


def leaks_of(events, pid=None):
    return [e for e in events if is_leak(e, pid)]


def exit_summaries(events, pid=None):
    return [e for e in events if e.get('event') == 'summary' and e.get('why') == 'exit'
            and (pid is None or e.get('pid') == pid)]


def functions(ev, key='open_stack'):
    st = ev.get(key)
    return [f.get('function') for f in st if isinstance(f, dict)] if isinstance(st, list) else []


def describe_event(e):
    kind = e.get('event')
    if kind == 'leak':
        fns = [f for f in functions(e) if f][:4]
        return 'leak pid=%s fd=%s %s peer=%s open_stack=%s' % (e.get('pid'), e.get('fd'), e.get('reason'),
                                                               e.get('peer'), '>'.join(map(str, fns)) or '-')
    if kind == 'summary':
        return 'summary pid=%s why=%s leaks_open=%s leaks_total=%s' % (
            e.get('pid'), e.get('why'), e.get('leaks_open'), e.get('leaks_total'))
    if kind == 'start':
        return 'start pid=%s watcher=%s' % (e.get('pid'), e.get('watcher'))
    return '%s pid=%s' % (kind, e.get('pid'))


def describe_events(events, limit=8):
    if not events:
        return '(none)'
    s = '; '.join(describe_event(e) for e in events[:limit])
    return '[' + s + ('; ... %d more' % (len(events) - limit) if len(events) > limit else '') + ']'


def check_leak_site(ev, fn, exe=None):
    """The leak's open_stack names fn, and no frame of the program's own binary lacks a name."""
    fns = functions(ev)
    check(fn in fns, 'leak of fd %s: open_stack does not name %s; its functions: %s' % (
        ev.get('fd'), fn, fns))
    if exe:
        real = os.path.realpath(exe)
        unnamed = [fr for fr in ev.get('open_stack') or []
                   if isinstance(fr, dict) and fr.get('module') and os.path.realpath(fr['module']) == real
                   and fr.get('function') in (None, '', '??')]
        check(not unnamed, 'leak of fd %s: frames of %s without a function name: %s' % (
            ev.get('fd'), os.path.basename(exe), unnamed[:3]))


# ---------------------------------------------------------------- the kernel's view

close_wait_sockets = harness.close_wait_sockets


def held_in_close_wait(pids):
    """The CLOSE_WAIT sockets that one of `pids` holds: {(local, peer): set of those pids}."""
    pids = set(pids)
    return {(s['local'], s['peer']): s['pids'] & pids for s in close_wait_sockets() if s['pids'] & pids}


def wait_close_wait(pids, count, timeout=3.0):
    """Waits until the kernel shows at least `count` CLOSE_WAIT sockets held by `pids`."""
    got = poll_until(lambda: (lambda h: h if len(h) >= count else None)(held_in_close_wait(pids)), timeout)
    if not got:
        raise Fail('the kernel shows %d CLOSE_WAIT socket(s) held by %s, the test made %d' % (
            len(held_in_close_wait(pids)), sorted(pids), count))
    return got


def stderr_lines(text):
    return [l for l in text.splitlines() if l.strip()]


def fill_pipe(wfd):
    """Fills a pipe through its write end until the kernel refuses more; returns the bytes
    written.  The descriptor is blocking again afterwards."""
    os.set_blocking(wfd, False)
    n = 0
    chunk = b'x' * 65536
    try:
        for _ in range(1 << 12):
            try:
                n += os.write(wfd, chunk)
            except BlockingIOError:
                try:
                    n += os.write(wfd, b'x')     # down to the last byte
                    continue
                except BlockingIOError:
                    break
    finally:
        os.set_blocking(wfd, True)
    return n


def read_until_eof(fd, timeout):
    """Reads fd until EOF or timeout: (data, seconds to EOF or None)."""
    t0 = time.monotonic()
    data = b''
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return data, None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        b = os.read(fd, 65536)
        if not b:
            return data, time.monotonic() - t0
        data += b
