#!/usr/bin/env python3
"""CLOSEWAIT_METRICS: real programs under the library leak sockets on 127.0.0.1; the file the
watcher writes is read with a real Prometheus parser (prometheus_client's, the one Python
exporters and tools use) and its numbers are held against the kernel's (ss), the JSON log and
closewait-report.

    python3 tests/metrics/run.py [-k SUBSTRING] [-v]

The parser: prometheus_client (Debian python3-prometheus-client) in /usr/bin/python3 or in
this interpreter; `promtool check metrics` too when it is installed.  Without a parser the
tests say SKIP.  Programs: tests/build/tserver and tclient (the core suite's), and
tests/metrics/progs/many_sites.c (client sockets from 1..40 call sites).
"""
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_DIR = os.path.dirname(HERE)
sys.path.insert(0, TESTS_DIR)
import harness  # noqa: E402
from harness import TestFailure, TestSkip, check, poll_until  # noqa: E402

ROOT = harness.ROOT
BUILD = os.path.join(HERE, 'build')
REPORT_TOOL = os.path.join(ROOT, 'tools', 'closewait-report')
GRACE_MS = 200
WAIT = 10.0
TESTS = harness.Registry()
test = TESTS.test
VERBOSE = False
PROGS = {}
SANITIZER_MARKS = ('ERROR: AddressSanitizer', 'ERROR: LeakSanitizer', 'runtime error:',
                   'WARNING: ThreadSanitizer', 'ERROR: ThreadSanitizer')
STDERRS = []        # the stderr of every program of the running test, kept at its cleanup


def sanitized():
    """A sanitizer runtime is preloaded before the library: its interceptor is then the first
    frame outside libc (for closewait-report too), and TSan refuses threads after a fork."""
    return 'san.so' in harness.preload_value()


def log(msg):
    if VERBOSE:
        sys.stderr.write('    %s\n' % msg)


# ---------------------------------------------------------------- the parser

PARSE_SCRIPT = r'''
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": fam.name, "type": fam.type, "help": fam.documentation,
                "samples": [[s.name, s.labels, s.value] for s in fam.samples]})
print(json.dumps(out))
'''
_parser = []


def parser_python():
    """An interpreter that has prometheus_client: Debian's /usr/bin/python3 (its dist-packages),
    else this one.  None if neither."""
    if not _parser:
        found = None
        for py in ('/usr/bin/python3', sys.executable):
            if py and os.path.exists(py) and subprocess.run(
                    [py, '-c', 'import prometheus_client.parser'], capture_output=True).returncode == 0:
                found = py
                break
        _parser.append(found)
    return _parser[0]


def parse(text):
    """The families prometheus_client reads from text: [{name, type, help, samples}]; a text it
    refuses fails the test."""
    py = parser_python()
    if py is None:
        raise TestSkip('no Prometheus parser: prometheus_client is not installed '
                       '(Debian: apt-get install python3-prometheus-client)')
    r = subprocess.run([py, '-c', PARSE_SCRIPT], input=text.encode('utf-8', 'surrogateescape'),
                       capture_output=True, timeout=30)
    check(r.returncode == 0, 'prometheus_client refuses the file: %s\n%s' % (
        r.stderr.decode('utf-8', 'replace').strip().splitlines()[-1:], text[:2000]))
    fams = json.loads(r.stdout)
    promtool = shutil.which('promtool')
    if promtool:
        p = subprocess.run([promtool, 'check', 'metrics'], input=text.encode(), capture_output=True, timeout=30)
        # promtool's lint also warns about style (exit 3); a parse error is exit 1
        check(p.returncode in (0, 3), 'promtool check metrics: %s' % p.stderr.decode('utf-8', 'replace'))
    return fams


def samples(fams, name):
    """[(labels, value)] of the samples called name."""
    return [(s[1], s[2]) for f in fams for s in f['samples'] if s[0] == name]


def one(fams, name, **want):
    got = [v for l, v in samples(fams, name) if all(l.get(k) == w for k, w in want.items())]
    check(len(got) == 1, '%s%s: %d samples (%s)' % (name, want, len(got), samples(fams, name)))
    return got[0]


def read_text(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'surrogateescape')
    except FileNotFoundError:
        return None


def wait_metrics(path, pred, timeout=WAIT, what='the metrics wanted'):
    """Parses the file until pred(families) holds; returns the families."""
    last = [None]

    def ok():
        text = read_text(path)
        if text is None:
            return None
        fams = parse(text)
        last[0] = text
        return fams if pred(fams) else None
    fams = poll_until(ok, timeout, 0.1)
    check(fams, '%s not in %s within %.0fs; last file: %s' % (what, path, timeout, (last[0] or '(none)')[:3000]))
    return fams


def held_total(fams):
    return sum(v for _, v in samples(fams, 'closewait_sockets_held'))


# ---------------------------------------------------------------- programs

class Prog:
    """A program under the library (JSON log and the metrics in its own temp dir)."""

    def __init__(self, argv, metrics='cw.prom', env=None, workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix='cw-metrics-')
        self.own_dir = workdir is None
        self.log = os.path.join(self.dir, 'closewait.log')
        self.metrics = metrics if metrics is None or metrics.startswith('/') else os.path.join(self.dir, metrics)
        e = {'CLOSEWAIT_INTERVAL_MS': '50'}
        if self.metrics is not None:
            e['CLOSEWAIT_METRICS'] = self.metrics
        e.update(env or {})
        self.stderr_path = os.path.join(self.dir, 'stderr')
        self._err = open(self.stderr_path, 'wb')
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     env=harness.lib_env(self.log, harness.preload_value(), 'json', GRACE_MS, e))
        self.pid = self.proc.pid
        self.lines = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.append(raw.decode('utf-8', 'replace').rstrip('\n'))

    def line(self, prefix, timeout=WAIT):
        got = poll_until(lambda: next((l for l in self.lines if l.startswith(prefix)), None), timeout)
        check(got, 'no line %r from %s within %.0fs (stdout %s, stderr %s)' % (
            prefix, os.path.basename(self.proc.args[0]), timeout, self.lines[-5:], self.stderr()[-500:]))
        return got

    def port(self):
        return int(self.line('PORT ').split()[1])

    def events(self):
        try:
            return harness.read_events(self.log)
        except FileNotFoundError:
            return []

    def wait_leaks(self, n, timeout=WAIT):
        got = poll_until(lambda: len(harness.leaks(self.events())) >= n, timeout, 0.05)
        check(got, '%d leak events wanted, got %d' % (n, len(harness.leaks(self.events()))))
        return harness.leaks(self.events())

    def stderr(self):
        with open(self.stderr_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def finish(self, timeout=15):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise TestFailure('%s did not exit' % self.proc.args[0])
        self._t.join(2)
        return rc

    def cleanup(self):
        try:
            STDERRS.append((os.path.basename(self.proc.args[0]), self.stderr()))
        except OSError:
            pass
        try:
            self.proc.stdin.close()     # forked children end at their stdin's EOF
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._err.close()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def tserver(n, extra=(), **kw):
    return Prog([PROGS['tserver'], '-n', str(n), '-c', 'close', '-q', '-l', '30000'] + list(extra), **kw)


def connect(port, data):
    s = socket.create_connection(('127.0.0.1', port), timeout=5)
    if data:
        s.sendall(data)
    s.close()


def kernel_close_wait(pid):
    return [s for s in harness.close_wait_sockets() if pid in s['pids']]


def with_prog(make):
    """Runs fn(prog) with a program made by make(), cleaned up after."""
    def deco(fn):
        def run():
            p = make()
            try:
                return fn(p)
            finally:
                p.cleanup()
        run.__name__ = fn.__name__
        return run
    return deco


# ---------------------------------------------------------------- tests

@test
def test_values_match_kernel_log_and_report():
    """3 leaked of 4 connections: the file says 3 held from one site, named as the JSON log and
    closewait-report name it; the kernel shows 3 in CLOSE_WAIT; at exit the counts stay."""
    p = tserver(4)
    try:
        port = p.port()
        for data in (b'LEAK 1', b'CLOSE', b'LEAK 2', b'LEAK 3'):
            connect(port, data)
        leaks = p.wait_leaks(3)
        fams = wait_metrics(p.metrics, lambda f: held_total(f) == 3, what='3 sockets held')
        kernel = kernel_close_wait(p.pid)
        check(len(kernel) == 3, 'the kernel shows %d CLOSE_WAIT sockets of pid %d, the file 3' % (len(kernel), p.pid))
        exe = os.path.realpath(PROGS['tserver'])
        site = samples(fams, 'closewait_sockets_held')
        check(len(site) == 1, 'one open site expected: %s' % site)
        labels, value = site[0]
        check(labels.get('program') == exe and labels.get('pid') is None,
              'program label %r (want %r, and no pid label without %%p)' % (labels, exe))
        ids = {e['stack_id'] for e in leaks}
        check(ids == {labels['stack_id']}, 'stack_id %s, the log says %s' % (labels['stack_id'], ids))
        rep = subprocess.run([sys.executable, REPORT_TOOL, '--format', 'json', '--no-symbolize', p.log],
                             capture_output=True, timeout=60)
        findings = json.loads(rep.stdout)['findings']
        check(len(findings) == 1 and findings[0]['top_frame'] == labels['top_frame'],
              'top_frame %r, closewait-report says %r' % (labels['top_frame'], [f['top_frame'] for f in findings]))
        check(sanitized() or labels['top_frame'].startswith('tserver_'),
              'top frame is not the program\'s own: %r' % labels['top_frame'])
        check(one(fams, 'closewait_leaks_reported_total', program=exe) == 3, 'leaks_reported_total')
        check(one(fams, 'closewait_open_sites', program=exe) == 1, 'open_sites')
        check(one(fams, 'closewait_processes_watched', program=exe) == 1, 'processes_watched')
        check(one(fams, 'closewait_backlog_dead_accepted_total', listen='127.0.0.1:%d' % port) == 0, 'listener series')
        check(one(fams, 'closewait_watcher_restarts_total') == 0, 'restarts')
        check(one(fams, 'closewait_reports_dropped_total') == 0, 'reports dropped')
        types = {f['name']: f['type'] for f in fams}
        check(types.get('closewait_sockets_held') == 'gauge' and types.get('closewait_leaks_reported') == 'counter',
              'TYPE lines: %s' % types)
        check(all(f['help'] for f in fams), 'a family without HELP: %s' % [f['name'] for f in fams if not f['help']])
        mode = stat.S_IMODE(os.stat(p.metrics).st_mode)
        check(mode == 0o644, 'file mode %o, want 644 (the collector runs as another user)' % mode)
        before = os.stat(p.metrics).st_ino
        check(p.finish() == 0, 'tserver exit status')
        after = parse(read_text(p.metrics))
        check(os.stat(p.metrics).st_ino != before, 'no write at exit')
        check(held_total(after) == 3 and one(after, 'closewait_leaks_reported_total') == 3,
              'at exit: %s' % samples(after, 'closewait_sockets_held'))
        left = [n for n in os.listdir(p.dir) if n.endswith('.tmp')]
        check(not left, 'temporary files left: %s' % left)
        return '3 held = ss 3, stack %s, %s' % (labels['stack_id'], labels['top_frame'])
    finally:
        p.cleanup()


@test
def test_wrapper_option():
    """tools/closewait -m PATH sets CLOSEWAIT_METRICS."""
    if sanitized():
        raise TestSkip('the wrapper preloads the library alone; a sanitizer runtime must come first')
    work = tempfile.mkdtemp(prefix='cw-metrics-wrapper-')
    metrics = os.path.join(work, 'w.prom')
    env = harness.clean_env()
    env['CLOSEWAIT_LIB'] = harness.library()
    proc = subprocess.Popen([os.path.join(ROOT, 'tools', 'closewait'), '-m', metrics, '-g', '200', '-j',
                             '-o', os.path.join(work, 'log'), '--', PROGS['tserver'], '-n', '1', '-c', 'leak',
                             '-q', '-l', '30000'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        port = int(proc.stdout.readline().split()[1])
        connect(port, b'x')
        fams = wait_metrics(metrics, lambda f: held_total(f) == 1, what='1 held')
        return 'held %d' % held_total(fams)
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        STDERRS.append(('closewait', proc.stderr.read().decode('utf-8', 'replace')))
        proc.stdout.close()
        proc.stderr.close()
        shutil.rmtree(work, ignore_errors=True)


@test
def test_replaced_atomically_at_most_once_a_second():
    """A reader that reads the file as fast as it can for 3.5 s while the watcher looks every
    10 ms: every read is a whole file (its last family there, a line end last), the file is
    replaced (new inodes), and not more than once a second."""
    p = tserver(3, env={'CLOSEWAIT_INTERVAL_MS': '10'})
    try:
        port = p.port()
        connect(port, b'LEAK')
        wait_metrics(p.metrics, lambda f: held_total(f) == 1, what='1 held')
        t0 = time.time()
        # at least 3.5 s; on until the last leak is in the file (at most 10 s: a loaded machine)
        stop, limit = t0 + 3.5, t0 + 10
        reads, inodes, contents, bad = 0, set(), set(), []
        last_held = re.compile(r'^closewait_sockets_held\{[^\n]*\} 3$', re.M)

        def more():   # two more leaks while the reader reads: the content changes
            time.sleep(1.0)
            connect(port, b'LEAK')
            time.sleep(1.0)
            connect(port, b'LEAK')
        threading.Thread(target=more, daemon=True).start()
        while time.time() < stop or (time.time() < limit and not any(last_held.search(t) for t in contents)):
            with open(p.metrics, 'rb') as f:
                ino = os.fstat(f.fileno()).st_ino
                text = f.read().decode('utf-8', 'surrogateescape')
            reads += 1
            inodes.add(ino)
            contents.add(text)
            if not text.endswith('\n') or 'closewait_watcher_restarts_total{' not in text:
                bad.append(text[-200:])
        seconds = time.time() - t0
        check(not bad, '%d of %d reads saw a partial file, e.g. %r' % (len(bad), reads, bad[:1]))
        for text in contents:
            parse(text)
        held = sorted(held_total(parse(t)) for t in contents)
        check(held[-1] == 3, 'the leaks made meanwhile not seen: held %s' % held)
        check(len(inodes) >= 3, 'the file was not replaced: %d inode(s) in %.1fs' % (len(inodes), seconds))
        # 10 ms looks, at most one write a second (+1: a write may fall just before the first read)
        check(len(inodes) <= int(seconds) + 2, '%d writes in %.1fs: more than one a second' % (len(inodes), seconds))
        return '%d reads, %d versions, %d writes in %.1fs' % (reads, len(contents), len(inodes), seconds)
    finally:
        p.cleanup()


def many_sites_server():
    """A listener that accepts and closes at once: its clients' sockets go to CLOSE_WAIT."""
    ls = socket.socket()
    ls.bind(('127.0.0.1', 0))
    ls.listen(128)
    ls.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
                c.close()
            except socket.timeout:
                pass
            except OSError:
                return
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return ls, stop


@test
def test_label_bound_top_20_plus_other():
    """30 open sites holding 3, 2 and 1 sockets (10 each): 20 site series (the 3s and 2s) and one
    "other" holding the 10 of the 1s; the sum is the kernel's count."""
    ls, stop = many_sites_server()
    port = ls.getsockname()[1]
    p = Prog([PROGS['many_sites'], str(port), '30'])
    try:
        total = int(p.line('OPENED ').split()[1])
        check(total == 60, 'many_sites opened %d' % total)
        p.wait_leaks(60, timeout=20)
        fams = wait_metrics(p.metrics, lambda f: held_total(f) == 60, what='60 held')
        kernel = kernel_close_wait(p.pid)
        check(len(kernel) == 60, 'the kernel shows %d CLOSE_WAIT sockets, the file 60' % len(kernel))
        series = samples(fams, 'closewait_sockets_held')
        named = [(l, v) for l, v in series if l['stack_id'] != 'other']
        other = [(l, v) for l, v in series if l['stack_id'] == 'other']
        check(len(named) == 20 and len(other) == 1, '%d site series and %d other' % (len(named), len(other)))
        check(sorted(v for _, v in named) == [2] * 10 + [3] * 10, 'named values %s' % sorted(v for _, v in named))
        check(other[0][1] == 10, 'other holds %s, want 10' % other[0][1])
        check(one(fams, 'closewait_open_sites') == 30, 'open_sites')
        tops = {l['top_frame'] for l, _ in named}
        check(sanitized() or (len(tops) == 20 and all(t.startswith('site_') for t in tops)), 'top frames %s' % sorted(tops))
        return '21 series for 30 sites, sum 60 = ss'
    finally:
        p.cleanup()
        stop.set()
        ls.close()


@test
def test_processes_of_a_tree_summed():
    """Three processes (a parent and two forked children) leak from the same 4 sites: one
    series per site holding the three processes' sum, as the kernel counts them; when the
    children are killed their sockets leave the gauges, their leaks stay in the counter."""
    ls, stop = many_sites_server()
    p = Prog([PROGS['many_sites'], str(ls.getsockname()[1]), '4', '3'])
    try:
        children = [int(p.line('CHILD ').split()[1])]
        poll_until(lambda: len([l for l in p.lines if l.startswith('CHILD ')]) == 2, WAIT)
        children = [int(l.split()[1]) for l in p.lines if l.startswith('CHILD ')]
        check(len(children) == 2 and int(p.line('OPENED ').split()[1]) == 7, 'many_sites: %s' % p.lines)
        fams = wait_metrics(p.metrics, lambda f: held_total(f) == 21, what='21 held')
        kernel = sum(len(kernel_close_wait(pid)) for pid in [p.pid] + children)
        check(kernel == 21, 'the kernel shows %d CLOSE_WAIT sockets of the 3 processes, the file 21' % kernel)
        check(sorted(v for _, v in samples(fams, 'closewait_sockets_held')) == [3, 3, 6, 9],
              'per site: %s' % samples(fams, 'closewait_sockets_held'))
        check(one(fams, 'closewait_processes_watched') == 3, 'processes_watched')
        check(one(fams, 'closewait_leaks_reported_total') == 21, 'leaks_reported_total')
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        fams = wait_metrics(p.metrics, lambda f: held_total(f) == 7 and one(f, 'closewait_processes_watched') == 1,
                            what='7 held by 1 process')
        check(one(fams, 'closewait_leaks_reported_total') == 21,
              'the counter went back: %s' % samples(fams, 'closewait_leaks_reported_total'))
        return '3 processes x 7 = 21 = ss; after the children died: held 7, reported 21'
    finally:
        p.cleanup()
        stop.set()
        ls.close()


@test
def test_one_writer_per_file():
    """Two programs, two watchers, one path: they do not take turns at the file (each knows only
    its own processes); the first keeps it, the other says so once.  With %p each program writes
    its own file, with a pid label."""
    ls, stop = many_sites_server()
    work = tempfile.mkdtemp(prefix='cw-metrics-writers-')
    running = []
    try:
        for path in ('shared.prom', 'shared.prom', 'own-%p.prom', 'own-%p.prom'):
            running.append(Prog([PROGS['many_sites'], str(ls.getsockname()[1]), '2'],
                                metrics=os.path.join(work, path)))
        for p in running:
            p.line('OPENED ')
        shared = running[0].metrics
        wait_metrics(shared, lambda f: held_total(f) == 3, what='3 held')
        marks = set()
        stop_at = time.time() + 2.5
        while time.time() < stop_at:
            marks.add((read_text(shared) or '').split('\n', 1)[0])
            time.sleep(0.05)
        check(len(marks) == 1, 'writers took turns: %s' % marks)

        def warnings():
            return [l for p in running[:2] for l in p.stderr().splitlines() if 'CLOSEWAIT_METRICS' in l]
        warned = poll_until(lambda: warnings(), WAIT)
        time.sleep(1.2)
        check(len(warnings()) == 1 and 'another watcher' in warned[0], 'warnings: %s' % warnings())
        pids = [p.pid for p in running[2:]]
        for pid in pids:
            f = wait_metrics(os.path.join(work, 'own-%d.prom' % pid), lambda f: held_total(f) == 3, what='3 held')
            check({l.get('pid') for l, _ in samples(f, 'closewait_sockets_held')} == {str(pid)}, 'pid labels')
        files = sorted(n for n in os.listdir(work) if n.endswith('.prom'))
        check(files == sorted(['shared.prom'] + ['own-%d.prom' % pid for pid in pids]), 'files %s' % files)
        check(not [l for p in running[2:] for l in p.stderr().splitlines()], 'warnings with %p')
        return 'shared path: one writer, 1 warning; %p: one file each'
    finally:
        for p in running:
            p.cleanup()
        stop.set()
        ls.close()
        shutil.rmtree(work, ignore_errors=True)


@test
def test_label_values_escaped():
    """Label values with a double quote, a backslash and a newline, read back exactly by the
    parser: a program whose source file is `we"ird\src<newline>.c` (the top frame names it) and
    whose path is `many"sites\bin`; then a program whose own path has a newline."""
    work = tempfile.mkdtemp(prefix='cw-metrics-esc-')
    ls, stop = many_sites_server()
    try:
        src = os.path.join(work, 'we"ird\\src\n.c')
        shutil.copy(os.path.join(HERE, 'progs', 'many_sites.c'), src)
        exe = os.path.join(work, 'many"sites\\bin')
        r = harness.compile_c([src], exe, harness.CFLAGS['progs'] + ['-fno-ipa-icf'])
        if r.returncode != 0:
            raise TestFailure('cc: %s' % r.stdout.decode('utf-8', 'replace')[:500])
        exe_nl = os.path.join(work, 'line\nbreak')
        shutil.copy(exe, exe_nl)
        notes = []
        for prog, sites in ((exe, 2), (exe_nl, 1)):
            metrics = os.path.join(work, '%d.prom' % sites)
            p = Prog([prog, str(ls.getsockname()[1]), str(sites)], metrics=metrics, workdir=work)
            try:
                p.line('OPENED ')
                want = 3 if sites == 2 else 1
                fams = wait_metrics(p.metrics, lambda f: held_total(f) == want, what='%d held' % want)
                text = read_text(p.metrics)
                escaped = prog.replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')
                check('program="%s"' % escaped in text, 'the program label is not escaped as the format says')
                progs = {l['program'] for l, _ in samples(fams, 'closewait_sockets_held')}
                check(progs == {prog}, 'program label read back as %r, want %r' % (progs, prog))
                tops = sorted(l['top_frame'] for l, _ in samples(fams, 'closewait_sockets_held'))
                if sites == 2 and not sanitized():
                    check(all(t.startswith('site_') and '(we"ird\\src\n.c:' in t for t in tops),
                          'top frames %r do not name the file we"ird\\src<newline>.c' % tops)
                notes.append('%r: %s' % (os.path.basename(prog), tops))
            finally:
                p.cleanup()
        return '; '.join(notes)
    finally:
        stop.set()
        ls.close()
        shutil.rmtree(work, ignore_errors=True)


@test
def test_unsafe_paths_refused():
    """Each unsafe path: one warning line, nothing written there, the program runs and exits as
    always."""
    work = tempfile.mkdtemp(prefix='cw-metrics-unsafe-')
    os.chmod(work, 0o755)
    victim = os.path.join(work, 'victim')
    with open(victim, 'w') as f:
        f.write('precious\n')
    cases = []

    def case(name, path, why, prepare=None):
        cases.append((name, path, why, prepare))
    case('symlink', os.path.join(work, 'link.prom'), 'symlink',
         lambda path: os.symlink(victim, path))
    case('other user', os.path.join(work, 'other.prom'), 'another user',
         lambda path: (open(path, 'w').write('x 1\n'), os.chown(path, 65534, 65534)))
    case('group writable', os.path.join(work, 'gw.prom'), 'writable by group',
         lambda path: (open(path, 'w').write('x 1\n'), os.chmod(path, 0o664)))
    case('not .prom', os.path.join(work, 'victim'), 'does not end in .prom')
    case('relative', None, 'not an absolute path')
    loose = os.path.join(work, 'loose')
    case('directory anyone may write', os.path.join(loose, 'x.prom'), 'anyone may write',
         lambda path: (os.mkdir(loose), os.chmod(loose, 0o777)))
    case('a directory', os.path.join(work, 'dir.prom'), 'not a regular file', lambda path: os.mkdir(path))
    if os.geteuid() != 0:
        cases = [c for c in cases if c[0] != 'other user']
    def snapshot():
        return {n: (os.lstat(os.path.join(work, n)).st_ino, read_text(os.path.join(work, n))
                    if os.path.isfile(os.path.join(work, n)) else None) for n in os.listdir(work)}
    running = []
    try:
        for name, path, why, prepare in cases:
            if prepare:
                prepare(path)
        before = snapshot()
        # all at once: each runs past a due write (at least one a second) and its exit
        for name, path, why, prepare in cases:
            running.append((name, why, tserver(1, metrics=path) if path else
                            tserver(1, env={'CLOSEWAIT_METRICS': 'rel.prom'})))
        for name, why, p in running:
            connect(p.port(), b'LEAK')
        for name, why, p in running:
            p.wait_leaks(1)
        time.sleep(1.2)
        for name, why, p in running:
            check(p.finish() == 0, '%s: tserver exit status' % name)
            lines = [l for l in p.stderr().splitlines() if 'CLOSEWAIT_METRICS' in l]
            check(len(lines) == 1 and why in lines[0], '%s: warnings %s (want one saying %r)' % (name, lines, why))
            check(all(l.startswith('closewait: ') for l in p.stderr().splitlines()), '%s: stderr %r' % (name, p.stderr()))
        after = snapshot()
        check(after == before, 'the directory changed: %s -> %s' % (before, after))
        check(read_text(victim) == 'precious\n', 'the victim file changed')
        return '%d cases refused with one line each' % len(cases)
    finally:
        for _, _, p in running:
            p.cleanup()
        shutil.rmtree(work, ignore_errors=True)


@test
def test_thread_mode_program_never_sees_it():
    """CLOSEWAIT_WATCHER=thread, %p in the path: the file is written from the watcher thread's own
    descriptor table (the program's /proc/PID/fd never shows it, polled through the writes), and
    at exit."""
    p = tserver(2, metrics='cw-%p.prom', env={'CLOSEWAIT_WATCHER': 'thread'})
    try:
        path = p.metrics.replace('%p', str(p.pid))
        port = p.port()
        connect(port, b'LEAK')
        seen = []
        stop = time.time() + 2.5
        while time.time() < stop:
            for fd in os.listdir('/proc/%d/fd' % p.pid):
                try:
                    target = os.readlink('/proc/%d/fd/%s' % (p.pid, fd))
                except OSError:
                    continue
                if target.startswith(p.dir) and not target.endswith(('stderr', 'closewait.log')):
                    seen.append(target)
            time.sleep(0.005)
        fams = wait_metrics(path, lambda f: held_total(f) == 1, what='1 held')
        check(not seen, 'the program had the metrics file open: %s' % seen[:3])
        labels = samples(fams, 'closewait_sockets_held')[0][0]
        check(labels.get('pid') == str(p.pid), 'pid label %r with %%p in the path' % labels.get('pid'))
        connect(port, b'LEAK')
        p.wait_leaks(2)
        ino = os.stat(path).st_ino
        check(p.finish() == 0, 'exit status')
        check(os.stat(path).st_ino != ino, 'no write at exit')
        check(held_total(parse(read_text(path))) >= 1, 'at exit')
        return 'written from the thread, pid label %s' % labels['pid']
    finally:
        p.cleanup()


@test
def test_thread_mode_forked_children():
    """Thread mode, a parent and a forked child leaking 3 each: with %p each process writes its
    own file (its own pid label, its own counts); without %p only the first process writes (a
    child would overwrite its parent's file), and nothing is said."""
    if 'tsan' in harness.preload_value():
        raise TestSkip('ThreadSanitizer does not start threads after a fork of a threaded process')
    ls, stop = many_sites_server()
    work = tempfile.mkdtemp(prefix='cw-metrics-threads-')
    running = []
    try:
        env = {'CLOSEWAIT_WATCHER': 'thread'}
        for path in ('own-%p.prom', 'shared.prom'):
            running.append(Prog([PROGS['many_sites'], str(ls.getsockname()[1]), '2', '2'],
                                metrics=os.path.join(work, path), env=env))
        for p in running:
            p.line('OPENED ')
        own = running[0]
        pids = [own.pid] + [int(l.split()[1]) for l in own.lines if l.startswith('CHILD ')]
        for pid in pids:
            f = wait_metrics(os.path.join(work, 'own-%d.prom' % pid), lambda f: held_total(f) == 3, what='3 held')
            check({l.get('pid') for l, _ in samples(f, 'closewait_sockets_held')} == {str(pid)}, 'pid labels')
            check(one(f, 'closewait_processes_watched') == 1, 'processes in %d\'s file' % pid)
        shared = running[1]
        f = wait_metrics(shared.metrics, lambda f: held_total(f) == 3, what='3 held')
        marks = set()
        for _ in range(30):
            marks.add((read_text(shared.metrics) or '').split('\n', 1)[0])
            time.sleep(0.05)
        mine = '# closewait: written by pid %d started ' % shared.pid
        check(marks and all(m.startswith(mine) for m in marks), 'shared file written by %s, want only pid %d' % (marks, shared.pid))
        files = sorted(n for n in os.listdir(work) if n.endswith('.prom'))
        check(files == sorted(['shared.prom'] + ['own-%d.prom' % pid for pid in pids]), 'files %s' % files)
        check(not [l for p in running for l in p.stderr().splitlines()], 'warnings: %s' % [p.stderr() for p in running])
        return '%%p: %d files; shared: written by the first process only' % len(pids)
    finally:
        for p in running:
            p.cleanup()
        stop.set()
        ls.close()
        shutil.rmtree(work, ignore_errors=True)


@test
def test_watcher_restart_counted():
    """The watcher process is killed; the program starts another at its next socket: the file
    says closewait_watcher_restarts_total 1, and the leak made after is counted."""
    p = tserver(2)
    try:
        port = p.port()
        connect(port, b'LEAK')
        wait_metrics(p.metrics, lambda f: held_total(f) == 1, what='1 held')
        watchers = poll_until(lambda: harness.watchers_of(p.pid), 5)
        check(len(watchers) == 1, 'watchers of %d: %s' % (p.pid, watchers))
        os.kill(watchers[0], signal.SIGKILL)
        poll_until(lambda: not os.path.exists('/proc/%d' % watchers[0]), 5)
        connect(port, b'LEAK')
        fams = wait_metrics(p.metrics, lambda f: samples(f, 'closewait_watcher_restarts_total') and
                            one(f, 'closewait_watcher_restarts_total') == 1 and held_total(f) == 2,
                            what='1 restart and 2 held')
        return 'restarts 1, held %d' % held_total(fams)
    finally:
        p.cleanup()


@test
def test_backlog_deaths_per_listener():
    """Two clients give up while waiting in the accept queue (the server accepts every 1.5 s):
    the listener's series count them as the JSON backlog event does."""
    p = tserver(2, extra=['-w', '1500'])
    try:
        port = p.port()
        for _ in range(2):
            s = socket.create_connection(('127.0.0.1', port), timeout=5)
            s.close()
        listen = '127.0.0.1:%d' % port

        def dead_accepted(f):
            s = samples(f, 'closewait_backlog_dead_accepted_total')
            return any(l.get('listen') == listen and v == 2 for l, v in s)
        fams = wait_metrics(p.metrics, dead_accepted, timeout=15, what='2 dead accepts on %s' % listen)
        bl = [e for e in p.events() if e.get('event') == 'backlog']
        check(bl and max(e.get('accepted_dead', 0) for e in bl) <= 2, 'backlog events %s' % bl)
        check(one(fams, 'closewait_accept_queue_full_total', listen=listen) == 0, 'queue full count')
        return 'dead accepted 2 on %s (log: %s)' % (listen, [e.get('accepted_dead') for e in bl])
    finally:
        p.cleanup()


@test
def test_growth_chart_of_a_real_leak():
    """A server that leaks one connection every 0.3 s: closewait-report finds it growing, says
    the rate, draws the Mermaid block (its last point the sockets the kernel shows held) and,
    with --svg, a chart rsvg-convert renders."""
    p = tserver(6)
    work = tempfile.mkdtemp(prefix='cw-metrics-chart-')
    try:
        port = p.port()
        for i in range(6):
            connect(port, b'LEAK %d' % i)
            p.wait_leaks(i + 1)
            time.sleep(0.3)
        kernel = len(kernel_close_wait(p.pid))
        check(kernel == 6, 'the kernel shows %d CLOSE_WAIT sockets' % kernel)
        svg_dir = os.path.join(work, 'svg')
        r = subprocess.run([sys.executable, REPORT_TOOL, '--no-symbolize', '--svg', svg_dir, p.log],
                           capture_output=True, timeout=60)
        md = r.stdout.decode('utf-8', 'replace')
        check(r.returncode == 0, 'closewait-report: %s' % r.stderr.decode('utf-8', 'replace'))
        m = re.search(r'growing: \*\*yes\*\*, \*\*\+(\d+(?:\.\d)?) sockets/(second|minute) since [0-9:]+ UTC\*\* '
                      r'\(from 1 to 6 held\)', md)
        check(m, 'no growth line in the report: %s' % md[:1500])
        block = re.search(r'```mermaid\n(.*?)```', md, re.S)
        check(block and 'xychart-beta' in block.group(1), 'no Mermaid block')
        values = [int(v) for v in re.search(r'^ *line \[(.*)\]$', block.group(1), re.M).group(1).split(',')]
        check(values[0] == 1 and values[-1] == kernel and values == sorted(values), 'chart values %s' % values)
        svgs = os.listdir(svg_dir)
        check(len(svgs) == 1, 'SVG files: %s' % svgs)
        rsvg = shutil.which('rsvg-convert')
        if rsvg is None:
            return 'rate +%s/%s; rsvg-convert not installed: the SVG not rendered' % (m.group(1), m.group(2))
        png = os.path.join(work, 'chart.png')
        out = subprocess.run([rsvg, '-o', png, os.path.join(svg_dir, svgs[0])], capture_output=True, timeout=60)
        check(out.returncode == 0 and os.path.getsize(png) > 2000, 'rsvg-convert: %s' % out.stderr)
        return 'rate +%s sockets/%s, chart %s, SVG rendered (%d bytes of PNG)' % (
            m.group(1), m.group(2), values, os.path.getsize(png))
    finally:
        p.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def sock_diag_dumps(fams, table):
    got = [v for l, v in samples(fams, 'closewait_sock_diag_dumps_total') if l.get('table') == table]
    return got[0] if len(got) == 1 else None


def walks_and_looks(p, looks):
    """Once the watcher has read the listening table `looks` times: (walks of the connections,
    reads of the listening table) from p's metrics file."""
    fams = wait_metrics(p.metrics, lambda f: (sock_diag_dumps(f, 'listeners') or 0) >= looks,
                        what='%d looks at the listening table' % looks)
    return sock_diag_dumps(fams, 'connections'), sock_diag_dumps(fams, 'listeners')


@test
def test_young_connections_cost_no_walk():
    """A server of short connections (300, each closed within milliseconds) leaves TIME_WAIT
    sockets for the kernel to walk: its watcher asks for the listening table only, never for
    every connection of the namespace (closewait_sock_diag_dumps_total).  A client whose server
    closes on it and that never reads is still reported on time, its FIN dated to the moment
    the server closed although no look walked the connections before it was old."""
    grace = 2000
    env = {'CLOSEWAIT_GRACE_MS': str(grace), 'CLOSEWAIT_INTERVAL_MS': '100'}
    p = tserver(300, env=env)
    try:
        port = p.port()
        for i in range(300):
            connect(port, b'x')
            if i % 50 == 0:
                time.sleep(0.1)
        p.line('DONE')
        time.sleep(0.5)

        walks, lists = walks_and_looks(p, 5)
        check(walks == 0, '%s walks of every connection for connections under %d ms old' % (walks, grace))
    finally:
        p.cleanup()

    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(4)
    c = Prog([PROGS['tclient'], str(srv.getsockname()[1]), 'unread', '20000'], env=env)
    try:
        conn, _ = srv.accept()
        c.line('LEAK ')
        conn.close()
        closed_ms = time.time() * 1000
        leak = c.wait_leaks(1, timeout=grace / 1000 + 8)[0]
        fin_ms = leak['ts_ms'] - leak['since_fin_ms']
        check(closed_ms - 50 <= fin_ms <= closed_ms + 300,
              'FIN dated %+.0f ms from the server\'s close' % (fin_ms - closed_ms))
        late = leak['ts_ms'] - closed_ms
        check(grace - 50 <= late <= grace + 1500, 'reported %.0f ms after the FIN (grace %d)' % (late, grace))
        wait_metrics(c.metrics, lambda f: (sock_diag_dumps(f, 'connections') or 0) >= 1, what='a walk of the connections')
        return ('short connections: %d looks at the listening table, %d walks; the leak: FIN dated %+.0f ms, '
                'reported %.0f ms after it' % (lists, walks, fin_ms - closed_ms, late))
    finally:
        c.cleanup()
        srv.close()


BUSY_SERVER = r"""
import socket, sys, time
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(64)
print('PORT %d' % s.getsockname()[1], flush=True)
s.settimeout(1.0)
end = time.time() + float(sys.argv[1])
n = 0
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        if time.time() > end:
            break
        continue
    c.recv(16)
    c.close()
    n += 1
    time.sleep(0.004)
print('DONE %d' % n, flush=True)
sys.stdin.read()
"""


@test
def test_saturated_queue_turning_over_costs_no_walk():
    """A server that is never idle: connections always wait in its accept queue, but each look
    finds the queue turned over since the last (more accepted than were waiting then), so none can
    have waited there a second: no walk of the namespace's connections for the queue's sake.
    (Before, a queue never seen empty made every look walk, which with the TIME_WAIT sockets of
    such a load costs more each time, spaces the looks out, and so kept the walks coming.)"""
    if not os.path.exists('/usr/bin/python3'):
        raise TestSkip('no /usr/bin/python3')
    secs = 3.0
    env = {'CLOSEWAIT_GRACE_MS': '4000', 'CLOSEWAIT_INTERVAL_MS': '100'}
    p = Prog(['/usr/bin/python3', '-c', BUSY_SERVER, str(secs)], env=env)
    stop = threading.Event()
    seen_queue = []
    try:
        port = int(p.line('PORT ').split()[1])

        def client():
            # four connections waiting at all times: each one, once served, is replaced
            pending = []
            while not stop.is_set():
                while len(pending) < 4:
                    c = socket.socket()
                    c.settimeout(5)
                    c.connect(('127.0.0.1', port))
                    c.sendall(b'x')
                    pending.append(c)
                c = pending.pop(0)
                c.recv(16)
                c.close()
            for c in pending:  # served by the server, which drains its queue before it ends
                c.recv(16)
                c.close()
        threads = [threading.Thread(target=client, daemon=True)]
        threads[0].start()
        deadline = time.time() + secs - 0.3
        while time.time() < deadline:
            out = subprocess.run(['ss', '-Hltn', 'sport = :%d' % port], capture_output=True, text=True).stdout.split()
            if len(out) >= 2:
                seen_queue.append(int(out[1]))
            time.sleep(0.05)
        stop.set()
        threads[0].join(5)
        served = int(p.line('DONE ', timeout=secs + 5).split()[1])

        walks, lists = walks_and_looks(p, 20)
        check(served >= 200, 'the server served only %d connections in %.0f s' % (served, secs))
        waiting = sum(1 for q in seen_queue if q > 0)
        check(len(seen_queue) >= 10 and waiting >= 0.8 * len(seen_queue),
              'the queue was not kept full: %d of %d samples non-empty' % (waiting, len(seen_queue)))
        check(walks == 0, '%s walks of every connection for a queue that turned over at every look' % walks)
        return '%d connections served, the queue non-empty in %d of %d samples; %d looks at the listening ' \
               'table, %d walks' % (served, waiting, len(seen_queue), lists, walks)
    finally:
        stop.set()
        p.cleanup()


# ---------------------------------------------------------------- main

def build():
    PROGS.update(harness.build_programs('progs'))
    os.makedirs(BUILD, exist_ok=True)
    src = os.path.join(HERE, 'progs', 'many_sites.c')
    PROGS['many_sites'] = harness.build_prog(src, os.path.join(BUILD, 'many_sites'),
                                             harness.CFLAGS['progs'] + ['-fno-ipa-icf'])


def main():
    global VERBOSE
    args = harness.suite_arguments(__doc__)
    VERBOSE = args.v
    selected = TESTS.select(args.k)
    missing = harness.missing_library()
    if missing:
        return harness.fail_all(selected, 'library %s not found (run make)' % missing)
    if shutil.which('ss') is None:
        return harness.fail_all(selected, 'ss (iproute2) is not installed', 'SKIP')
    try:
        build()
    except TestFailure as ex:
        return harness.fail_all(selected, 'build: %s' % ex)
    return MetricsRunner(verbose=VERBOSE).run(selected)


class MetricsRunner(harness.Runner):
    """A test passes only if no program (nor its watcher, which writes to the same stderr) had a
    sanitizer report."""

    def after_pass(self, name):
        for prog, text in STDERRS:
            hit = next((m for m in SANITIZER_MARKS if m in text), None)
            if hit:
                raise TestFailure('%s under the library: %s' % (prog, text[text.index(hit):][:600]))

    def cleanup(self, name, ok):
        del STDERRS[:]


if __name__ == '__main__':
    sys.exit(main())
