#!/usr/bin/env python3
"""Symbolization, summaries, options and the merge tool, end to end.

    python3 tests/symbols/run.py [-k SUBSTRING] [-v]

Compiles the small C/C++ programs of tests/symbols/progs/ into a temporary directory, runs them
under the library (CLOSEWAIT_FORMAT=json, CLOSEWAIT_LOG=<temp file>, CLOSEWAIT_GRACE_MS=300),
makes each leak one socket with a real client on 127.0.0.1 (connect, close: the program reads
EOF and keeps the descriptor) and checks the JSON events: inlined frames, static functions,
C++ names, stripped binaries with separate debug files, dlopen'ed code, tail calls, the exit
summary, CLOSEWAIT_EXITCODE, CLOSEWAIT_REPORT_SIGNAL, CLOSEWAIT_SUPPRESSIONS, and
tools/closewait-report on the logs of a forking server.

Environment: CLOSEWAIT_LIB (the library; default libclosewait.so at the repository root),
CLOSEWAIT_PRELOAD_EXTRA (put in LD_PRELOAD before the library, e.g. a sanitizer runtime).
Standard library only.  Every wait is bounded.  Prints PASS/FAIL/SKIP per test and ends with
'N passed, N failed, N skipped'; the exit status is 1 when a test failed.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402
from harness import TestFailure, TestSkip, check  # noqa: E402,F401

ROOT = harness.ROOT
PROGS = os.path.join(HERE, 'progs')
REPORT_TOOL = os.path.join(ROOT, 'tools', 'closewait-report')
HOST = harness.HOST
GRACE_MS = 300
DEBUG_ROOT = '/usr/lib/debug'       # where libdw looks for build-id debug files

LIB = harness.library(absolute=False)
PRELOAD_EXTRA = os.environ.get('CLOSEWAIT_PRELOAD_EXTRA', '')
VERBOSE = False
WORK = None         # temporary directory for binaries and logs (set in main)
BINS = {}           # name -> path of a built program, or None
BUILD_ERRORS = {}   # name -> why it could not be built
MARKS = {}          # source base name -> {marker: line}


def log(msg):
    if VERBOSE:
        harness.log_to_stderr(msg)


def poll_until(fn, timeout, interval=0.02):
    return harness.poll_until(fn, timeout, interval)


def run(argv, timeout=60, **kw):
    """Runs a tool (compiler, objcopy, ...) without the library; returns CompletedProcess."""
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=harness.clean_env(),
                          timeout=timeout, **kw)


# ------------------------------------------------------------------ building the programs

def source_marks(path):
    """Lines carrying '@name' markers in comments: {name: line number}."""
    marks = {}
    with open(path) as f:
        for no, text in enumerate(f, 1):
            for m in re.finditer(r'(?:/\*|//)\s*@(\w+)', text):
                marks[m.group(1)] = no
    return marks


def compile_prog(name, sources, flags, libs=(), cc='gcc'):
    out = os.path.join(WORK, name)
    try:
        r = harness.compile_c([os.path.join(PROGS, x) for x in sources], out, flags, libs=libs,
                              cc=cc, timeout=90)
    except (OSError, subprocess.TimeoutExpired) as e:
        BUILD_ERRORS[name] = str(e)
        BINS[name] = None
        return
    if r.returncode != 0:
        BUILD_ERRORS[name] = r.stdout.decode('utf-8', 'replace')[-800:]
        BINS[name] = None
    else:
        BINS[name] = out


def have_gxx():
    if shutil.which('g++'):
        return True
    if os.geteuid() == 0 and shutil.which('apt-get'):
        sys.stderr.write('g++ is missing: apt-get install -y g++\n')
        try:
            run(['apt-get', 'install', '-y', '-q', 'g++'], timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return shutil.which('g++') is not None


def build_all():
    for src in os.listdir(PROGS):
        if src.endswith(('.c', '.cpp', '.h')):
            MARKS[src] = source_marks(os.path.join(PROGS, src))
    if not shutil.which('gcc'):
        for n in ('inline_srv', 'inline_srv_bid', 'tail_srv', 'tail_srv_nopie', 'supp_srv', 'fork_srv', 'dl_host', 'libcwplugin.so'):
            BINS[n] = None
            BUILD_ERRORS[n] = 'gcc is not installed'
    else:
        c = harness.CFLAGS['symbols'] + ['-I', PROGS, '-O2', '-g']
        compile_prog('inline_srv', ['inline_srv.c'], c)
        # its own random build id: the file this run puts under /usr/lib/debug/.build-id is
        # never one that another run (or the debuglink tests) could see
        compile_prog('inline_srv_bid', ['inline_srv.c'], c + ['-Wl,--build-id=0x' + os.urandom(20).hex()])
        compile_prog('tail_srv', ['tail_srv.c'], c)
        compile_prog('tail_srv_nopie', ['tail_srv.c'], c + ['-fno-pie', '-no-pie'])
        compile_prog('supp_srv', ['supp_srv.c'], c)
        compile_prog('fork_srv', ['fork_srv.c'], c)
        compile_prog('dl_host', ['dl_host.c'], c, libs=['-ldl'])
        compile_prog('libcwplugin.so', ['plugin.c'], c + ['-fPIC', '-shared'])
    if have_gxx():
        compile_prog('cxx_srv', ['cxx_srv.cpp'], ['-std=gnu++17', '-Wall', '-Wextra', '-Werror', '-I', PROGS,
                                                  '-O2', '-g'], cc='g++')
    else:
        BINS['cxx_srv'] = None
        BUILD_ERRORS['cxx_srv'] = 'g++ is not installed (and apt-get could not install it)'


def need(name):
    """The path of a built program; a program that failed to build fails the test."""
    path = BINS.get(name)
    if path is None:
        why = BUILD_ERRORS.get(name, 'not built')
        if 'not installed' in why:
            raise TestSkip('%s: %s' % (name, why))
        raise TestFailure('could not build %s: %s' % (name, why.strip().replace('\n', ' | ')))
    return path


def mark(src, name):
    return MARKS[src][name]


def build_id_of(path):
    """The GNU build id of an ELF file, from its notes (hex), or None."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum = struct.unpack_from('<HH', data, 0x3a)
    for i in range(shnum):
        base = shoff + i * shentsize
        sh_type, = struct.unpack_from('<I', data, base + 4)
        if sh_type != 7:        # SHT_NOTE
            continue
        off, size = struct.unpack_from('<QQ', data, base + 0x18)
        p = off
        while p + 12 <= off + size:
            namesz, descsz, ntype = struct.unpack_from('<III', data, p)
            name = data[p + 12:p + 12 + namesz]
            dp = p + 12 + ((namesz + 3) & ~3)
            if ntype == 3 and name.rstrip(b'\0') == b'GNU':
                return data[dp:dp + descsz].hex()
            p = dp + ((descsz + 3) & ~3)
    return None


def section_names(path):
    r = run(['readelf', '-S', '-W', path])
    return set(re.findall(r'\]\s+(\.\S+)', r.stdout.decode('utf-8', 'replace')))


# ------------------------------------------------------------------ programs under the library

def preload_value():
    return harness.preload_value(LIB, PRELOAD_EXTRA)


class Prog:
    """A program started under the library, its stdout lines collected by a thread."""

    def __init__(self, argv, env=None, log_path=None, fmt='json', cwd=None):
        self.dir = tempfile.mkdtemp(prefix='run-', dir=WORK)
        self.log = log_path or os.path.join(self.dir, 'closewait.log')
        e = harness.lib_env(self.log, preload_value(), fmt, GRACE_MS, env)
        self.argv = argv
        self.stderr_path = os.path.join(self.dir, 'stderr')
        self._stderr = open(self.stderr_path, 'wb')
        self.lines = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=e, cwd=cwd, close_fds=True,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))
                self.cond.notify_all()

    def stderr_text(self):
        try:
            with open(self.stderr_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def context(self):
        return 'argv=%s stdout=[%s] stderr=[%s] rc=%s' % (
            ' '.join(os.path.basename(a) for a in self.argv), ' | '.join(self.lines[-6:]),
            self.stderr_text().strip().replace('\n', ' | ')[-500:], self.proc.poll())

    def wait_lines(self, pattern, count=1, timeout=5.0):
        """Waits until `count` stdout lines match the regex; returns their matches."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                found = [m for m in (rx.match(l) for l in self.lines) if m]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.time()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise TestFailure('no %d stdout line(s) matching %r within %.1fs: %s'
                                      % (count, pattern, timeout, self.context()))
                self.cond.wait(min(left, 0.1))

    def port(self):
        return int(self.wait_lines(r'PORT (\d+)$')[0].group(1))

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def finish(self, timeout=10.0):
        """Closes stdin (the programs exit on its EOF) and waits; returns the exit status."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TestFailure('did not exit within %.0fs after stdin closed: %s' % (timeout, self.context()))

    def kill(self):
        """Kills the program and whatever it forked (its own session), if still there."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)    # its session: the program and its workers
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._stderr.close()


def events(path):
    """The JSON events of a log: every complete line must be a JSON object."""
    try:
        with open(path, 'rb') as f:
            data = f.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return []
    out = []
    for line in data.split('\n')[:-1]:
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            raise TestFailure('log line is not JSON: %r' % line[:300])
        check(isinstance(e, dict), 'log line is not a JSON object: %r' % line[:300])
        out.append(e)
    return out


def of_kind(evs, kind):
    return [e for e in evs if e.get('event') == kind]


def wait_events(path, kind, count, timeout=5.0, prog=None):
    got = poll_until(lambda: len(of_kind(events(path), kind)) >= count, timeout, 0.03)
    if not got:
        have = of_kind(events(path), kind)
        raise TestFailure('%d %s event(s) expected in the log within %.1fs, %d seen%s'
                          % (count, kind, timeout, len(have), ': ' + prog.context() if prog else ''))
    return of_kind(events(path), kind)


def poke(port):
    """A client that connects and closes: the server reads EOF and should close its end."""
    s = socket.create_connection((HOST, port), timeout=3)
    s.close()


def leak_run(argv, nleaks=1, env=None, cwd=None, fmt='json', wait_leaks=True):
    """Starts a program, makes it accept `nleaks` connections whose peers closed, and waits
    until the library reported them (JSON) or at least until the program holds them."""
    p = Prog(argv, env=env, fmt=fmt, cwd=cwd)
    try:
        port = p.port()
        for i in range(nleaks):
            poke(port)
            p.wait_lines(r'HELD (-?\d+)$', i + 1)
        p.wait_lines(r'READY')
        if wait_leaks and fmt == 'json':
            wait_events(p.log, 'leak', nleaks, prog=p)
    except BaseException:
        p.kill()
        raise
    return p


def leak_and_exit(argv, nleaks=1, env=None, cwd=None):
    """leak_run, then stdin's EOF: the program exits.  Returns (events, exit status, prog)."""
    p = leak_run(argv, nleaks, env=env, cwd=cwd)
    try:
        rc = p.finish()
    finally:
        p.kill()
    return events(p.log), rc, p


# ------------------------------------------------------------------ stack helpers

def show(stack):
    parts = []
    for f in stack:
        s = '%s@%s:%s' % (f.get('function'), os.path.basename(f.get('file') or '?'), f.get('line'))
        if f.get('inlined'):
            s += '[inlined]'
        if f.get('tail_call'):
            s += '[tail_call]'
        parts.append(s)
    return ' > '.join(parts)


def extra_runtimes():
    """Real paths of the CLOSEWAIT_PRELOAD_EXTRA objects (a sanitizer runtime)."""
    return set(os.path.realpath(p) for p in re.split(r'[:\s]+', PRELOAD_EXTRA) if p)


def without_runtime(stack):
    """The stack without its innermost frames in a preloaded sanitizer runtime: its
    interceptors (read, accept, ...) sit between the program and the library."""
    extra = extra_runtimes()
    if not extra or not isinstance(stack, list):
        return stack
    i = 0
    while i < len(stack) and os.path.realpath(stack[i].get('module') or '') in extra:
        i += 1
    return stack[i:]


def the_leak(evs):
    leaks = of_kind(evs, 'leak')
    check(len(leaks) == 1, 'exactly one leak event expected, got %d' % len(leaks))
    leak = leaks[0]
    stack = without_runtime(leak.get('open_stack'))
    check(isinstance(stack, list) and stack, 'leak without open_stack: %r' % leak)
    return leak, stack


def expect_frame(stack, i, function, src, line, inlined=False, tail_call=False, lines=None):
    check(len(stack) > i, 'open_stack has %d frame(s), frame #%d (%s) expected: %s'
          % (len(stack), i, function, show(stack)))
    f = stack[i]
    check(f.get('function') == function, 'frame #%d is %r, expected %r: %s'
          % (i, f.get('function'), function, show(stack)))
    check(os.path.basename(f.get('file') or '') == src, 'frame #%d (%s) file %r, expected .../%s: %s'
          % (i, function, f.get('file'), src, show(stack)))
    if lines is not None:
        check(isinstance(f.get('line'), int) and lines[0] <= f['line'] <= lines[1],
              'frame #%d (%s) line %r, expected within %d..%d: %s'
              % (i, function, f.get('line'), lines[0], lines[1], show(stack)))
    else:
        check(f.get('line') == line, 'frame #%d (%s) line %r, expected %d: %s'
              % (i, function, f.get('line'), line, show(stack)))
    check(bool(f.get('inlined')) == inlined, 'frame #%d (%s) inlined=%r, expected %r: %s'
          % (i, function, f.get('inlined'), inlined, show(stack)))
    check(bool(f.get('tail_call')) == tail_call, 'frame #%d (%s) tail_call=%r, expected %r: %s'
          % (i, function, f.get('tail_call'), tail_call, show(stack)))
    return f


def expect_inline_stack(stack, binary):
    """take_conn (inlined) at its accept line, then serve_one at its call, then main."""
    src = 'inline_srv.c'
    real = os.path.realpath(binary)
    check(stack[0].get('module') == real, 'frame #0 module %r, expected %r' % (stack[0].get('module'), real))
    f0 = expect_frame(stack, 0, 'take_conn', src, mark(src, 'take_conn'), inlined=True)
    expect_frame(stack, 1, 'serve_one', src, mark(src, 'serve_one'))
    check(len(stack) > 2 and stack[2].get('function') == 'main',
          'frame #2 should be main: %s' % show(stack))
    for i in (1, 2):
        check(stack[i].get('module') == real, 'frame #%d module %r, expected %r'
              % (i, stack[i].get('module'), real))
    return f0


def expect_frames_complete(stack, binary):
    """Every frame carries module, offset and build_id; the program's frames its build id."""
    bid = build_id_of(binary)
    real = os.path.realpath(binary)
    for i, f in enumerate(stack):
        for key in ('module', 'offset', 'build_id'):
            check(isinstance(f.get(key), str) and f[key], 'frame #%d (%s) has no %s: %r'
                  % (i, f.get('function'), key, f))
        check(re.match(r'^0x[0-9a-f]+$', f['offset']), 'frame #%d offset %r' % (i, f['offset']))
        check(re.match(r'^[0-9a-f]+$', f['build_id']), 'frame #%d build_id %r' % (i, f['build_id']))
        if f['module'] == real:
            check(f['build_id'] == bid, 'frame #%d build_id %s, the binary has %s'
                  % (i, f['build_id'], bid))


# ------------------------------------------------------------------ tests: names and lines

def test_inline_static_frames():
    """-O2 -g: accept() in a static inline helper inlined into a static function."""
    binary = need('inline_srv')
    evs, rc, _ = leak_and_exit([binary])
    check(rc == 0, 'exit status %r' % rc)
    leak, stack = the_leak(evs)
    check(leak.get('reason') == 'eof_not_closed', 'reason %r' % leak.get('reason'))
    check(leak.get('opened_by') == 'accept', 'opened_by %r' % leak.get('opened_by'))
    expect_inline_stack(stack, binary)
    # the inlined frame and its caller come from the same return address
    check(stack[0].get('pc') == stack[1].get('pc'), 'inlined frame and its caller differ in pc: %s, %s'
          % (stack[0].get('pc'), stack[1].get('pc')))


def test_eof_stack_inlined():
    """The EOF is read in cw_drain(), a static inline helper inlined into serve_one(): the
    eof_stack shows the helper (inlined, at its read) and then serve_one at its call."""
    binary = need('inline_srv')
    evs, _, _ = leak_and_exit([binary])
    leak, _ = the_leak(evs)
    check(leak.get('eof_by') == 'read', 'eof_by %r' % leak.get('eof_by'))
    stack = without_runtime(leak.get('eof_stack'))
    check(isinstance(stack, list) and stack, 'no eof_stack: %r' % leak)
    expect_frame(stack, 0, 'cw_drain', 'common.h', mark('common.h', 'cw_drain_read'), inlined=True)
    expect_frame(stack, 1, 'serve_one', 'inline_srv.c', mark('inline_srv.c', 'serve_one_drain'))
    check(len(stack) > 2 and stack[2].get('function') == 'main', 'frame #2 should be main: %s' % show(stack))


def test_cxx_demangled():
    """A member function of a class in a namespace is named ns::Server::accept_one()."""
    binary = need('cxx_srv')
    evs, rc, _ = leak_and_exit([binary])
    check(rc == 0, 'exit status %r' % rc)
    _, stack = the_leak(evs)
    src = 'cxx_srv.cpp'
    expect_frame(stack, 0, 'ns::Server::accept_one()', src, mark(src, 'accept_one'))
    expect_frame(stack, 1, 'main', src, mark(src, 'main_call'))
    for f in stack:
        check(not (f.get('function') or '').startswith('_Z'), 'mangled name left: %s' % show(stack))


def test_dlopen_plugin():
    """A function of a dlopen()ed library: its name and the library's path."""
    host, plugin = need('dl_host'), need('libcwplugin.so')
    evs, rc, _ = leak_and_exit([host, plugin])
    check(rc == 0, 'exit status %r' % rc)
    _, stack = the_leak(evs)
    f = expect_frame(stack, 0, 'plugin_accept', 'plugin.c', mark('plugin.c', 'plugin_accept'))
    check(f.get('module') == os.path.realpath(plugin), 'plugin frame module %r, expected %r'
          % (f.get('module'), os.path.realpath(plugin)))
    check(f.get('build_id') == build_id_of(plugin), 'plugin frame build_id %r, the library has %r'
          % (f.get('build_id'), build_id_of(plugin)))
    check(len(stack) > 1 and stack[1].get('function') == 'main'
          and stack[1].get('module') == os.path.realpath(host),
          'frame #1 should be main in %s: %s' % (host, show(stack)))


def test_tail_call():
    """`return accept(...)` at -O2 is a jmp: the recovered frame names get_conn."""
    binary = need('tail_srv')
    dis = run(['objdump', '-d', '--no-show-raw-insn', binary]).stdout.decode('utf-8', 'replace')
    body = re.search(r'<get_conn>:\n(.*?)\n\n', dis, re.S)
    if body is None or not re.search(r'\bjmp\s+\S+\s+<accept@plt>', body.group(1)):
        raise TestSkip('the compiler did not turn get_conn into a tail call: %s'
                       % (body.group(1).strip().replace('\n', ' | ') if body else 'no get_conn'))
    evs, rc, _ = leak_and_exit([binary])
    check(rc == 0, 'exit status %r' % rc)
    _, stack = the_leak(evs)
    src = 'tail_srv.c'
    f = expect_frame(stack, 0, 'get_conn', src, None, tail_call=True,
                     lines=(mark(src, 'get_conn_start') - 1, mark(src, 'get_conn_end')))
    check(f.get('module') == os.path.realpath(binary), 'get_conn module %r' % f.get('module'))
    expect_frame(stack, 1, 'handle', src, mark(src, 'handle'))
    check(sum(1 for x in stack if x.get('tail_call')) == 1, 'one tail_call frame expected: %s' % show(stack))


# ------------------------------------------------------------------ tests: stripped binaries

def test_tail_call_symbolize0_report():
    """CLOSEWAIT_SYMBOLIZE=0 ("symbolize later with closewait-report"): the frame a tail call
    left out must still reach the report (module+offset with tail_call), named get_conn."""
    binary = need('tail_srv')
    stack, logf = symbolize0_run(binary)
    rep = report_json([logf])
    rstack = report_stack_names(rep)
    src = 'tail_srv.c'
    expect_frame(rstack, 0, 'get_conn', src, None, tail_call=True,
                 lines=(mark(src, 'get_conn_start') - 1, mark(src, 'get_conn_end')))
    expect_frame(rstack, 1, 'handle', src, mark(src, 'handle'))


def test_nonpie_tail_call():
    """A non-PIE build (-no-pie, loaded at 0x400000): names, lines and the tail-call frame."""
    binary = need('tail_srv_nopie')
    evs, rc, _ = leak_and_exit([binary])
    check(rc == 0, 'exit status %r' % rc)
    _, stack = the_leak(evs)
    src = 'tail_srv.c'
    f = expect_frame(stack, 0, 'get_conn', src, None, tail_call=True,
                     lines=(mark(src, 'get_conn_start') - 1, mark(src, 'get_conn_end')))
    check(f.get('module') == os.path.realpath(binary), 'get_conn module %r' % f.get('module'))
    expect_frame(stack, 1, 'handle', src, mark(src, 'handle'))
    check(len(stack) > 2 and stack[2].get('function') == 'main', 'frame #2 should be main: %s' % show(stack))
    expect_frames_complete(stack, binary)


def test_nonpie_report():
    """A stripped non-PIE build under CLOSEWAIT_SYMBOLIZE=0: the report names handle and main
    from module+offset through the debuglink."""
    binary, _ = stripped_copy('strip-all', 'tail_srv_nopie', 'tail_srv')
    stack, logf = symbolize0_run(binary)
    rstack = report_stack_names(report_json([logf]))
    src = 'tail_srv.c'
    i = next((k for k, f in enumerate(rstack) if f.get('function') == 'handle'), None)
    check(i is not None, 'no handle frame in the report: %s' % show(rstack))
    expect_frame(rstack, i, 'handle', src, mark(src, 'handle'))
    check(len(rstack) > i + 1 and rstack[i + 1].get('function') == 'main', 'main should follow handle: %s' % show(rstack))


def stripped_copy(kind, prog='inline_srv', name='inline_srv'):
    """A copy of a program (as `name`) in its own directory, stripped as `kind` (strip-g,
    strip-all, or no-link: strip-all without a debuglink); the debug file split off next to it.
    Returns (binary, debug file)."""
    src = need(prog)
    d = tempfile.mkdtemp(prefix='strip-%s-' % kind, dir=WORK)
    binary = os.path.join(d, name)
    debug = os.path.join(d, name + '.debug')
    shutil.copy2(src, binary)
    steps = [['objcopy', '--only-keep-debug', binary, debug]]
    if kind == 'strip-g':
        steps.append(['strip', '-g', binary])
    else:
        steps.append(['strip', '--strip-all', binary])
    if kind != 'no-link':
        steps.append(['objcopy', '--add-gnu-debuglink=%s.debug' % name, name])
    for argv in steps:
        r = run(argv, cwd=d)
        check(r.returncode == 0, '%s failed: %s' % (' '.join(argv), r.stdout.decode('utf-8', 'replace')))
    secs = section_names(binary)
    check('.debug_info' not in secs and '.debug_line' not in secs, 'strip left DWARF in %s: %s'
          % (binary, sorted(secs)))
    if kind == 'strip-g':
        check('.symtab' in secs, 'strip -g removed .symtab')
    else:
        check('.symtab' not in secs, 'strip --strip-all left .symtab')
    check(('.gnu_debuglink' in secs) == (kind != 'no-link'), 'debuglink sections: %s' % sorted(secs))
    return binary, debug


def test_stripped_g_debuglink():
    """strip -g + --add-gnu-debuglink: file:line and the inline chain from the debug file."""
    binary, _ = stripped_copy('strip-g')
    evs, _, _ = leak_and_exit([binary])
    _, stack = the_leak(evs)
    expect_frames_complete(stack, binary)
    expect_inline_stack(stack, binary)


def test_stripped_all_debuglink():
    """strip --strip-all + --add-gnu-debuglink: even the static function's name from the debug file."""
    binary, _ = stripped_copy('strip-all')
    evs, _, _ = leak_and_exit([binary])
    _, stack = the_leak(evs)
    expect_frames_complete(stack, binary)
    expect_inline_stack(stack, binary)


def test_stripped_build_id_dir():
    """strip --strip-all, no debuglink, the debug file at /usr/lib/debug/.build-id/xx/yyyy.debug."""
    binary, debug = stripped_copy('no-link', 'inline_srv_bid', 'inline_srv')
    bid = build_id_of(binary)
    check(bid is not None and len(bid) > 2, 'no build id in %s' % binary)
    made_dirs = []
    target_dir = os.path.join(DEBUG_ROOT, '.build-id', bid[:2])
    target = os.path.join(target_dir, bid[2:] + '.debug')
    # libdw (dwfl_standard_find_debuginfo) has no variable for another debug root
    try:
        d = target_dir
        missing = []
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in reversed(missing):
            os.mkdir(d)
            made_dirs.append(d)
        shutil.copyfile(debug, target)
    except OSError as e:
        for d in reversed(made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise TestSkip('cannot write %s: %s' % (target, e))
    try:
        os.unlink(debug)        # only the build-id copy is left
        evs, _, _ = leak_and_exit([binary])
        _, stack = the_leak(evs)
        expect_frames_complete(stack, binary)
        expect_inline_stack(stack, binary)
    finally:
        try:
            os.unlink(target)
        except OSError:
            pass
        for d in reversed(made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass


def report_json(logs, extra=(), cwd=None):
    r = run([sys.executable, REPORT_TOOL, '--format', 'json'] + list(extra) + list(logs), cwd=cwd or '/')
    check(r.returncode == 0, 'closewait-report exit %d: %s' % (r.returncode, r.stdout.decode('utf-8', 'replace')[-800:]))
    try:
        return json.loads(r.stdout.decode('utf-8'))
    except ValueError:
        raise TestFailure('closewait-report --format json wrote no JSON: %r' % r.stdout[:300])


def report_stack_names(rep):
    findings = rep.get('findings')
    check(isinstance(findings, list) and len(findings) == 1, 'one finding expected: %r' % findings)
    stack = without_runtime(findings[0].get('open_stack'))
    check(isinstance(stack, list) and stack, 'finding without open_stack')
    return stack


def symbolize0_run(binary, argv=None, cwd=None):
    evs, _, p = leak_and_exit(argv or [binary], env={'CLOSEWAIT_SYMBOLIZE': '0'}, cwd=cwd)
    _, stack = the_leak(evs)
    for i, f in enumerate(stack):
        check(f.get('module') and f.get('offset'), 'frame #%d without module+offset: %r' % (i, f))
        check('file' not in f and 'line' not in f and 'function' not in f,
              'CLOSEWAIT_SYMBOLIZE=0 but frame #%d has a name or file:line: %r' % (i, f))
    return stack, p.log


def test_report_symbolizes_stripped():
    """CLOSEWAIT_SYMBOLIZE=0 on a stripped binary: closewait-report recovers names and lines."""
    binary, _ = stripped_copy('strip-all')
    stack, logf = symbolize0_run(binary)
    rep = report_json([logf])
    rstack = report_stack_names(rep)
    expect_inline_stack(rstack, binary)


def test_report_debug_dir():
    """The debug file only in a --debug-dir root, found through the binary's debuglink."""
    binary, debug = stripped_copy('strip-all')
    droot = tempfile.mkdtemp(prefix='debugroot-', dir=WORK)
    shutil.move(debug, os.path.join(droot, 'inline_srv.debug'))
    _, logf = symbolize0_run(binary)
    rep = report_json([logf], ['--debug-dir', droot])
    expect_inline_stack(report_stack_names(rep), binary)


def test_symbolize0_module_is_absolute():
    """CLOSEWAIT_SYMBOLIZE=0, program started as ./inline_srv: modules are absolute paths
    (CONTRACT: "module":"/path"), so a report made elsewhere still finds the binary."""
    binary, _ = stripped_copy('strip-all')
    d = os.path.dirname(binary)
    stack, logf = symbolize0_run(binary, argv=['./inline_srv'], cwd=d)
    bad = [(i, f.get('module')) for i, f in enumerate(stack) if not (f.get('module') or '').startswith('/')]
    check(not bad, 'frames with a module that is not an absolute path: %s' % bad)
    check(os.path.realpath(stack[0]['module']) == os.path.realpath(binary),
          'frame #0 module %r, expected %r' % (stack[0]['module'], binary))
    rep = report_json([logf], cwd='/')
    expect_inline_stack(report_stack_names(rep), binary)


# ------------------------------------------------------------------ tests: summaries and options

def test_summary_text():
    """Text format: the log ends with 'SUMMARY: closewait:' counting the held sockets."""
    binary = need('inline_srv')
    p = leak_run([binary, '2'], 2, fmt='text')
    try:
        def reported():
            try:
                with open(p.log) as f:
                    return len(re.findall(r'^==\d+==closewait: fd \d+ held', f.read(), re.M)) >= 2
            except OSError:
                return False
        check(poll_until(reported, 5.0), 'two text leak reports expected: %s' % p.context())
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'exit status %r' % rc)
    with open(p.log) as f:
        text = f.read()
    lines = [l for l in text.split('\n') if l.strip()]
    check(lines and lines[-1].startswith('SUMMARY: closewait:'), 'last line %r' % (lines[-1] if lines else None))
    check(re.match(r'SUMMARY: closewait: 2 socket\(s\)', lines[-1]), 'SUMMARY does not count 2 leaks: %r' % lines[-1])
    check(sum(1 for l in lines if l.startswith('SUMMARY:')) == 1, 'more than one SUMMARY line')
    check('take_conn' in text, 'the text report does not name take_conn')


def test_summary_json():
    """JSON: one summary event at exit, last, with leaks_open and the finding's counts."""
    binary = need('inline_srv')
    evs, rc, p = leak_and_exit([binary, '2'], 2)
    check(rc == 0, 'exit status %r' % rc)
    leaks = of_kind(evs, 'leak')
    check(len(leaks) == 2, '2 leaks expected, got %d' % len(leaks))
    sums = of_kind(evs, 'summary')
    check(len(sums) == 1, 'one summary expected, got %d' % len(sums))
    s = sums[0]
    check(evs[-1] is s, 'the summary is not the last line')
    check(s.get('pid') == p.pid, 'summary pid %r, program %d' % (s.get('pid'), p.pid))
    check(s.get('why') == 'exit', 'why %r' % s.get('why'))
    check(s.get('leaks_open') == 2 and s.get('leaks_total') == 2, 'leaks_open/total: %r/%r'
          % (s.get('leaks_open'), s.get('leaks_total')))
    check(s.get('suppressed') == 0, 'suppressed %r' % s.get('suppressed'))
    fs = s.get('findings')
    check(isinstance(fs, list) and len(fs) == 1, 'one finding expected: %r' % fs)
    check(fs[0].get('stack_id') == leaks[0].get('stack_id') == leaks[1].get('stack_id'),
          'finding stack_id %r vs leaks %r' % (fs[0].get('stack_id'), [l.get('stack_id') for l in leaks]))
    check(fs[0].get('count_now') == 2 and fs[0].get('count_ever') == 2, 'finding counts %r' % fs[0])


def test_exitcode_leak():
    """CLOSEWAIT_EXITCODE=23: a program that still holds a reported leak exits 23."""
    binary = need('inline_srv')
    evs, rc, _ = leak_and_exit([binary], env={'CLOSEWAIT_EXITCODE': '23'})
    check(rc == 23, 'exit status %r, expected 23' % rc)
    check(len(of_kind(evs, 'summary')) == 1, 'no summary at exit')


def test_exitcode_clean():
    """CLOSEWAIT_EXITCODE=23: a program that closed its sockets keeps its own status (0, then 7)."""
    binary = need('inline_srv')
    for status in (0, 7):
        p = Prog([binary, '1', 'clean', str(status)], env={'CLOSEWAIT_EXITCODE': '23'})
        try:
            poke(p.port())
            p.wait_lines(r'READY')
            time.sleep(GRACE_MS * 2.5 / 1000.0)     # a wrong report would have come by now
            rc = p.finish()
        finally:
            p.kill()
        check(rc == status, 'clean program exited %r, expected its own %d' % (rc, status))
        evs = events(p.log)
        check(not of_kind(evs, 'leak'), 'clean program reported: %r' % of_kind(evs, 'leak'))


def test_exitcode_closed_late():
    """CLOSEWAIT_EXITCODE=23: a leak reported and then closed is not held at exit: status 0,
    a closed_late event, and a summary with leaks_open 0 and leaks_total 1."""
    binary = need('inline_srv')
    p = leak_run([binary], 1, env={'CLOSEWAIT_EXITCODE': '23'})
    try:
        p.send('close\n')
        p.wait_lines(r'closed$')
        late = wait_events(p.log, 'closed_late', 1, timeout=3.0, prog=p)
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'exit status %r, expected 0 (nothing held at exit)' % rc)
    evs = events(p.log)
    leak, _ = the_leak(evs)
    c = late[0]
    check(c.get('fd') == leak.get('fd') and c.get('stack_id') == leak.get('stack_id'),
          'closed_late %r does not match the leak (fd %r, stack %r)' % (c, leak.get('fd'), leak.get('stack_id')))
    check(c.get('closed_by') == 'close', 'closed_by %r' % c.get('closed_by'))
    check(isinstance(c.get('held_ms'), int) and c['held_ms'] >= GRACE_MS, 'held_ms %r' % c.get('held_ms'))
    sums = of_kind(evs, 'summary')
    check(len(sums) == 1 and sums[0].get('leaks_open') == 0 and sums[0].get('leaks_total') == 1,
          'summary %r' % sums)


def test_report_signal_usr2():
    """CLOSEWAIT_REPORT_SIGNAL=USR2: SIGUSR2 writes an "on request" summary; the program runs on."""
    binary = need('inline_srv')
    p = leak_run([binary], 1, env={'CLOSEWAIT_REPORT_SIGNAL': 'USR2'})
    try:
        check(not of_kind(events(p.log), 'summary'), 'summary before the signal')
        os.kill(p.pid, signal.SIGUSR2)
        sums = wait_events(p.log, 'summary', 1, timeout=3.0, prog=p)
        s = sums[0]
        check(s.get('why') == 'on request', 'why %r' % s.get('why'))
        check(s.get('leaks_open') == 1, 'leaks_open %r' % s.get('leaks_open'))
        check(p.proc.poll() is None, 'the program died after SIGUSR2: %s' % p.context())
        p.send('ping\n')
        p.wait_lines(r'pong$', 1, timeout=3.0)
        os.kill(p.pid, signal.SIGUSR2)          # a second request, a second summary
        wait_events(p.log, 'summary', 2, timeout=3.0, prog=p)
        check(p.proc.poll() is None, 'the program died after the second SIGUSR2')
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'exit status %r' % rc)
    sums = of_kind(events(p.log), 'summary')
    check([s.get('why') for s in sums] == ['on request', 'on request', 'exit'],
          'summaries: %r' % [s.get('why') for s in sums])


def write_supp(text):
    fd, path = tempfile.mkstemp(prefix='supp-', dir=WORK)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    return path


def test_suppress_fun():
    """fun:quiet_site: that leak is not reported and is counted as suppressed; the other is."""
    one_of_two_suppressed('# a known leak\nfun:quiet_site\n')


def test_suppress_bare_glob():
    """A bare glob is a function pattern (leading blanks, comments and blank lines skipped)."""
    one_of_two_suppressed('\n# known\n   quiet_s*\n\n')


def test_suppress_trailing_blanks():
    """Blanks after a pattern are not part of it (docs/report.md: the library's syntax is the
    report's, whose surrounding blanks are trimmed): 'fun:quiet_site<space><tab>' still matches."""
    one_of_two_suppressed('fun:quiet_site \t\n')


def one_of_two_suppressed(patterns):
    binary = need('supp_srv')
    supp = write_supp(patterns)
    p = Prog([binary], env={'CLOSEWAIT_SUPPRESSIONS': supp})
    try:
        port = p.port()
        poke(port)
        p.wait_lines(r'HELD', 1)
        poke(port)
        p.wait_lines(r'READY')
        wait_events(p.log, 'leak', 1, prog=p)
        time.sleep(GRACE_MS * 1.5 / 1000.0)      # both graces are long over
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'exit status %r' % rc)
    evs = events(p.log)
    leaks = of_kind(evs, 'leak')
    check(len(leaks) == 1, 'one leak expected, got %d: %s' % (len(leaks), [show(l.get('open_stack', [])) for l in leaks]))
    stack = without_runtime(leaks[0].get('open_stack') or [])
    check(stack and stack[0].get('function') == 'loud_site', 'the reported leak: %s' % show(stack))
    check(not any(f.get('function') == 'quiet_site' for f in stack), 'suppressed site reported')
    check(leaks[0].get('opened_by') == 'accept', 'opened_by %r' % leaks[0].get('opened_by'))
    sums = of_kind(evs, 'summary')
    check(len(sums) == 1, 'one summary expected, got %d' % len(sums))
    check(sums[0].get('suppressed') == 1, 'summary suppressed %r' % sums[0].get('suppressed'))
    check(sums[0].get('leaks_open') == 1, 'summary leaks_open %r' % sums[0].get('leaks_open'))


def all_suppressed(argv, patterns, nleaks=1):
    """Runs a program whose every leak matches a pattern: no leak event, the exit summary
    counts them as suppressed."""
    supp = write_supp(patterns)
    p = leak_run(argv, nleaks, env={'CLOSEWAIT_SUPPRESSIONS': supp}, wait_leaks=False)
    try:
        time.sleep(GRACE_MS * 4 / 1000.0)       # the grace is long over: a report would be out
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'exit status %r' % rc)
    warn = p.stderr_text()
    check('closewait' not in warn, 'warning on stderr: %r' % warn[-300:])
    evs = events(p.log)
    check(not of_kind(evs, 'leak'), 'suppressed leak reported: %s'
          % [show(l.get('open_stack', [])) for l in of_kind(evs, 'leak')])
    sums = of_kind(evs, 'summary')
    check(len(sums) == 1, 'one summary expected (something was suppressed), got %d' % len(sums))
    check(sums[0].get('suppressed') == nleaks and sums[0].get('leaks_open') == 0,
          'summary suppressed=%r leaks_open=%r, expected %d and 0'
          % (sums[0].get('suppressed'), sums[0].get('leaks_open'), nleaks))


def test_suppress_inlined_helper():
    """fun:take_conn names an inlined helper (a name only DWARF knows): nothing is reported."""
    all_suppressed([need('inline_srv')], 'fun:take_conn\n')


def test_suppress_static_caller():
    """fun:serve_one names the static function the accept was inlined into: both leaks go."""
    all_suppressed([need('inline_srv'), '2'], 'fun:serve_one\n', nleaks=2)


def test_suppress_mod():
    """mod:*/libcwplugin.so matches the module path of the dlopen()ed library."""
    all_suppressed([need('dl_host'), need('libcwplugin.so')], 'mod:*/libcwplugin.so\n')


def test_suppress_cxx_demangled():
    """fun:ns::Server::accept_one* matches the demangled C++ name."""
    all_suppressed([need('cxx_srv')], 'fun:ns::Server::accept_one*\n')


# ------------------------------------------------------------------ tests: the merge tool

def test_fork_merge():
    """3 forked workers leak 2 sockets each from accept_conn: one finding, 6 leaks, 3 pids."""
    binary = need('fork_srv')
    d = tempfile.mkdtemp(prefix='fork-', dir=WORK)
    pattern = os.path.join(d, 'cw.%p.log')
    p = Prog([binary], log_path=pattern)
    try:
        port = p.port()
        p.wait_lines(r'FORKED')
        for _ in range(6):
            poke(port)
        workers = sorted(int(m.group(1)) for m in p.wait_lines(r'WORKER (\d+)$', 3))
        logs = lambda: sorted(glob.glob(os.path.join(d, 'cw.*.log')))

        def all_leaks():
            return sum(len(of_kind(events(l), 'leak')) for l in logs()) >= 6
        check(poll_until(all_leaks, 6.0, 0.05), '6 leak events expected in %s: %s'
              % ([os.path.basename(l) for l in logs()], p.context()))
        rc = p.finish()
    finally:
        p.kill()
    check(rc == 0, 'server exit status %r' % rc)
    names = [os.path.basename(l) for l in logs()]
    for w in workers:
        check('cw.%d.log' % w in names, 'no log cw.%d.log for worker %d: %s' % (w, w, names))
    for l in logs():
        evs = events(l)
        pid = int(os.path.basename(l).split('.')[1])
        check(all(e.get('pid') == pid for e in evs), '%s holds events of another pid' % l)
        if pid not in workers:          # the parent: it only listened
            check(not of_kind(evs, 'leak'), 'the parent reported leaks: %r' % of_kind(evs, 'leak'))
            continue
        check(len(of_kind(evs, 'leak')) == 2, '%s: 2 leaks expected' % l)
        s = of_kind(evs, 'summary')
        check(len(s) == 1 and s[0].get('leaks_open') == 2, '%s: summary %r' % (l, s))
        ids = set(e.get('stack_id') for e in of_kind(evs, 'leak'))
        check(len(ids) == 1, '%s: the two leaks of one call site have stack ids %s' % (l, sorted(ids)))

    rep = report_json(logs())
    fs = rep.get('findings')
    check(isinstance(fs, list) and len(fs) == 1, 'one finding expected, got %r'
          % [(f.get('stack_id'), f.get('count_ever')) for f in fs or []])
    f = fs[0]
    check(f.get('count_ever') == 6, 'count_ever %r' % f.get('count_ever'))
    check(f.get('count_open') == 6, 'count_open %r' % f.get('count_open'))
    pids = sorted(int(x) for x in f.get('pids') or [])
    check(pids == workers, 'pids %r, workers %r' % (pids, workers))
    reasons = f.get('reasons')
    check(reasons == {'eof_not_closed': 6}, 'reasons %r' % reasons)
    src, line = 'fork_srv.c', mark('fork_srv.c', 'accept_conn')
    fstack = without_runtime(f.get('open_stack') or [])
    expect_frame(fstack, 0, 'accept_conn', src, line)
    expect_frame(fstack, 1, 'worker', src, mark(src, 'worker'))
    summ = rep.get('summary') or {}
    check(summ.get('leaks_open') == 6 and summ.get('leaks_total') == 6 and summ.get('findings') == 1,
          'report summary %r' % {k: summ.get(k) for k in ('leaks_open', 'leaks_total', 'findings')})
    check(summ.get('processes') == 3, 'report summary processes %r' % summ.get('processes'))

    r = run([sys.executable, REPORT_TOOL] + logs(), cwd='/')
    check(r.returncode == 0, 'markdown report exit %d' % r.returncode)
    md = r.stdout.decode('utf-8', 'replace')
    first = md.split('\n', 1)[0]
    check(re.match(r'^# closewait: 6 socket\(s\) left in CLOSE_WAIT from 1 code site\(s\)', first),
          'markdown title %r' % first)
    check(re.search(r'^\|\s*#\s*\|\s*open / ever\s*\|', md, re.M), 'no findings table in the markdown')
    rows = [l for l in md.split('\n') if re.match(r'^\|\s*1\s*\|', l)]
    check(len(rows) == 1 and '6' in rows[0] and 'accept_conn' in rows[0],
          'table row for the finding: %r' % rows)
    check('accept_conn' in md and '%s:%d' % (src, line) in md,
          'markdown lacks accept_conn at %s:%d' % (src, line))
    check(re.search(r'^```', md, re.M), 'no code block with the stack in the markdown')


# ------------------------------------------------------------------ runner

TESTS = [
    ('inline_static_frames', test_inline_static_frames),
    ('eof_stack_inlined', test_eof_stack_inlined),
    ('cxx_demangled', test_cxx_demangled),
    ('dlopen_plugin', test_dlopen_plugin),
    ('tail_call', test_tail_call),
    ('tail_call_symbolize0_report', test_tail_call_symbolize0_report),
    ('nonpie_tail_call', test_nonpie_tail_call),
    ('nonpie_report', test_nonpie_report),
    ('stripped_g_debuglink', test_stripped_g_debuglink),
    ('stripped_all_debuglink', test_stripped_all_debuglink),
    ('stripped_build_id_dir', test_stripped_build_id_dir),
    ('report_symbolizes_stripped', test_report_symbolizes_stripped),
    ('report_debug_dir', test_report_debug_dir),
    ('symbolize0_module_is_absolute', test_symbolize0_module_is_absolute),
    ('summary_text', test_summary_text),
    ('summary_json', test_summary_json),
    ('exitcode_leak', test_exitcode_leak),
    ('exitcode_clean', test_exitcode_clean),
    ('exitcode_closed_late', test_exitcode_closed_late),
    ('report_signal_usr2', test_report_signal_usr2),
    ('suppress_fun', test_suppress_fun),
    ('suppress_bare_glob', test_suppress_bare_glob),
    ('suppress_trailing_blanks', test_suppress_trailing_blanks),
    ('suppress_inlined_helper', test_suppress_inlined_helper),
    ('suppress_static_caller', test_suppress_static_caller),
    ('suppress_mod', test_suppress_mod),
    ('suppress_cxx_demangled', test_suppress_cxx_demangled),
    ('fork_merge', test_fork_merge),
]


def main():
    global WORK, VERBOSE
    args = harness.suite_arguments(__doc__, 'show tracebacks of failures')
    VERBOSE = args.v
    selected = [(n, t) for n, t in TESTS if args.k is None or args.k in n]
    lib_file = harness.library_file(LIB)
    if not os.path.isfile(lib_file):
        return harness.fail_all(selected, 'library %s not found (run make)' % lib_file)
    # SIGTERM/SIGHUP unwind like ^C, so that every finally (the /usr/lib/debug file) runs
    def on_term(sig, frame):
        raise KeyboardInterrupt('signal %d' % sig)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    WORK = tempfile.mkdtemp(prefix='cw-symbols-')
    runner = SymbolsRunner(time_pass=False, one_line_failures=False, traceback_to=log)
    try:
        if selected:
            build_all()
        for name, fn in selected:
            runner.run_one(name, fn)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    return runner.finish()


class SymbolsRunner(harness.Runner):
    """PASS lines without times or notes; each test's time in the -v log."""

    def call(self, name, fn):
        self.t0 = time.time()
        fn()

    def cleanup(self, name, ok):
        log('%s: %.1fs' % (name, time.time() - self.t0))

if __name__ == '__main__':
    sys.exit(main())
