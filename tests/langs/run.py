#!/usr/bin/env python3
"""The program's own stack in its own language: Python, Node.js and Java programs under the
library, each leak report naming the program's file, function and line (checked against the
`closewait-test:` marks in tests/langs/progs), clean programs staying clean; the kernel's view
(ss) is the ground truth for what is held.

    python3 tests/langs/run.py [-k SUBSTR] [--list]

Environment: CLOSEWAIT_LIB, CLOSEWAIT_PRELOAD_EXTRA (see tests/harness).  A runtime that is not
installed makes its tests SKIP, saying so.
"""
import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import harness  # noqa: E402

ROOT = harness.ROOT
PROGS = os.path.join(HERE, 'progs')
LANGS = os.path.join(ROOT, 'tools', 'langs')
WRAPPER = os.path.join(ROOT, 'tools', 'closewait')
GRACE_MS = 400
check = harness.check
Skip = harness.TestSkip
registry = harness.Registry()
test = registry.test

_started = []
_tmp = tempfile.mkdtemp(prefix='cw-langs-')


def mark_line(prog, mark):
    """The line of `prog` carrying the comment mark `closewait-test: MARK`."""
    with open(os.path.join(PROGS, prog)) as f:
        for n, line in enumerate(f, 1):
            if 'closewait-test: ' + mark in line:
                return n
    raise harness.TestFailure('no mark %r in %s' % (mark, prog))


def lang_env(log, extra=None):
    """A program under the library with the language shims set as the wrapper sets them."""
    env = harness.lib_env(log, harness.preload_value(), fmt='json', grace_ms=GRACE_MS)
    env['PYTHONPATH'] = os.path.join(LANGS, 'python')
    env['NODE_OPTIONS'] = '--require "%s"' % os.path.join(LANGS, 'node', 'closewait.js')
    return harness.overridden(env, extra)


def start(cmd, env, cwd=PROGS):
    """Starts a program that prints its port first; returns (process, port)."""
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    _started.append(p)
    line = [None]

    def first():
        line[0] = p.stdout.readline()
    t = threading.Thread(target=first, daemon=True)
    t.start()
    t.join(30)
    text = (line[0] or b'').decode().strip()
    if not text.isdigit():
        err = stop(p)
        raise harness.TestFailure('%s printed no port (%r); stderr: %s' % (cmd[-1], text, err[-800:]))
    return p, int(text)


def stop(p):
    """Stops a program; returns its stderr."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        _, err = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        err = b''
    return (err or b'').decode('utf-8', 'replace')


def talk_and_close(port, n=1, payload=b'hello\n'):
    """n connections that send a line and close (the peer's FIN the program must act on)."""
    for _ in range(n):
        with socket.create_connection((harness.HOST, port), timeout=5) as c:
            c.sendall(payload)


def wait_leaks(log, n, timeout=20):
    got = harness.poll_until(lambda: len(harness.leaks(harness.read_events(log))) >= n, timeout, interval=0.1)
    evs = harness.leaks(harness.read_events(log))
    check(got, 'expected %d leak event(s) within %ds, got %d' % (n, timeout, len(evs)))
    return evs


def held_in_close_wait(port, pid):
    """ss: CLOSE-WAIT sockets on local port `port` held by `pid`."""
    return [s for s in harness.close_wait_sockets() if s['local'].endswith(':%d' % port) and pid in s['pids']]


def frame_is(f, file_base, function, line):
    return (f is not None and os.path.basename(f.get('file', '')) == file_base and
            f.get('function') == function and f.get('line') == line and f.get('program') is True)


def describe(f):
    return '%s:%s in %s' % (f.get('file'), f.get('line'), f.get('function')) if f else 'none'


def need(cmd):
    if shutil.which(cmd) is None:
        raise Skip('%s is not installed (tests/real/install-deps.sh installs it)' % cmd)


# ---------------------------------------------------------------- Python

DEBIAN_PY = '/usr/bin/python3'


@test
def test_python_makefile_server():
    """The handler's EOF and the accept, in server.py, for a socket ss shows in CLOSE-WAIT."""
    return makefile_server(sys.executable)


@test
def test_debian_python_makefile_server():
    """The same with Debian's own python3 (its sitecustomize chained after ours)."""
    if not os.path.exists(DEBIAN_PY):
        raise Skip('no %s' % DEBIAN_PY)
    if os.path.realpath(DEBIAN_PY) == os.path.realpath(sys.executable):
        raise Skip('%s is the interpreter of the test above' % DEBIAN_PY)
    return makefile_server(DEBIAN_PY)


def makefile_server(python):
    log = os.path.join(_tmp, 'py-server-%d.json' % len(_started))
    p, port = start([python, 'server.py'], lang_env(log))
    try:
        talk_and_close(port)
        evs = wait_leaks(log, 1)
        check(len(held_in_close_wait(port, p.pid)) == 1, 'ss: no CLOSE-WAIT socket held by the server')
        e = evs[0]
        check(e.get('lang', '').startswith('python 3.'), 'lang: %r' % e.get('lang'))
        check(frame_is(e.get('lang_open_at'), 'server.py', 'serve', mark_line('server.py', 'accept')),
              'open at %s' % describe(e.get('lang_open_at')))
        check(frame_is(e.get('lang_eof_at'), 'server.py', 'handle', mark_line('server.py', 'eof')),
              'EOF at %s' % describe(e.get('lang_eof_at')))
        check(e.get('open_stack'), 'the native frames are kept')
        fns = [f['function'] for f in e['lang_open_stack']]
        check(fns[0] == 'socket.accept' and e['lang_open_stack'][0]['program'] is False,
              'the standard library frame is kept, marked: %s' % fns)
        return '%s: open at server.py:%d in serve, EOF at server.py:%d in handle' % (
            e['lang'], e['lang_open_at']['line'], e['lang_eof_at']['line'])
    finally:
        err = stop(p)
        check('closewait' not in err, 'program stderr: %s' % err[-500:])


@test
def test_python_asyncio_streams_server():
    """asyncio accepts and reads in its event loop: the report names the handler given to
    start_server(), at its def line, first."""
    log = os.path.join(_tmp, 'py-asyncio.json')
    p, port = start([sys.executable, 'asyncio_server.py'], lang_env(log))
    try:
        talk_and_close(port)
        e = wait_leaks(log, 1)[0]
        check(len(held_in_close_wait(port, p.pid)) == 1, 'ss: no CLOSE-WAIT socket held by the server')
        line = mark_line('asyncio_server.py', 'handler')
        for key in ('lang_open_at', 'lang_eof_at'):
            check(frame_is(e.get(key), 'asyncio_server.py', 'handle', line), '%s %s' % (key, describe(e.get(key))))
        files = [os.path.basename(f['file']) for f in e['lang_open_stack']]
        check('selector_events.py' in files, 'the event loop frames kept: %s' % files)
        return 'open and EOF at asyncio_server.py:%d in handle' % line
    finally:
        stop(p)


@test
def test_python_socketserver_server():
    """socketserver accepts in serve_forever(): the report names the RequestHandlerClass's
    handle() first, at its def line, and the readline() that returned the EOF in it; the
    handler's threads are blocked after EOF, so socketserver never closes the connections."""
    log = os.path.join(_tmp, 'py-socketserver.json')
    p, port = start([sys.executable, 'socketserver_server.py'], lang_env(log))
    try:
        talk_and_close(port, 2)
        evs = wait_leaks(log, 2)
        check(len(held_in_close_wait(port, p.pid)) == 2, 'ss: not 2 CLOSE-WAIT sockets held by the server')
        name = 'LineHandler.handle' if sys.version_info >= (3, 11) else 'handle'  # co_qualname from 3.11
        opened, eof = mark_line('socketserver_server.py', 'handler'), mark_line('socketserver_server.py', 'eof')
        for e in evs:
            check(frame_is(e.get('lang_open_at'), 'socketserver_server.py', name, opened),
                  'open at %s' % describe(e.get('lang_open_at')))
            check(frame_is(e.get('lang_eof_at'), 'socketserver_server.py', name, eof),
                  'EOF at %s' % describe(e.get('lang_eof_at')))
            fns = [f['function'] for f in e['lang_open_stack']]
            check(fns[1].endswith('accept') and fns[2].endswith('get_request'),
                  'socketserver\'s accept frames kept after the handler: %s' % fns)
            check(e['lang_open_stack'][-1]['program'] is True, 'the serve_forever() caller kept: %s' % fns)
        check(len({e['stack_id'] for e in evs}) == 1, 'one open site for both')
        return '2 leaks, open at socketserver_server.py:%d in %s, EOF at line %d' % (opened, name, eof)
    finally:
        err = stop(p)
        check('closewait' not in err, 'program stderr: %s' % err[-500:])


class IdleClosingServer:
    """An HTTP/1.1 server (in this process, not under the library) that answers each request
    and closes a connection idle for 200 ms: what a keep-alive pool meets."""

    def __init__(self, headers=b''):
        self.headers = headers
        self.srv = socket.socket()
        self.srv.bind((harness.HOST, 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.conns = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        c.settimeout(0.2)
        buf = b''
        try:
            while True:
                try:
                    data = c.recv(4096)
                except socket.timeout:
                    break
                if not data:
                    break
                buf += data
                while b'\r\n\r\n' in buf:
                    _, buf = buf.split(b'\r\n\r\n', 1)
                    c.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n' + self.headers + b'\r\nok')
        finally:
            c.close()

    def close(self):
        self.srv.close()


@test
def test_python_http_client_pool():
    """http.client connections kept in a pool after the server closed them: each names fetch()."""
    log = os.path.join(_tmp, 'py-pool.json')
    server = IdleClosingServer()
    p = subprocess.Popen([sys.executable, 'pool_client.py', str(server.port)], env=lang_env(log), cwd=PROGS,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _started.append(p)
    try:
        evs = wait_leaks(log, 1)
        check(harness.poll_until(lambda: [s for s in harness.close_wait_sockets()
                                          if s['peer'].endswith(':%d' % server.port) and p.pid in s['pids']], 10),
              'ss: no CLOSE-WAIT connection held by the client')
        line = mark_line('pool_client.py', 'open')
        for e in evs:
            check(e.get('role') == 'client', 'role %r' % e.get('role'))
            check(frame_is(e.get('lang_open_at'), 'pool_client.py', 'fetch', line),
                  'open at %s' % describe(e.get('lang_open_at')))
            files = [os.path.basename(f['file']) for f in e['lang_open_stack']]
            check('client.py' in files and 'socket.py' in files, 'http.client and socket frames kept: %s' % files)
        return '%d leak(s), open at pool_client.py:%d in fetch' % (len(evs), line)
    finally:
        stop(p)
        server.close()


@test
def test_python_requests_session_streamed():
    """A requests.Session whose streamed responses are kept and never read or closed: urllib3
    cannot return their connections to its pool, each is held after the server closes it, and
    each report names fetch(), through requests' and urllib3's frames.  Run with Debian's
    python3, for which apt installs requests."""
    if not os.path.exists(DEBIAN_PY):
        raise Skip('no %s' % DEBIAN_PY)
    r = subprocess.run([DEBIAN_PY, '-c', 'import requests'], env=harness.clean_env(), capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise Skip('%s cannot import requests (apt-get install python3-requests): %s' % (
            DEBIAN_PY, (r.stderr.strip().splitlines() or ['?'])[-1]))
    log = os.path.join(_tmp, 'py-requests.json')
    server = IdleClosingServer()
    p = subprocess.Popen([DEBIAN_PY, 'requests_client.py', str(server.port)], env=lang_env(log), cwd=PROGS,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _started.append(p)
    try:
        evs = wait_leaks(log, 3)
        held = [s for s in harness.close_wait_sockets() if s['peer'].endswith(':%d' % server.port) and p.pid in s['pids']]
        check(len(held) == 3, 'ss: %d CLOSE-WAIT connections held by the client, not 3' % len(held))
        line = mark_line('requests_client.py', 'open')
        for e in evs:
            check(e.get('role') == 'client', 'role %r' % e.get('role'))
            check(frame_is(e.get('lang_open_at'), 'requests_client.py', 'fetch', line),
                  'open at %s' % describe(e.get('lang_open_at')))
            st = e['lang_open_stack']
            libs = {os.path.basename(f['file']) for f in st if not f['program']}
            check({'sessions.py', 'connectionpool.py', 'connection.py'} <= libs,
                  'requests and urllib3 frames: %s' % libs)
            check(st[0]['program'] is False and st[0]['function'] == 'create_connection',
                  'urllib3 makes the socket: %s' % describe(st[0]))
        return '3 leaks, open at requests_client.py:%d in fetch (%s)' % (line, evs[0]['lang'])
    finally:
        err = stop(p)
        server.close()
        check('closewait' not in err, 'program stderr: %s' % err[-500:])


def clean_server(argv, name):
    """A server of the language that closes what it is given: 5 connections, each closed by the
    client, are not held in CLOSE_WAIT (ss), nothing is reported, nothing is written on stderr."""
    log = os.path.join(_tmp, name + '.json')
    p, port = start(argv, lang_env(log))
    try:
        talk_and_close(port, 5)
        time.sleep(GRACE_MS * 3 / 1000.0)
        check(not held_in_close_wait(port, p.pid), 'ss: a CLOSE-WAIT socket held')
        check(not harness.leaks(harness.read_events(log)), 'a leak was reported')
    finally:
        err = stop(p)
    check(err == '', 'the program\'s stderr is not empty: %r' % err[-300:])
    return '5 connections, no report, nothing on stderr'


@test
def test_python_clean_server():
    return clean_server([sys.executable, 'clean_server.py'], 'py-clean')


@test
def test_python_through_the_wrapper_text():
    """tools/closewait sets PYTHONPATH and says so in one line; the text report's summary line
    names the handler."""
    if harness.preload_extra():
        raise Skip('the wrapper puts the library first in LD_PRELOAD, where a sanitizer runtime must be')
    log = os.path.join(_tmp, 'py-wrapper.txt')
    env = harness.clean_env()
    env['CLOSEWAIT_LIB'] = harness.library_file()
    p, port = start([WRAPPER, '-o', log, '-g', str(GRACE_MS), sys.executable, 'server.py'], env)
    try:
        talk_and_close(port)
        want = 'EOF read at server.py:%d in handle' % mark_line('server.py', 'eof')
        got = harness.poll_until(lambda: os.path.exists(log) and want in open(log).read(), 20, interval=0.1)
        text = open(log).read() if os.path.exists(log) else ''
        check(got, 'no %r in the text report:\n%s' % (want, text[:1500]))
        check('  in python 3.' in text and ' (library)' in text and '  native:' in text,
              'language frames, then native ones:\n%s' % text[:1500])
    finally:
        err = stop(p)
    lines = [l for l in err.splitlines() if l.startswith('closewait:')]
    check(len(lines) == 1 and 'PYTHONPATH' in lines[0] and '--no-lang-stacks' in lines[0],
          'the wrapper says what it set in one line: %r' % err)
    return want


@test
def test_sites_by_program_line():
    """Two accept sites of one script share the interpreter's native stack: the library and
    closewait-report keep them apart, each named by its line."""
    log = os.path.join(_tmp, 'py-two.json')
    p, port = start([sys.executable, 'two_sites.py'], lang_env(log))
    try:
        talk_and_close(port, 4)
        evs = wait_leaks(log, 4)
    finally:
        stop(p)
    ids = {e['lang_open_at']['line']: e['stack_id'] for e in evs}
    a, b = mark_line('two_sites.py', 'site-a'), mark_line('two_sites.py', 'site-b')
    check(set(ids) == {a, b} and ids[a] != ids[b], 'sites by line: %s' % ids)
    check(len({e['site'] for e in evs}) == 2, 'two open sites: %s' % [e['site'] for e in evs])
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'closewait-report'), '--format', 'json', log],
                       capture_output=True, text=True, timeout=60, env=harness.clean_env())
    import json
    findings = json.loads(r.stdout)['findings']
    tops = sorted(f['top_frame'] for f in findings)
    want = sorted(['accept_a (two_sites.py:%d)' % a, 'accept_b (two_sites.py:%d)' % b])
    check(tops == want, 'closewait-report top frames %s, want %s' % (tops, want))
    check(all(f['count_ever'] == 2 and f['lang_open_stack'] for f in findings), 'counts: %s' %
          [(f['top_frame'], f['count_ever']) for f in findings])
    return ', '.join(tops)


@test
def test_suppressions_match_language_frames():
    """`src:server.py` and `fun:serve` match the language stack, in the library and in
    closewait-report alike."""
    supp = os.path.join(_tmp, 'supp.txt')
    with open(supp, 'w') as f:
        f.write('# the handler of tests/langs/progs/server.py\nsrc:server.py\n')
    log = os.path.join(_tmp, 'py-supp.json')
    p, port = start([sys.executable, 'server.py'], lang_env(log, {'CLOSEWAIT_SUPPRESSIONS': supp}))
    try:
        talk_and_close(port)
        check(harness.poll_until(lambda: held_in_close_wait(port, p.pid), 10), 'ss: nothing held')
        time.sleep(GRACE_MS * 3 / 1000.0)
        check(not harness.leaks(harness.read_events(log)), 'a suppressed leak was reported')
    finally:
        stop(p)
    # The report tool, on a log with the leak (no suppression in the library this time).
    log2 = os.path.join(_tmp, 'py-supp2.json')
    p, port = start([sys.executable, 'server.py'], lang_env(log2))
    try:
        talk_and_close(port)
        wait_leaks(log2, 1)
    finally:
        stop(p)
    with open(supp, 'w') as f:
        f.write('fun:serve\n')
    import json
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'closewait-report'), '--format', 'json',
                        '--suppressions', supp, log2], capture_output=True, text=True, timeout=60,
                       env=harness.clean_env())
    rep = json.loads(r.stdout)
    check(rep['summary']['findings'] == 0 and rep['summary']['suppressed_findings'] == 1,
          'closewait-report: %s' % rep['summary'])
    return 'the library and closewait-report both leave it out'


@test
def test_untrusted_texts():
    """What a program hands closewait_note_stack() is read warily: refused when malformed,
    cleaned of control bytes, cut to size, frames that do not parse dropped."""
    log = os.path.join(_tmp, 'hostile.json')
    env = harness.lib_env(log, harness.preload_value(), fmt='json', grace_ms=GRACE_MS)
    p, port = start([sys.executable, 'hostile_texts.py'], env)
    try:
        c = socket.create_connection((harness.HOST, port), timeout=5)
        results = p.stdout.readline().decode().split()
        check(results == ['-1', '-1', '-1', '-1', '0'], 'closewait_note_stack results %s' % results)
        c.close()
        e = wait_leaks(log, 1)[0]
        check(e.get('lang') == 'py?thon? 3', 'lang %r' % e.get('lang'))
        st = e.get('lang_open_stack') or []
        check([f['line'] for f in st] == [12, 7, 3], 'frames kept: %s' % st)
        check(st[0]['function'] == 'good?name' and st[0]['file'] == '/x/?evil.py', 'cleaned: %s' % st[0])
        check(len(st[1]['function']) == 63 and len(st[1]['file']) == 255 and st[1]['file'].endswith('/d.py'),
              'cut: %d %d' % (len(st[1]['function']), len(st[1]['file'])))
        check(st[2]['function'] == '\ufffd\ufffd' and st[2]['program'] is True, 'not UTF-8: %r' % st[2])
        check(e.get('lang_open_at', {}).get('line') == 12, 'first program frame: %s' % e.get('lang_open_at'))
        return '4 refused, 3 of 7 frames kept, cleaned and cut'
    finally:
        stop(p)


# ---------------------------------------------------------------- Node.js

@test
def test_node_half_open_server():
    """A net server with allowHalfOpen that ignores 'end': its createServer() line and its
    'data' listener's line, in server.js."""
    need('node')
    log = os.path.join(_tmp, 'node-server.json')
    p, port = start(['node', 'server.js'], lang_env(log))
    try:
        for _ in range(2):
            c = socket.create_connection((harness.HOST, port), timeout=5)
            c.sendall(b'hello\n')
            c.shutdown(socket.SHUT_WR)
            _started.append(c)
        evs = wait_leaks(log, 2)
        check(len(held_in_close_wait(port, p.pid)) == 2, 'ss: not 2 CLOSE-WAIT sockets held by node')
        for e in evs:
            check(e.get('lang', '').startswith('node '), 'lang %r' % e.get('lang'))
            check(frame_is(e.get('lang_open_at'), 'server.js', 'Object.<anonymous>', mark_line('server.js', 'open')),
                  'open at %s' % describe(e.get('lang_open_at')))
            check(frame_is(e.get('lang_eof_at'), 'server.js', 'Server.<anonymous>', mark_line('server.js', 'eof')),
                  'EOF at %s' % describe(e.get('lang_eof_at')))
            check(e['lang_open_stack'][0]['file'].startswith('node:'), 'node\'s own frames kept')
        check(len({e['stack_id'] for e in evs}) == 1 and evs[1]['site'] == evs[0]['site'],
              'one open site for both')
        return '2 leaks, open at server.js:%d, EOF at server.js:%d' % (
            evs[0]['lang_open_at']['line'], evs[0]['lang_eof_at']['line'])
    finally:
        err = stop(p)
        check('closewait' not in err, 'program stderr: %s' % err[-500:])


@test
def test_node_net_client_pool():
    """Connections a Node program makes and keeps after the server's FIN: its connect() line
    and its 'data' listener's."""
    need('node')
    log = os.path.join(_tmp, 'node-pool.json')
    server = IdleClosingServer()
    p = subprocess.Popen(['node', 'net_pool.js', str(server.port)], env=lang_env(log), cwd=PROGS,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _started.append(p)
    try:
        evs = wait_leaks(log, 2)
        held = [s for s in harness.close_wait_sockets() if s['peer'].endswith(':%d' % server.port) and p.pid in s['pids']]
        check(len(held) == 2, 'ss: %d CLOSE-WAIT connections held by node, not 2' % len(held))
        for e in evs:
            check(e.get('role') == 'client', 'role %r' % e.get('role'))
            check(frame_is(e.get('lang_open_at'), 'net_pool.js', 'dial', mark_line('net_pool.js', 'open')),
                  'open at %s' % describe(e.get('lang_open_at')))
            check(frame_is(e.get('lang_eof_at'), 'net_pool.js', 'dial', mark_line('net_pool.js', 'eof')),
                  'EOF at %s' % describe(e.get('lang_eof_at')))
        return '2 leaks, open at net_pool.js:%d in dial' % evs[0]['lang_open_at']['line']
    finally:
        stop(p)
        server.close()


@test
def test_node_http_agent_pool_clean():
    """An http.Agent keep-alive pool whose server closes idle connections: node drops them, and
    nothing is reported (no false report from the client side)."""
    need('node')
    log = os.path.join(_tmp, 'node-agent.json')
    server = IdleClosingServer()
    p = subprocess.Popen(['node', 'agent_client.js', str(server.port)], env=lang_env(log), cwd=PROGS,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _started.append(p)
    try:
        line = [None]
        t = threading.Thread(target=lambda: line.__setitem__(0, p.stdout.readline()), daemon=True)
        t.start()
        t.join(30)
        check(line[0] == b'fetched\n', 'the client did not fetch: %r' % line[0])
        time.sleep(GRACE_MS * 3 / 1000.0)
        held = [s for s in harness.close_wait_sockets() if s['peer'].endswith(':%d' % server.port)]
        check(not held, 'ss: CLOSE-WAIT held: %s' % held)
        check(not harness.leaks(harness.read_events(log)), 'a leak was reported')
    finally:
        err = stop(p)
        server.close()
    check(err == '', 'the program\'s stderr is not empty: %r' % err[-300:])
    return '3 requests, idle connections closed by the server, no report'


@test
def test_node_clean_server():
    need('node')
    return clean_server(['node', 'clean_server.js'], 'node-clean')


# ---------------------------------------------------------------- Java

_classes = [None]


def java_classes():
    need('java')
    need('javac')
    if _classes[0] is None:
        out = os.path.join(_tmp, 'classes')
        srcs = glob.glob(os.path.join(PROGS, 'com', 'example', '*.java'))
        r = subprocess.run(['javac', '-g', '-d', out] + srcs, env=harness.clean_env(), capture_output=True,
                           text=True, timeout=180)
        check(r.returncode == 0, 'javac: %s' % r.stderr[-800:])
        _classes[0] = out
    return _classes[0]


@test
def test_java_server_socket_list():
    """A ServerSocket server keeping accepted sockets in a list: com.example.LeakyServer.take
    (LeakyServer.java:N) and the read loop in handle, with no option given to the JVM."""
    if harness.preload_extra():
        raise Skip('a sanitizer runtime\'s interceptors stand between the JDK\'s natives and the library, '
                   'whose hooks then see no call from libnio')
    classes = java_classes()
    log = os.path.join(_tmp, 'java-server.json')
    p, port = start(['java', '-cp', classes, 'com.example.LeakyServer'], lang_env(log))
    try:
        talk_and_close(port, 2)
        evs = wait_leaks(log, 2, timeout=30)
        check(len(held_in_close_wait(port, p.pid)) == 2, 'ss: not 2 CLOSE-WAIT sockets held by java')
        src = os.path.join('com', 'example', 'LeakyServer.java')
        for e in evs:
            check(e.get('lang') == 'java', 'lang %r' % e.get('lang'))
            check(frame_is(e.get('lang_open_at'), 'LeakyServer.java', 'com.example.LeakyServer.take',
                           mark_line(src, 'open')), 'open at %s' % describe(e.get('lang_open_at')))
            check(frame_is(e.get('lang_eof_at'), 'LeakyServer.java', 'com.example.LeakyServer.handle',
                           mark_line(src, 'eof')), 'EOF at %s' % describe(e.get('lang_eof_at')))
            check(e['lang_open_stack'][0]['function'].startswith('sun.nio.ch.'), 'the JDK frames kept')
        return 'com.example.LeakyServer.take(LeakyServer.java:%d)' % evs[0]['lang_open_at']['line']
    finally:
        err = stop(p)
        check('closewait' not in err and 'JAVA_TOOL_OPTIONS' not in err, 'program stderr: %s' % err[-500:])


@test
def test_java_http_url_connection_pool():
    """HttpURLConnection's keep-alive cache keeps a connection the server closed (it was told
    `Keep-Alive: timeout=60`): the client's fetch() line, through the JDK's HTTP client frames."""
    if harness.preload_extra():
        raise Skip('a sanitizer runtime\'s interceptors stand between the JDK\'s natives and the library')
    classes = java_classes()
    log = os.path.join(_tmp, 'java-pool.json')
    server = IdleClosingServer(b'Keep-Alive: timeout=60\r\n')
    p = subprocess.Popen(['java', '-cp', classes, 'com.example.PoolClient', str(server.port)], env=lang_env(log),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    _started.append(p)
    try:
        e = wait_leaks(log, 1, timeout=30)[0]
        check(harness.poll_until(lambda: [s for s in harness.close_wait_sockets()
                                          if s['peer'].endswith(':%d' % server.port) and p.pid in s['pids']], 10),
              'ss: no CLOSE-WAIT connection held by the client')
        src = os.path.join('com', 'example', 'PoolClient.java')
        check(e.get('role') == 'client', 'role %r' % e.get('role'))
        check(frame_is(e.get('lang_open_at'), 'PoolClient.java', 'com.example.PoolClient.fetch', mark_line(src, 'open')),
              'open at %s' % describe(e.get('lang_open_at')))
        fns = [f['function'] for f in e['lang_open_stack']]
        check(any(f.startswith('sun.net.www.protocol.http.') for f in fns), 'the JDK HTTP client frames: %s' % fns)
        return 'com.example.PoolClient.fetch(PoolClient.java:%d)' % e['lang_open_at']['line']
    finally:
        stop(p)
        server.close()


@test
def test_java_clean_server():
    classes = java_classes()
    return clean_server(['java', '-cp', classes, 'com.example.CleanServer'], 'java-clean')


@test
def test_jvmti_slots_match_the_jdk():
    """src/hooks/jvm.c declares the JNI and JVMTI function slots itself: the JDK's headers agree."""
    need('javac')
    home = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which('javac'))))
    inc = os.path.join(home, 'include')
    if not os.path.exists(os.path.join(inc, 'jvmti.h')):
        raise Skip('no jvmti.h under %s' % inc)
    prog = os.path.join(_tmp, 'slots.c')
    with open(prog, 'w') as f:
        f.write('#include <jvmti.h>\n#include <stddef.h>\n#include <stdio.h>\n'
                '#define S(t, f) printf("%s %zu\\n", #f, offsetof(struct t, f) / sizeof(void *))\n'
                'int main(void) {\n'
                ' S(JNIInvokeInterface_, GetEnv); S(JNINativeInterface_, DeleteLocalRef);\n'
                ' S(jvmtiInterface_1_, Deallocate); S(jvmtiInterface_1_, GetClassSignature);\n'
                ' S(jvmtiInterface_1_, GetSourceFileName); S(jvmtiInterface_1_, GetMethodName);\n'
                ' S(jvmtiInterface_1_, GetMethodDeclaringClass); S(jvmtiInterface_1_, GetLineNumberTable);\n'
                ' S(jvmtiInterface_1_, GetStackTrace); S(jvmtiInterface_1_, AddCapabilities);\n'
                ' jvmtiCapabilities c = {0}; c.can_get_source_file_name = 1; c.can_get_line_numbers = 1;\n'
                ' printf("caps %u\\n", ((unsigned char *)&c)[1]);\n'
                ' printf("version %x\\n", JVMTI_VERSION_1_2); return 0; }\n')
    exe = os.path.join(_tmp, 'slots')
    r = harness.compile_c(prog, exe, ['-I' + inc, '-I' + os.path.join(inc, 'linux')])
    check(r.returncode == 0, 'cc: %s' % r.stdout[-500:])
    got = dict(l.split() for l in subprocess.run([exe], capture_output=True, text=True).stdout.splitlines())
    with open(os.path.join(ROOT, 'src', 'hooks', 'jvm.c')) as f:
        src = f.read()
    want = {'GetEnv': 'VM_GET_ENV', 'DeleteLocalRef': 'JNI_DELETE_LOCAL_REF', 'Deallocate': 'TI_DEALLOCATE',
            'GetClassSignature': 'TI_GET_CLASS_SIGNATURE', 'GetSourceFileName': 'TI_GET_SOURCE_FILE_NAME',
            'GetMethodName': 'TI_GET_METHOD_NAME', 'GetMethodDeclaringClass': 'TI_GET_METHOD_DECLARING_CLASS',
            'GetLineNumberTable': 'TI_GET_LINE_NUMBER_TABLE', 'GetStackTrace': 'TI_GET_STACK_TRACE',
            'AddCapabilities': 'TI_ADD_CAPABILITIES'}
    for fn, macro in want.items():
        check('#define %s %s\n' % (macro, got[fn]) in src, '%s: the JDK says slot %s' % (macro, got[fn]))
    check('#define CAPS_BYTE1 0x%x' % int(got['caps']) in src, 'capability bits: %s' % got['caps'])
    check('#define JVMTI_VERSION_1_2 0x%s' % got['version'] in src, 'version %s' % got['version'])
    return '%d slots, capabilities and version agree with %s' % (len(want), inc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('-k', default=None)
    ap.add_argument('--list', action='store_true')
    args = ap.parse_args()
    selected = registry.select(args.k)
    if args.list:
        for name, _ in selected:
            print(name)
        return 0
    missing = harness.missing_library()
    if missing:
        return harness.fail_all(selected, 'library not found: %s (run make)' % ', '.join(missing))
    runner = harness.Runner()
    try:
        return runner.run(selected)
    finally:
        for p in _started:
            if isinstance(p, socket.socket):
                p.close()
            elif p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        shutil.rmtree(_tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
