#!/usr/bin/env python3
"""make test: every suite, then the core suites again under AddressSanitizer+UBSan and
ThreadSanitizer builds of the library.  One line per suite, then the closing line
'N passed, N failed, N skipped'.  Exit status 1 if anything failed.

    python3 tests/run-all.py [--quick]     (--quick: no sanitizer runs)
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (tests/harness: what every suite shares)

ROOT = harness.ROOT
CLOSING = re.compile(r'^(?:\w+:\s*)?(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$')


def runtime(name):
    out = subprocess.run(['gcc', '-print-file-name=' + name], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def run_suite(label, argv, env_extra=None, timeout=900):
    env = dict(os.environ)
    env.update(env_extra or {})
    t0 = time.time()
    sys.stdout.write('=== %s: %s\n' % (label, ' '.join(argv)))
    sys.stdout.flush()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        out = p.stdout.decode('utf-8', 'replace')
        rc = p.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b'').decode('utf-8', 'replace') + '\n(timed out after %ds)\n' % timeout
        rc = -1
    counts = None
    for line in out.splitlines():
        sys.stdout.write('    ' + line + '\n')
        m = CLOSING.match(line.strip())
        if m:
            counts = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if counts is None:
        counts = (0, 1, 0)
        sys.stdout.write('    (no closing line: counted as one failure, exit status %d)\n' % rc)
    elif rc != 0 and counts[1] == 0:
        counts = (counts[0], 1, counts[2])
        sys.stdout.write('    (exit status %d with no failure counted: counted as one failure)\n' % rc)
    sys.stdout.write('--- %s: %d passed, %d failed, %d skipped (%.0fs)\n' % ((label,) + counts + (time.time() - t0,)))
    sys.stdout.flush()
    return counts


def main():
    quick = '--quick' in sys.argv[1:]
    py = sys.executable or 'python3'
    suites = [
        ('core', [py, 'tests/run.py']),
        ('deployments', [py, 'tests/deploy/run.py']),
        ('backlog, children, scale', [py, 'tests/backlog_children_scale/run.py']),
        ('report tool', [py, 'tests/report/test_report.py']),
        ('metrics', [py, 'tests/metrics/run.py']),
        ('owners and event loops', [py, 'tests/owner/run.py']),
        ('symbols and summaries', [py, 'tests/symbols/run.py']),
        ('real and hostile programs', [py, 'tests/real/run.py']),
        ('packaging', [py, 'tests/packaging/run.py']),
        ('language stacks (Python, Node.js, Java)', [py, 'tests/langs/run.py']),
        ('eBPF front-end', [py, 'tests/ebpf/run.py']),
        ('fuzzing (bounded)', ['sh', 'fuzz/run.sh']),
    ]
    totals = [0, 0, 0]
    for label, argv in suites:
        if not os.path.exists(os.path.join(ROOT, argv[-1])):
            continue
        for i, v in enumerate(run_suite(label, argv)):
            totals[i] += v
    if not quick:
        asan, tsan = runtime('libasan.so'), runtime('libtsan.so')
        sanitized = [
            ('core under ASan+UBSan', 'asan', asan,
             {'ASAN_OPTIONS': 'detect_leaks=0:abort_on_error=0:halt_on_error=1',
              'UBSAN_OPTIONS': 'halt_on_error=1:print_stacktrace=1'}),
            ('core under TSan', 'tsan', tsan,
             {'TSAN_OPTIONS': 'halt_on_error=1:report_signal_unsafe=0:suppressions=%s'
                              % os.path.join(ROOT, 'tests', 'tsan.supp')}),
        ]
        for label, target, rt, env in sanitized:
            if rt is None:
                sys.stdout.write('=== %s: SKIP (no %s runtime)\n' % (label, target))
                totals[2] += 1
                continue
            b = subprocess.run(['make', '-s', target], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
            if b.returncode != 0:
                sys.stdout.write(b.stdout.decode('utf-8', 'replace'))
                sys.stdout.write('--- %s: build failed\n' % label)
                totals[1] += 1
                continue
            env = dict(env)
            env['CLOSEWAIT_LIB'] = '%s:%s' % (rt, os.path.join(ROOT, 'build', target, 'libclosewait.so'))
            env['CLOSEWAIT_PRELOAD_EXTRA'] = rt
            for i, v in enumerate(run_suite(label, [py, 'tests/run.py'], env)):
                totals[i] += v
    print(harness.closing_line(*totals))
    return 1 if totals[1] else 0


if __name__ == '__main__':
    sys.exit(main())
