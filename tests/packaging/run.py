#!/usr/bin/env python3
"""Packaging: the man pages, `make install`, and the Debian package (`make deb`) installed here.

    python3 tests/packaging/run.py [-k SUBSTRING] [-v]

- The man pages (man/*, built by `make man`) pass `mandoc -T lint` and `man --warnings`, and
  closewait(1) describes every variable of src/options/options.def under ENVIRONMENT and every
  option of the wrapper; closewait-report(1) every option of `closewait-report --help`.
- `make install DESTDIR=... PREFIX=/usr/local` lays the files out where the wrapper, the report
  tool and man(1) look for them.
- `make deb` builds closewait_VERSION_ARCH.deb (VERSION: src/watcher/internal.h) without writing
  to the checkout, and lintian finds nothing to say; `make install PREFIX=/usr` installs the same
  files as the package.
- As root: the package is installed with apt-get, the demo server (demo/leaky_server.c) runs
  through /usr/bin/closewait and its leaks are reported with file:line (and are in CLOSE_WAIT for
  the kernel, ss), closewait-report names them, `man -w` finds the pages; then the package is
  purged and nothing it installed is left.  The package is removed whatever happens (a run
  killed midway is cleaned up by the next one), and packages apt-get added for it are purged.

A test that cannot run here (not root, no dpkg-buildpackage, no mandoc, the package already
installed by someone else) says SKIP and why.  Output: one line per test, then
'N passed, N failed, N skipped'.  Exit status 1 if any test failed.
"""
import errno
import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402  (tests/harness: what every suite shares)

ROOT = harness.ROOT
Skip = harness.TestSkip
Fail = harness.TestFailure
check = harness.check
TESTS = harness.Registry(strip_prefix=False)
test = TESTS.test

PACKAGE = 'closewait'
MAN_PAGES = ('closewait.1', 'closewait-report.1', 'closewait.7')
# A run killed midway leaves this behind with the package installed: the next run purges it.
MARKER = '/var/tmp/closewait-packaging-test.installed'
# Held while a run installs, uses and purges the package (two runs at once would purge each
# other's): an abstract unix socket name, which leaves no file and dies with its process.
LOCK = '\0closewait-packaging-test'
LOCK_WAIT = 120
# What the package holds that `make install` does not: Debian's own files about the package.
DEBIAN_ONLY = {
    '/usr/share/doc/closewait/copyright',
    '/usr/share/doc/closewait/changelog.gz',
    '/usr/share/lintian/overrides/closewait',
    '/usr/share/python3/runtime.d/closewait.rtupdate',
}
DEB = {}            # 'path': the .deb that deb_build made, for the tests after it
VERBOSE = False
WORK = None


def log(msg):
    if VERBOSE:
        print('    ' + msg, flush=True)


def run(argv, timeout=120, env=None, cwd=ROOT, check_rc=True, what=None):
    """Runs argv (stdout and stderr together as text); a non-zero exit fails the test."""
    r = subprocess.run(argv, cwd=cwd, env=harness.clean_env() if env is None else env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    out = r.stdout.decode('utf-8', 'replace')
    if check_rc and r.returncode != 0:
        raise Fail('%s: exit status %d: %s' % (what or ' '.join(argv), r.returncode, tail(out)))
    return r.returncode, out


def tail(text, lines=8):
    return ' | '.join(l for l in text.strip().splitlines()[-lines:])


def version():
    with open(os.path.join(ROOT, 'src', 'watcher', 'internal.h')) as f:
        m = re.search(r'^#define CLOSEWAIT_VERSION "([^"]+)"', f.read(), re.M)
    if not m:
        raise Fail('no CLOSEWAIT_VERSION in src/watcher/internal.h')
    return m.group(1)


def need(*tools):
    for t in tools:
        if shutil.which(t) is None:
            raise Skip('%s is not installed' % t)


def need_root():
    if os.geteuid() != 0:
        raise Skip('not root: installing a package needs root')


def multiarch():
    _, out = run(['dpkg-architecture', '-qDEB_HOST_MULTIARCH'])
    return out.strip()


# ---------------------------------------------------------------- man pages

def built_pages():
    run(['make', '-s', 'man'], what='make man')
    pages = {p: os.path.join(ROOT, 'build', 'man', p) for p in MAN_PAGES}
    for p, path in pages.items():
        check(os.path.isfile(path), 'make man did not make build/man/%s' % p)
    return pages


def rendered(path):
    """The page as text (mandoc, overstriking removed)."""
    _, out = run(['mandoc', '-T', 'ascii', '-O', 'width=200', path])
    return re.sub(r'.\x08', '', out)


def section(text, name):
    """The lines of one top-level section of a rendered page."""
    m = re.search(r'^%s\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)' % re.escape(name), text, re.M | re.S)
    if not m:
        raise Fail('no %s section' % name)
    return m.group(1)


def options_def_variables():
    with open(os.path.join(ROOT, 'src', 'options', 'options.def')) as f:
        found = re.findall(r'^CW_[A-Z]+\(\s*(CLOSEWAIT_[A-Z0-9_]+)', f.read(), re.M)
    check(len(found) >= 10, 'only %d variables read from options.def: %s' % (len(found), found))
    return found


def tagged_items(sec):
    """The words that start a tagged item (an indented line of its own) of a section."""
    return {m.group(1) for m in re.finditer(r'^ {5}(\S+)', sec, re.M)}


# Messages of mandoc's style level that depend on this machine, not on the page: the pages it
# refers to (closewait(7) itself) may not be installed, and there is no mandoc.db.
MACHINE_DEPENDENT = re.compile(r'referenced manual not found|mandoc\.db')


@test
def man_pages_lint_clean():
    need('mandoc', 'man')
    pages = built_pages()
    v = version()
    problems = []
    for p, path in pages.items():
        r = subprocess.run(['mandoc', '-T', 'lint', '-W', 'style', path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        msgs = [l for l in r.stdout.decode('utf-8', 'replace').splitlines()
                if l.strip() and not MACHINE_DEPENDENT.search(l)]
        problems += msgs
        # groff through man-db, as lintian runs it
        env = dict(harness.clean_env(), LC_ALL='C.UTF-8', MANROFFSEQ='', MANWIDTH='80')
        r = subprocess.run(['man', '--warnings', '-E', 'UTF-8', '-l', '-Tutf8', '-Z', path], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        problems += ['%s: man --warnings: %s' % (p, l)
                     for l in r.stderr.decode('utf-8', 'replace').splitlines() if l.strip()]
        with open(path) as f:
            text = f.read()
        if '.Os closewait %s\n' % v not in text:
            problems.append('%s: no ".Os closewait %s" (the version of src/watcher/internal.h)' % (p, v))
    check(not problems, '; '.join(problems[:10]))
    return '%d pages' % len(pages)


@test
def man_pages_describe_every_option():
    need('mandoc')
    pages = built_pages()
    page1 = rendered(pages['closewait.1'])
    env_items = tagged_items(section(page1, 'ENVIRONMENT'))
    variables = options_def_variables()
    missing = [v for v in variables if v not in env_items]
    check(not missing, 'closewait(1) ENVIRONMENT lacks %s (src/options/options.def has them)'
          % ', '.join(missing))
    check('CLOSEWAIT_NOT_AN_OPTION' not in env_items, 'the ENVIRONMENT parse finds anything')
    # the wrapper's options, from its own usage text
    with open(os.path.join(ROOT, 'tools', 'closewait')) as f:
        usage = f.read().split("<<'USAGE'", 1)[1].split('\nUSAGE', 1)[0]
    wrapper_opts = set(re.findall(r'(?<![\w-])(--?[a-z][a-z-]*)', usage))
    opts_text = section(page1, 'OPTIONS')
    missing = sorted(o for o in wrapper_opts if not re.search(r'(?<![\w-])%s(?![\w-])' % re.escape(o), opts_text))
    check(not missing, 'closewait(1) OPTIONS lacks %s (tools/closewait --help has them)' % ', '.join(missing))
    # closewait-report's options, from its --help
    _, helptext = run([sys.executable, os.path.join(ROOT, 'tools', 'closewait-report'), '--help'])
    report_opts = set(re.findall(r'(?<![\w-])(--[a-z][a-z-]*)', helptext))
    report_text = section(rendered(pages['closewait-report.1']), 'OPTIONS')
    missing = sorted(o for o in report_opts if not re.search(r'(?<![\w-])%s(?![\w-])' % re.escape(o), report_text))
    check(not missing, 'closewait-report(1) OPTIONS lacks %s (closewait-report --help has them)'
          % ', '.join(missing))
    return '%d variables, %d wrapper options, %d report options' % (
        len(variables), len(wrapper_opts), len(report_opts))


# ---------------------------------------------------------------- make install

def installed_files(top):
    out = set()
    for d, _, files in os.walk(top):
        for f in files:
            out.add('/' + os.path.relpath(os.path.join(d, f), top))
    return out


@test
def make_install_local_layout():
    need('man')
    dest = tempfile.mkdtemp(prefix='install-', dir=WORK)
    run(['make', '-s', 'install', 'DESTDIR=' + dest, 'PREFIX=/usr/local'], timeout=300,
        what='make install PREFIX=/usr/local')
    files = installed_files(dest)
    want = {'/usr/local/lib/libclosewait.so', '/usr/local/bin/closewait',
            '/usr/local/bin/closewait-report', '/usr/local/include/closewait.h',
            '/usr/local/lib/closewait/closewait_report/cli.py',
            '/usr/local/share/man/man1/closewait.1', '/usr/local/share/man/man1/closewait-report.1',
            '/usr/local/share/man/man7/closewait.7', '/usr/local/share/doc/closewait/README.md',
            '/usr/local/share/doc/closewait/CONTRACT.md', '/usr/local/share/doc/closewait/report.md'}
    check(want <= files, 'make install did not install %s' % sorted(want - files))
    stray = sorted(f for f in files if not f.startswith('/usr/local/'))
    check(not stray, 'make install PREFIX=/usr/local wrote outside it: %s' % stray)
    with open(dest + '/usr/local/bin/closewait') as f:
        check('\nCLOSEWAIT_DEFAULT_LIB=/usr/local/lib/libclosewait.so\n' in f.read(),
              'the installed wrapper does not preload /usr/local/lib/libclosewait.so')
    # man finds the pages where make install put them, and /usr/local/share/man is on man's path
    mandir = dest + '/usr/local/share/man'
    for sec, name in (('1', 'closewait'), ('1', 'closewait-report'), ('7', 'closewait')):
        _, out = run(['man', '-M', mandir, '-w', sec, name])
        check(out.strip() == '%s/man%s/%s.%s' % (mandir, sec, name, sec), 'man -w %s %s: %r' % (sec, name, out))
    _, path = run(['manpath', '-q'])
    check('/usr/local/share/man' in path.strip().split(':'),
          "/usr/local/share/man is not on man's path here (%s): man closewait would not find "
          'the pages of make install' % path.strip())
    # the copied tree runs from where it is: the wrapper preloads its own library (its default
    # path does not exist under DESTDIR, so it takes ../lib beside itself), never the package's
    _, out = run([dest + '/usr/local/bin/closewait', '--', 'sh', '-c', 'echo "$LD_PRELOAD"'])
    check(out.strip() == dest + '/usr/local/lib/libclosewait.so',
          'the wrapper under DESTDIR preloads %r' % out.strip())
    _, out = run([dest + '/usr/local/bin/closewait-report', '--version'])
    check(out.startswith('closewait-report '), 'closewait-report --version: %r' % out)
    return '%d files' % len(files)


# ---------------------------------------------------------------- the package

def git_status():
    """`git status` of the checkout, or None when it is not one."""
    if shutil.which('git') is None:
        return None
    r = subprocess.run(['git', '-C', ROOT, 'status', '--porcelain', '--ignored=no'],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    return r.stdout.decode('utf-8', 'replace') if r.returncode == 0 else None


def deb_files(deb):
    """The regular files (and symlinks) of a .deb, as absolute paths."""
    r = subprocess.run(['dpkg-deb', '-c', deb], stdout=subprocess.PIPE, timeout=60, check=True)
    files = set()
    for line in r.stdout.decode('utf-8', 'replace').splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0][0] in '-l':
            files.add(parts[5].split(' -> ')[0][1:])
    return files


def build_deb():
    """`make deb`, once per run: (the .deb, seconds it took, the checkout's status before and
    after).  A failed build fails every test that needs the package, with its reason."""
    if 'why' in DEB:
        raise Fail('no package: %s' % DEB['why'])
    if 'path' in DEB:
        return DEB['path'], DEB['took'], DEB['status']
    need('dpkg-buildpackage', 'dpkg-architecture', 'dpkg-deb')
    v = version()
    arch = run(['dpkg-architecture', '-qDEB_HOST_ARCH'])[1].strip()
    deb = os.path.join(ROOT, 'build', 'deb', 'closewait_%s_%s.deb' % (v, arch))
    before = git_status()
    if os.path.exists(deb):
        os.unlink(deb)
    t0 = time.monotonic()
    try:
        run(['make', '-s', 'deb'], timeout=600, what='make deb')
        check(os.path.isfile(deb), 'make deb made no %s' % deb)
    except Fail as ex:
        DEB['why'] = str(ex)
        raise
    DEB.update(path=deb, took=time.monotonic() - t0, status=(before, git_status()))
    return DEB['path'], DEB['took'], DEB['status']


def the_deb():
    return build_deb()[0]


@test
def deb_build():
    need('lintian')
    deb, took, (before, after) = build_deb()
    v = version()
    check(before == after, 'make deb changed the checkout: %r became %r' % (before, after))
    check(not os.path.exists(os.path.join(ROOT, 'build', 'deb', 'closewait-' + v)),
          'make deb left its copy of the tree behind')
    # the fields and the files
    fields = {}
    for k in ('Package', 'Version', 'Architecture', 'Depends'):
        fields[k] = run(['dpkg-deb', '-f', deb, k])[1].strip()
    check(fields['Version'] == v, 'Version %s, the source says %s' % (fields['Version'], v))
    deps = {d.strip().split()[0].split(':')[0] for d in fields['Depends'].split(',') if d.strip()}
    missing = {'libc6', 'libdw1', 'python3'} - deps
    check(not missing, 'Depends (%s) lacks %s' % (fields['Depends'], sorted(missing)))
    files = deb_files(deb)
    lib = '/usr/lib/%s/libclosewait.so' % multiarch()
    want = {lib, '/usr/bin/closewait', '/usr/bin/closewait-report', '/usr/include/closewait.h',
            '/usr/lib/closewait/closewait_report/cli.py', '/usr/share/man/man1/closewait.1.gz',
            '/usr/share/man/man1/closewait-report.1.gz', '/usr/share/man/man7/closewait.7.gz',
            '/usr/share/doc/closewait/README.md', '/usr/share/doc/closewait/CONTRACT.md',
            '/usr/share/doc/closewait/report.md', '/usr/share/doc/closewait/copyright'}
    check(want <= files, 'the package lacks %s' % sorted(want - files))
    x = tempfile.mkdtemp(prefix='deb-', dir=WORK)
    run(['dpkg-deb', '-x', deb, x])
    with open(x + '/usr/bin/closewait') as f:
        check('\nCLOSEWAIT_DEFAULT_LIB=%s\n' % lib in f.read(), 'the wrapper does not preload %s' % lib)
    with open(x + '/usr/bin/closewait-report') as f:
        first = f.readline().strip()
    check(first == '#!/usr/bin/python3', 'closewait-report starts %r, not #!/usr/bin/python3' % first)
    # lintian: not a tag, at any level (overrides carry their reasons in the package)
    changes = deb[:-len('.deb')] + '.changes'
    _, out = run(['lintian', '-I', '--pedantic', '--fail-on', 'none', deb] +
                 ([changes] if os.path.exists(changes) else []), timeout=300)
    tags = [l for l in out.splitlines() if re.match(r'^[EWIPX]: ', l)]
    check(not tags, 'lintian: %s' % '; '.join(tags[:10]))
    return '%s (%.0fs), lintian clean' % (os.path.relpath(deb, ROOT), took)


@test
def make_install_matches_package():
    deb = the_deb()
    dest = tempfile.mkdtemp(prefix='install-usr-', dir=WORK)
    run(['make', '-s', 'install', 'DESTDIR=' + dest, 'PREFIX=/usr'], timeout=300,
        what='make install PREFIX=/usr')
    ours = installed_files(dest)
    # dh_compress gzips the man pages; Debian's own files about the package are not make's
    theirs = {re.sub(r'(^/usr/share/man/.*)\.gz$', r'\1', f) for f in deb_files(deb)} - DEBIAN_ONLY
    check(ours == theirs, 'make install PREFIX=/usr and the package differ: only make install: %s; '
          'only the package: %s' % (sorted(ours - theirs), sorted(theirs - ours)))
    return '%d files' % len(ours)


def package_state():
    r = subprocess.run(['dpkg-query', '-W', '-f', '${db:Status-Status}', PACKAGE],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    return r.stdout.decode().strip() if r.returncode == 0 else 'not-installed'


def installed_packages():
    r = subprocess.run(['dpkg-query', '-W', '-f', '${binary:Package} ${db:Status-Status}\n'],
                       stdout=subprocess.PIPE, timeout=120, check=True)
    return {l.split()[0] for l in r.stdout.decode().splitlines() if l.endswith(' installed')}


def purge(why):
    """Removes the package and its configuration; True when it is gone."""
    log('purging %s (%s)' % (PACKAGE, why))
    subprocess.run(['dpkg', '--purge', PACKAGE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                   timeout=300, env=dict(harness.clean_env(), DEBIAN_FRONTEND='noninteractive'))
    gone = package_state() == 'not-installed'
    if gone and os.path.exists(MARKER):
        os.unlink(MARKER)
    return gone


def clean_up_killed_run():
    """A run killed while the package was installed left MARKER (with its pid): remove what it
    installed, unless that run is still going."""
    if os.geteuid() != 0 or not os.path.exists(MARKER):
        return
    try:
        with open(MARKER) as f:
            pid = int(f.readline())
        os.kill(pid, 0)
        return                          # a run of this suite is still going: its package
    except (OSError, ValueError):
        pass
    if package_state() != 'not-installed':
        purge('left by a run that was killed')
    elif os.path.exists(MARKER):
        os.unlink(MARKER)


def dpkg_excludes(paths):
    """The paths that dpkg is configured to leave out (path-exclude in /etc/dpkg/dpkg.cfg.d/,
    as minimal container images have), with path-include taken into account."""
    rules = []
    d = '/etc/dpkg/dpkg.cfg.d'
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        try:
            with open(os.path.join(d, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] in ('path-exclude', 'path-include'):
                        rules.append((parts[0] == 'path-exclude', parts[1].lstrip('=')))
        except OSError:
            continue
    out = set()
    for p in paths:
        excluded = False
        for exclude, glob in rules:
            if fnmatch.fnmatchcase(p, glob):
                excluded = exclude
        if excluded:
            out.add(p)
    return out


def accept_line(source):
    """The line of the accept() call in demo/leaky_server.c."""
    with open(source) as f:
        for i, line in enumerate(f, 1):
            if 'accept(lfd' in line:
                return i
    raise Fail('no accept(lfd in %s' % source)


def run_demo_through(wrapper, work):
    """demo/leaky_server under `wrapper` with JSON to a log; 3 clients talk and hang up.
    Returns (events, the library files in the server's maps, CLOSE_WAIT lines of ss)."""
    source = os.path.join(ROOT, 'demo', 'leaky_server.c')
    server = os.path.join(work, 'leaky_server')
    r = harness.compile_c(source, server, flags=['-O1', '-g'])
    check(r.returncode == 0, 'cc leaky_server.c: %s' % tail(r.stdout.decode('utf-8', 'replace')))
    port_file = os.path.join(work, 'port')
    log_file = os.path.join(work, 'cw.jsonl')
    p = subprocess.Popen([wrapper, '-j', '-g', '1000', '-o', log_file, '--', server, port_file, '3'],
                         env=harness.clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = harness.poll_until(lambda: open(port_file).read().strip() if os.path.exists(port_file) else '', 10)
        check(port.isdigit(), 'the server wrote no port (%s)' % p.poll())
        port = int(port)
        with open('/proc/%d/maps' % p.pid) as f:
            maps = {l.split()[-1] for l in f if 'libclosewait' in l}
        for i in range(3):
            c = socket.create_connection((harness.HOST, port), timeout=5)
            c.sendall(b'hello %d\n' % i)
            check(c.recv(100).startswith(b'hello'), 'no echo')
            c.close()
        held = harness.poll_until(lambda: [h for h in [harness.ss_close_wait(port)] if len(h) >= 3], 5)
        held = held[0] if held else harness.ss_close_wait(port)
        out = p.communicate(timeout=30)[0].decode('utf-8', 'replace')
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check(p.returncode == 0, 'the server under %s: exit status %s: %s' % (wrapper, p.returncode, tail(out)))
    return harness.read_events(log_file), maps, held or [], log_file


def locked(fn):
    """Runs fn holding LOCK; SKIP when another run holds it for LOCK_WAIT seconds."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                lock.bind(LOCK)
                break
            except OSError as ex:
                if ex.errno != errno.EADDRINUSE:
                    raise
                if time.monotonic() > deadline:
                    raise Skip('another run of this suite has been using the package for %d s' % LOCK_WAIT)
                time.sleep(0.5)
        clean_up_killed_run()
        return fn()
    finally:
        lock.close()


@test
def deb_installed_demo_and_purge():
    need_root()
    need('apt-get', 'dpkg', 'man', 'ss', os.environ.get('CC') or 'cc')
    deb = the_deb()
    return locked(lambda: installed_demo_and_purge(deb))


def installed_demo_and_purge(deb):
    state = package_state()
    if state != 'not-installed':
        raise Skip('%s is already on this machine (%s): the test would replace it' % (PACKAGE, state))
    lib = '/usr/lib/%s/libclosewait.so' % multiarch()
    listed = sorted(deb_files(deb))
    excluded = dpkg_excludes(listed)
    if excluded:
        raise Skip('dpkg is configured to leave out %s (path-exclude in /etc/dpkg/dpkg.cfg.d): '
                   'the package cannot be checked as installed here' % sorted(excluded)[:3])
    dirs_before = {d for f in listed for d in parents(os.path.dirname(f)) if os.path.isdir(d)}
    packages_before = installed_packages()
    work = tempfile.mkdtemp(prefix='installed-', dir=WORK)
    notes = []
    try:
        with open(MARKER, 'w') as f:
            f.write('%d\n%s\n' % (os.getpid(), deb))
        env = dict(harness.clean_env(), DEBIAN_FRONTEND='noninteractive')
        run(['apt-get', 'install', '-y', '-q', '--no-install-recommends', '-o', 'DPkg::Lock::Timeout=120',
             deb], timeout=600, env=env, what='apt-get install ' + os.path.basename(deb))
        check(package_state() == 'installed', 'after apt-get install, %s is %s' % (PACKAGE, package_state()))
        missing = [f for f in listed if not os.path.lexists(f)]
        check(not missing, 'installed, yet missing: %s' % missing)

        # the demo through the installed wrapper: the installed library, the kernel's view, file:line
        evs, maps, held, log_file = run_demo_through('/usr/bin/closewait', work)
        check(maps == {lib}, 'the server mapped %s, not the installed %s' % (sorted(maps), lib))
        check(len(held) >= 3, 'ss shows %d sockets in CLOSE-WAIT on the port, 3 expected' % len(held))
        starts = harness.of_kind(evs, 'start')
        check(starts and starts[0].get('version') == version(),
              'the installed library says version %r, the package is %s' % (
                  starts[0].get('version') if starts else None, version()))
        leaks = harness.leaks(evs, 'eof_not_closed')
        check(len(leaks) == 3, '%d eof_not_closed leaks reported, 3 expected: %s' % (
            len(leaks), [e.get('event') for e in evs]))
        line = accept_line(os.path.join(ROOT, 'demo', 'leaky_server.c'))
        for e in leaks:
            sites = ['%s:%s' % (os.path.basename(fr.get('file') or ''), fr.get('line')) for fr in e.get('open_stack') or []]
            check('leaky_server.c:%d' % line in sites,
                  'a leak\'s open stack does not name leaky_server.c:%d (the accept): %s' % (line, sites[:4]))
        notes.append('3 leaks at leaky_server.c:%d' % line)

        # closewait-report from /usr/bin, its package from /usr/lib/closewait
        _, out = run(['/usr/bin/closewait-report', '--format', 'text', log_file])
        check('leaky_server.c:%d' % line in out and 'SUMMARY: closewait: 3 leaked socket(s)' in out,
              'closewait-report: %s' % tail(out, 4))

        # LD_PRELOAD by name alone finds the library in the multiarch directory
        _, out = run(['sh', '-c', 'grep -c libclosewait /proc/$$/maps'],
                     env=dict(harness.clean_env(), LD_PRELOAD='libclosewait.so'), check_rc=False)
        check(out.strip().splitlines()[-1:] != ['0'] and 'cannot be preloaded' not in out,
              'LD_PRELOAD=libclosewait.so: %s' % tail(out))

        # man finds the pages (with -a: a make install in /usr/local may come first) and shows them
        for sec, name in (('1', 'closewait'), ('1', 'closewait-report'), ('7', 'closewait')):
            _, out = run(['man', '-a', '-w', sec, name])
            want = '/usr/share/man/man%s/%s.%s.gz' % (sec, name, sec)
            check(want in out.split(), 'man -w %s %s: %r, not %s' % (sec, name, out.strip(), want))
        _, out = run(['man', '-M', '/usr/share/man', '-P', 'cat', 'closewait'],
                     env=dict(harness.clean_env(), MANWIDTH='100'))
        check('CLOSEWAIT_GRACE_MS' in out, 'man closewait shows no CLOSEWAIT_GRACE_MS: %s' % tail(out, 3))
        _, out = run(['man', '-w', 'closewait'])
        notes.append('man -w closewait: %s' % out.strip())

        # purge: every file gone, and the directories it made
        check(purge('the test is over'), 'dpkg --purge %s left it %s' % (PACKAGE, package_state()))
        left = [f for f in listed if os.path.lexists(f)]
        check(not left, 'after dpkg --purge these remain: %s' % left)
        made = {d for f in listed for d in parents(os.path.dirname(f))} - dirs_before
        left = sorted(d for d in made if os.path.lexists(d))
        check(not left, 'after dpkg --purge these directories remain: %s' % left)
    finally:
        if package_state() != 'not-installed':
            purge('cleaning up after a failure')
        added = sorted(installed_packages() - packages_before)
        if added:
            log('purging what apt-get added: %s' % added)
            subprocess.run(['apt-get', 'purge', '-y', '-q', '-o', 'DPkg::Lock::Timeout=120'] + added,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
                           env=dict(harness.clean_env(), DEBIAN_FRONTEND='noninteractive'))
    return '; '.join(notes)


def parents(d):
    """d and the directories above it, up to /usr."""
    out = []
    while d not in ('/', '') and d.startswith('/usr'):
        out.append(d)
        d = os.path.dirname(d)
    return out


def main():
    global VERBOSE, WORK
    args = harness.suite_arguments(__doc__, 'say what is done, show tracebacks')
    VERBOSE = args.v

    # SIGTERM and SIGHUP unwind like ^C, so that the package is purged by the finally blocks
    def on_term(sig, frame):
        raise KeyboardInterrupt('signal %d' % sig)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    clean_up_killed_run()
    WORK = tempfile.mkdtemp(prefix='cw-packaging-')
    runner = harness.Runner(verbose=args.v, clock=time.monotonic)
    try:
        return runner.run(TESTS.select(args.k))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
