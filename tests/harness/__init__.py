"""What every test suite of tests/ shares: where the library is, the test registry and the
runner loop (PASS/FAIL/SKIP lines and the closing line 'N passed, N failed, N skipped'),
TestSkip and check(), JSON events, the kernel's view (ss), the library's watcher processes in
/proc, and building the C test programs with the project's flags.

A suite puts tests/ on sys.path and imports it:

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import harness

Standard library only.  Every wait is bounded.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS_DIR)
HOST = '127.0.0.1'


# ---------------------------------------------------------------- the library

def suite_arguments(doc, verbose_help='show tracebacks of failures'):
    """The options every suite takes: -k SUBSTRING (only the tests whose name contains it), -v."""
    ap = argparse.ArgumentParser(description=doc.split('\n')[0])
    ap.add_argument('-k', dest='k', default=None, help='run only tests whose name contains this')
    ap.add_argument('-v', action='store_true', help=verbose_help)
    return ap.parse_args()


def library(explicit=None, absolute=True):
    """The library to preload: `explicit` (a --lib option), else $CLOSEWAIT_LIB, else the
    repository's libclosewait.so.  A colon-separated list ('runtime.so:libclosewait.so', as
    tests/run-all.py sets for the ASan and TSan runs) is kept as a list; with `absolute`, each
    of its entries that exists is made absolute."""
    lib = explicit or os.environ.get('CLOSEWAIT_LIB') or os.path.join(ROOT, 'libclosewait.so')
    if not absolute:
        return lib
    return ':'.join(os.path.abspath(x) if os.path.exists(x) else x for x in lib.split(':'))


def preload_extra():
    """$CLOSEWAIT_PRELOAD_EXTRA: what goes into LD_PRELOAD before the library (a sanitizer
    runtime), or ''."""
    return os.environ.get('CLOSEWAIT_PRELOAD_EXTRA', '').strip()


def preload_value(lib=None, extra=None):
    """LD_PRELOAD for a program under the library: the extra preload, then the library."""
    lib = library() if lib is None else lib
    extra = preload_extra() if extra is None else extra
    return ':'.join(p for p in (extra, lib) if p)


def library_file(lib=None):
    """The library itself: the last entry of a colon-separated list."""
    return (library() if lib is None else lib).split(':')[-1]


def missing_library(lib=None):
    """The entries of the preload list that do not exist."""
    return [x for x in (library() if lib is None else lib).split(':') if not os.path.exists(x)]


def clean_env(base=None):
    """The environment without LD_PRELOAD and any CLOSEWAIT_ variable: a program or a tool run
    without the library."""
    return {k: v for k, v in (os.environ if base is None else base).items()
            if not k.startswith('CLOSEWAIT_') and k != 'LD_PRELOAD'}


def lib_env(log, preload, fmt='json', grace_ms=None, env=None):
    """The environment of a program under the library: clean_env(), then LD_PRELOAD=`preload`,
    CLOSEWAIT_LOG=`log`, CLOSEWAIT_FORMAT=`fmt` and (unless None) CLOSEWAIT_GRACE_MS, then
    `env` (a value None removes the variable)."""
    e = clean_env()
    e['LD_PRELOAD'] = preload
    e['CLOSEWAIT_LOG'] = log
    e['CLOSEWAIT_FORMAT'] = fmt
    if grace_ms is not None:
        e['CLOSEWAIT_GRACE_MS'] = str(grace_ms)
    return overridden(e, env)


def overridden(e, env):
    """e with the variables of `env` set (a value None removes the variable)."""
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


# ---------------------------------------------------------------- outcomes

class TestFailure(Exception):
    pass


class TestSkip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def poll_until(fn, timeout, interval=0.02, clock=time.time, inclusive=True):
    """Calls fn until it returns something true or `timeout` seconds pass; returns the last
    value.  (`inclusive`: stop when the deadline is reached, else only once it is passed.)"""
    deadline = clock() + timeout
    while True:
        v = fn()
        now = clock()
        if v or (now >= deadline if inclusive else now > deadline):
            return v
        time.sleep(interval)


# ---------------------------------------------------------------- registry and runner

class Registry(list):
    """The tests of a suite, in order: (name, function) pairs.  `registry.test` registers a
    function (its name without the 'test_' prefix, or `name=`)."""

    def __init__(self, strip_prefix=True):
        list.__init__(self)
        self.strip_prefix = strip_prefix

    def test(self, fn=None, name=None):
        def reg(f):
            n = name or (f.__name__.replace('test_', '', 1) if self.strip_prefix else f.__name__)
            self.append((n, f))
            return f
        return reg(fn) if fn else reg

    def select(self, k=None):
        return [(n, f) for n, f in self if not k or k in n]


def one_line_text(text):
    return ' '.join(str(text).split())


def closing_line(passed, failed, skipped, always_skipped=True):
    """'N passed, N failed, N skipped' (with always_skipped False, ', N skipped' only when some
    were)."""
    tail = '%d passed, %d failed' % (passed, failed)
    if always_skipped or skipped:
        tail += ', %d skipped' % skipped
    return tail


class Runner:
    """The loop every suite runs: each test once, one PASS/FAIL/SKIP line each, then the closing
    line.  A suite's differences are parameters or overridden methods:

      call(name, fn)         runs one test, returns its note (default fn())
      after_pass(name)       may raise TestFailure (e.g. a sanitizer report in a stderr)
      failure_text(name, ex) what a FAIL line says of a failure (default: its message)
      failure_extra(name)    text appended to a FAIL line
      cleanup(name, ok)      after each test, whatever happened (self.outcome: 'PASS',
                             'SKIP' or 'FAIL')
      pass_line(...)         the PASS line's format
    """

    fail_exceptions = (TestFailure,)
    skip_exceptions = (TestSkip,)

    def __init__(self, verbose=False, time_pass=True, note_sep=' ', note_any=False,
                 one_line_failures=True, always_skipped=True, clock=time.time, traceback_to=None):
        self.verbose = verbose
        self.time_pass = time_pass
        self.note_sep = note_sep
        self.note_any = note_any            # print any true return value, not only a str
        self.one_line_failures = one_line_failures
        self.always_skipped = always_skipped
        self.clock = clock
        self.traceback_to = traceback_to    # a function given the traceback text, or None
        self.passed = self.failed = self.skipped = 0

    def call(self, name, fn):
        return fn()

    def after_pass(self, name):
        pass

    def failure_text(self, name, ex):
        return self.text(ex)

    def failure_extra(self, name):
        return ''

    def cleanup(self, name, ok):
        pass

    def pass_line(self, name, note, seconds):
        shown = (note if (isinstance(note, str) or (self.note_any and note)) else None)
        line = 'PASS %s' % name
        if self.time_pass:
            line += ' (%.1fs)' % seconds
        if shown:
            line += self.note_sep + str(shown)
        return line

    def text(self, ex):
        return one_line_text(ex) if self.one_line_failures else str(ex)

    def _traceback(self):
        if self.traceback_to is not None:
            self.traceback_to(traceback.format_exc())
        elif self.verbose:
            traceback.print_exc()

    def run_one(self, name, fn):
        t0 = self.clock()
        ok = False
        self.outcome = 'FAIL'
        try:
            note = self.call(name, fn)
            self.after_pass(name)
            ok = True
            self.outcome = 'PASS'
            self.passed += 1
            print(self.pass_line(name, note, self.clock() - t0), flush=True)
        except self.skip_exceptions as ex:
            ok = True
            self.outcome = 'SKIP'
            self.skipped += 1
            print('SKIP %s: %s' % (name, ex), flush=True)
        except self.fail_exceptions as ex:
            self.failed += 1
            print('FAIL %s: %s%s' % (name, self.failure_text(name, ex), self.failure_extra(name)), flush=True)
            self._traceback()
        except Exception as ex:     # a broken test is a failed test
            self.failed += 1
            print('FAIL %s: %s: %s' % (name, type(ex).__name__, self.text(ex)), flush=True)
            self._traceback()
        finally:
            self.cleanup(name, ok)
        return ok

    def run(self, selected):
        for name, fn in selected:
            self.run_one(name, fn)
        return self.finish()

    def finish(self):
        print(closing_line(self.passed, self.failed, self.skipped, self.always_skipped), flush=True)
        return 1 if self.failed else 0


def fail_all(selected, why, status='FAIL'):
    """A suite that cannot start (no library, no build): every selected test FAIL (or SKIP) with
    the reason, then the closing line.  Returns the exit status."""
    for name in selected:
        print('%s %s: %s' % (status, name[0] if isinstance(name, tuple) else name, why), flush=True)
    n = len(selected)
    print(closing_line(0, n if status == 'FAIL' else 0, n if status == 'SKIP' else 0), flush=True)
    return 1 if status == 'FAIL' else 0


def signal_name(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return 'signal %d' % n


# ---------------------------------------------------------------- JSON events

def parse_events(text, blank_lines_fail=False, where='log'):
    """The complete lines of a JSON Lines log (a last line without '\\n' is still being
    written), each a JSON object; anything else fails the test."""
    out = []
    for line in text.split('\n')[:-1]:
        if not line.strip():
            if blank_lines_fail:
                raise TestFailure('empty line in the JSON log')
            continue
        try:
            ev = json.loads(line)
        except ValueError as ex:
            raise TestFailure('%s line is not JSON (%s): %r' % (where, ex, line[:300]))
        if not isinstance(ev, dict):
            raise TestFailure('%s line is not a JSON object: %r' % (where, line[:300]))
        out.append(ev)
    return out


def read_events(path, blank_lines_fail=False):
    """parse_events of a log file; [] when there is no such regular file."""
    if not os.path.isfile(path):      # never a FIFO: opening one would wait for a writer
        return []
    try:
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8', 'replace')
    except OSError:
        return []
    return parse_events(text, blank_lines_fail)


def of_kind(evs, kind):
    return [e for e in evs if e.get('event') == kind]


def leaks(evs, reason=None):
    return [e for e in evs if e.get('event') == 'leak' and (reason is None or e.get('reason') == reason)]


def functions(frames):
    return [f.get('function') or '' for f in frames or []]


# ---------------------------------------------------------------- the kernel's view

_PID_RX = re.compile(r'pid=(\d+)')


def ss_close_wait(port):
    """ss's lines of the CLOSE-WAIT sockets whose local port is `port`."""
    out = subprocess.run(['ss', '-tanpH', 'state', 'close-wait', '( sport = :%d )' % port],
                         capture_output=True, text=True, timeout=10).stdout
    return [l for l in out.splitlines() if l.strip()]


def close_wait_sockets():
    """Every TCP socket in CLOSE_WAIT (ss -tanpH state close-wait): dicts local, peer, pids."""
    r = subprocess.run(['ss', '-tanpH', 'state', 'close-wait'], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=10)
    out = []
    for line in r.stdout.decode('utf-8', 'replace').splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        out.append({'local': parts[2], 'peer': parts[3], 'pids': {int(p) for p in _PID_RX.findall(line)}})
    return out


# ---------------------------------------------------------------- the watcher processes

def watcher_spec_pid(env_entry):
    """The pid of the process that started a watcher, from its CLOSEWAIT_WATCHER_OF=memfd:stderr:pid:..."""
    fields = env_entry.split(b'=', 1)[1].split(b':')
    return int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None


def watchers_of(pid):
    """Pids of the watcher processes (cmdline closewait-watcher) started by program pid (one
    watcher serves a process and the processes it forks)."""
    found = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % d, 'rb') as f:
                if f.read().split(b'\0')[0] != b'closewait-watcher':
                    continue
            with open('/proc/%s/environ' % d, 'rb') as f:
                env = f.read().split(b'\0')
        except OSError:
            continue
        if any(e.startswith(b'CLOSEWAIT_WATCHER_OF=') and watcher_spec_pid(e) == pid for e in env):
            found.append(int(d))
    return found


# ---------------------------------------------------------------- building the C programs

# The flags each kind of test program is built with (the same as before they were shared):
CFLAGS = {
    # tests/progs/*.c (for tests/run.py; tests/hostile/*.c: see PROGRAM_SETS)
    'progs': ['-O1', '-g', '-Wall', '-Wextra', '-Werror', '-pthread',
              '-I' + os.path.join(ROOT, 'src'), '-I' + os.path.join(ROOT, 'include')],
    # tests/deploy/progs/*.c
    'deploy': ['-O1', '-g', '-Wall', '-Wextra', '-Werror', '-fno-omit-frame-pointer'],
    # tests/symbols/progs/*.c (plus -O2 -g and per-program flags)
    'symbols': ['-std=gnu11', '-Wall', '-Wextra', '-Werror'],
    # programs that compile a file of src/ into themselves (tests/run.py's unit programs)
    'unit': ['-O1', '-g', '-std=gnu11', '-Wall', '-Wextra', '-Werror', '-Wshadow', '-Wformat=2',
             '-Wno-format-nonliteral', '-I' + os.path.join(ROOT, 'include'),
             '-I' + os.path.join(ROOT, 'src')],
}


def compile_c(sources, out, flags=(), libs=(), cc=None, timeout=120, env=None, atomic=False):
    """Compiles C (or C++, with cc='g++') sources into `out`, without the library preloaded.
    Returns the CompletedProcess (stdout and stderr together); `atomic` builds aside and renames
    into place, so that a concurrent run never executes half a file."""
    if isinstance(sources, str):
        sources = [sources]
    cc = cc or os.environ.get('CC') or 'cc'
    target = '%s.%d.tmp' % (out, os.getpid()) if atomic else out
    r = subprocess.run([cc] + list(flags) + ['-o', target] + list(sources) + list(libs),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       env=clean_env(env))
    if atomic and r.returncode == 0:
        os.rename(target, out)
    return r


def _hostile_cflags():
    # tests/hostile/Makefile had CFLAGS ?= -O1 -g: a CFLAGS of the environment replaces it
    return os.environ.get('CFLAGS', '-O1 -g').split()


_HOSTILE_FLAGS = ['-Wall', '-Wextra', '-Werror', '-pthread', '-fno-omit-frame-pointer']

# Each directory of C test programs: where its sources are, which of them, where they are built,
# with which flags, libraries, compiler, and which headers they depend on.
PROGRAM_SETS = {
    'progs': dict(src=os.path.join(TESTS_DIR, 'progs'), match=lambda n: n.endswith('.c'),
                  out=os.path.join(TESTS_DIR, 'build'), flags=lambda: CFLAGS['progs'],
                  libs=[], cc=None, deps=[], mode=None),
    'hostile': dict(src=os.path.join(TESTS_DIR, 'hostile'),
                    match=lambda n: (n.startswith('h_') and n.endswith('.c')) or n == 'soak.c',
                    out=os.path.join(TESTS_DIR, 'hostile', 'build'),
                    flags=lambda: _hostile_cflags() + _HOSTILE_FLAGS,
                    libs=['-ldl'], cc=None, deps=['common.h'], mode=None),
    'deploy': dict(src=os.path.join(TESTS_DIR, 'deploy', 'progs'), match=lambda n: n.endswith('.c'),
                   out=os.path.join(TESTS_DIR, 'deploy', 'build'), flags=lambda: CFLAGS['deploy'],
                   libs=[], cc='gcc', deps=['common.h'],
                   mode=0o755),     # programs that become nobody still exec from there
}

# Shared libraries among the test programs: (set, source, output name, flags).
# The dlopen'ed library of tests/hostile: its accept caller must keep a frame of its own (no
# tail call).
SHARED_LIBS = [
    ('hostile', 'libleaky.c', 'libleaky.so',
     lambda: ['-O1', '-g'] + _HOSTILE_FLAGS + ['-fPIC', '-shared', '-fno-optimize-sibling-calls']),
]


def build_prog(src, out, flags, libs=(), cc=None, deps=()):
    """Builds one C program `src` into `out` when `out` is missing or older than the source or
    `deps`, built aside and renamed into place.  A build that fails raises TestFailure with the
    compiler's words.  Returns `out`."""
    newest = max([os.path.getmtime(src)] + [os.path.getmtime(d) for d in deps])
    if os.path.exists(out) and os.path.getmtime(out) >= newest:
        return out
    r = compile_c([src], out, flags, libs=libs, cc=cc, atomic=True)
    if r.returncode != 0:
        text = ' | '.join(l for l in r.stdout.decode('utf-8', 'replace').splitlines() if l.strip())
        raise TestFailure('%s %s: %s' % (cc or os.environ.get('CC') or 'cc', os.path.basename(src),
                                         text if len(text) <= 800 else text[:800] + '...'))
    return out


def build_programs(kind):
    """Builds every C program of one set of PROGRAM_SETS (the way tests/Makefile,
    tests/hostile/Makefile and every suite build them); returns {name: path}."""
    spec = PROGRAM_SETS[kind]
    os.makedirs(spec['out'], exist_ok=True)
    if spec['mode'] is not None:
        os.chmod(spec['out'], spec['mode'])
    deps = [os.path.join(spec['src'], d) for d in spec['deps']]
    built = {}
    for src in sorted(os.listdir(spec['src'])):
        if not spec['match'](src):
            continue
        name = src[:-2]
        built[name] = build_prog(os.path.join(spec['src'], src), os.path.join(spec['out'], name),
                                 spec['flags'](), libs=spec['libs'], cc=spec['cc'], deps=deps)
    for set_name, src, name, flags in SHARED_LIBS:
        if set_name == kind:
            built[name] = build_prog(os.path.join(spec['src'], src), os.path.join(spec['out'], name),
                                     flags(), cc=spec['cc'], deps=deps)
    return built


def log_to_stderr(msg):
    sys.stderr.write('    %s\n' % msg)
