# closewait for Python programs: the program's own stack, in Python, for each TCP socket it
# makes or accepts and for the read that hands it the peer's EOF, given to libclosewait.so (the
# preloaded library) through closewait_note_stack().  The tools/closewait wrapper puts this
# directory first on PYTHONPATH; then the sitecustomize this one hides is imported as before.
#
# Taken here, in Python, with the GIL held: CPython lets go of the GIL around accept() and
# connect(), so the library's own hooks cannot read Python frames safely.  Frames are read from
# sys._getframe() (file, function, line): no source line is read, nothing is formatted that is
# not sent.  Whatever goes wrong here, the program runs on untouched.
import sys

_SUPPORTED = ((3, 9), (3, 13))


def _library_loaded():
    """Is libclosewait.so in this process?  (Without it there is nothing to tell.)"""
    if 'closewait' in __import__('os').environ.get('LD_PRELOAD', ''):
        return True
    try:
        with open('/proc/self/maps', 'rb') as f:
            return b'libclosewait' in f.read()
    except OSError:
        return False


def _when_imported(name, then):
    """then(module) once `name` is imported: now if it is, else right after its import (a
    program that never imports it pays nothing more)."""
    if name in sys.modules:
        then(sys.modules[name])
        return

    class Hook:
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            from importlib.machinery import PathFinder
            spec = PathFinder.find_spec(fullname, path)
            if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                try:
                    then(module)
                except Exception as ex:  # never the program's problem
                    _say_unavailable(ex)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, Hook())


def _say_unavailable(ex):
    try:
        sys.stderr.write('closewait: Python stacks unavailable (%s: %s)\n' % (type(ex).__name__, ex))
    except Exception:
        pass


def _install(socket):
    import os
    import site
    note = None

    def resolve():
        # ctypes only once a TCP socket is there: a program that makes none never loads it
        import ctypes
        fn = ctypes.CDLL(None).closewait_note_stack
        fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        fn.restype = ctypes.c_int
        return fn

    OPEN, EOF = 0, 1
    MAX_TEXT = 4000
    depth = 32
    try:
        depth = max(1, min(64, int(os.environ.get('CLOSEWAIT_STACK_DEPTH', '32'))))
    except ValueError:
        pass
    header = 'python %d.%d.%d' % sys.version_info[:3]
    own = __file__
    lib_dirs = {os.path.realpath(os.path.dirname(os.__file__))}  # the standard library
    try:
        lib_dirs.update(os.path.realpath(p) for p in site.getsitepackages())
        lib_dirs.add(os.path.realpath(site.getusersitepackages()))
    except (AttributeError, OSError):
        pass
    lib_dirs = tuple(d.rstrip('/') + '/' for d in lib_dirs if d and d != '/')
    kinds = {}

    def kind_of(filename):
        k = kinds.get(filename)
        if k is None:
            if filename == own:
                k = ''
            elif filename.startswith('<'):
                k = 'r'  # <frozen ...>, <string>: the runtime's
            else:
                real = os.path.realpath(filename) if filename.startswith('/') else filename
                k = 'r' if real.startswith(lib_dirs) or '/site-packages/' in real or \
                    '/dist-packages/' in real else 'p'
            if len(kinds) < 4096:
                kinds[filename] = k
        return k

    # A stack is the same at a call site most of the time: the text is kept by its frames'
    # (code object, instruction offset) pairs (f_lineno is computed, f_lasti is read); the code
    # objects are kept alive with it, so that their ids stay theirs.
    texts = {}

    # asyncio accepts and reads in its event loop, and socketserver accepts in serve_forever(),
    # where the program's code is not on the stack: the code the connection is handed to
    # (start_server's client_connected_cb, a Protocol's data_received, the RequestHandlerClass's
    # handle) is named first, at its def line.
    loop_frames = {'_accept_connection': 'selector_events.py',
                   '_read_ready__data_received': 'selector_events.py',
                   '_read_ready__get_buffer': 'selector_events.py',
                   '_handle_request_noblock': 'socketserver.py'}

    def program_code(fn):
        co = getattr(fn, '__code__', None) or getattr(getattr(fn, '__func__', None), '__code__', None)
        return co if co is not None and kind_of(co.co_filename) == 'p' else None

    def handler_of(frame):
        try:
            loc = frame.f_locals
            if frame.f_code.co_name == '_handle_request_noblock':
                return program_code(getattr(getattr(loc.get('self'), 'RequestHandlerClass', None), 'handle', None))
            if frame.f_code.co_name == '_accept_connection':
                pf = loc.get('protocol_factory')
                if isinstance(pf, type):
                    return program_code(getattr(pf, 'data_received', None)) or \
                        program_code(getattr(pf, 'connection_made', None))
                for cell in getattr(pf, '__closure__', None) or ():
                    co = program_code(cell.cell_contents)
                    if co is not None:
                        return co
                return program_code(pf)
            proto = getattr(loc.get('self'), '_protocol', None)
            cb = getattr(proto, '_client_connected_cb', None)
            return program_code(cb) or program_code(getattr(type(proto), 'data_received', None)) or \
                program_code(getattr(type(proto), 'buffer_updated', None))
        except Exception:
            return None

    def build(frames, handler):
        out = [header]
        size = len(header)
        if handler is not None:
            out.append('p\t%s\t%s\t%d' % (getattr(handler, 'co_qualname', handler.co_name),
                                           handler.co_filename.replace('\t', ' ').replace('\n', ' '),
                                           handler.co_firstlineno))
        for co, lineno in frames:
            k = kind_of(co.co_filename)
            if not k:
                continue
            name = getattr(co, 'co_qualname', co.co_name)
            line = '%s\t%s\t%s\t%d' % (k, name, co.co_filename.replace('\t', ' ').replace('\n', ' '),
                                      lineno or 0)
            size += len(line) + 1
            if size > MAX_TEXT or len(out) > depth:
                break
            out.append(line)
        return '\n'.join(out).encode('utf-8', 'surrogateescape')

    getframe = sys._getframe
    limit = depth + 2  # + our own frames, left out of the text

    def stack():
        f = getframe(2)
        key = []
        add = key.append
        handler = None
        n = 0
        while f is not None and n < 5:
            co = f.f_code
            if co.co_name in loop_frames and co.co_filename.endswith(loop_frames[co.co_name]):
                handler = handler_of(f)
                add(id(handler))
            add(id(co))
            add(f.f_lasti)
            f = f.f_back
            n += 1
        while f is not None and n < limit:
            add(id(f.f_code))
            add(f.f_lasti)
            f = f.f_back
            n += 1
        key = tuple(key)
        got = texts.get(key)
        if got is None:
            f = getframe(2)
            frames = []
            while f is not None and len(frames) < n:
                frames.append((f.f_code, f.f_lineno))
                f = f.f_back
            got = (build(frames, handler), frames, handler)
            if len(texts) < 4096:
                texts[key] = got
        return got[0]

    def tell(sock, what):
        nonlocal note
        try:
            fd = sock.fileno()
            if fd >= 0:
                text = stack()
                if note is None:
                    note = resolve()
                note(fd, what, text, len(text))
        except Exception:  # never the program's problem
            pass

    base = socket.socket
    tcp_families = (int(socket.AF_INET), int(socket.AF_INET6))
    stream = int(socket.SOCK_STREAM)
    init = base.__init__

    raw_family = socket._socket.socket.family.__get__  # ints: the enum properties cost more
    raw_type = socket._socket.socket.type.__get__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        try:
            if raw_family(self) in tcp_families and raw_type(self) == stream:
                tell(self, OPEN)
        except Exception:
            pass
    __init__.__wrapped__ = init
    base.__init__ = __init__

    raw = socket._socket.socket
    recv, recv_into = raw.recv, raw.recv_into
    recvfrom, recvfrom_into = raw.recvfrom, raw.recvfrom_into

    def wrap_recv(self, bufsize, *args):
        data = recv(self, bufsize, *args)
        if not data and bufsize:
            tell(self, EOF)
        return data

    def wrap_recv_into(self, buffer, nbytes=0, *args):
        n = recv_into(self, buffer, nbytes, *args)
        if n == 0 and (nbytes or len(memoryview(buffer))):
            tell(self, EOF)
        return n

    def wrap_recvfrom(self, bufsize, *args):
        r = recvfrom(self, bufsize, *args)
        if not r[0] and bufsize:
            tell(self, EOF)
        return r

    def wrap_recvfrom_into(self, buffer, nbytes=0, *args):
        r = recvfrom_into(self, buffer, nbytes, *args)
        if r[0] == 0 and (nbytes or len(memoryview(buffer))):
            tell(self, EOF)
        return r

    for name, fn, orig in (('recv', wrap_recv, recv), ('recv_into', wrap_recv_into, recv_into),
                           ('recvfrom', wrap_recvfrom, recvfrom),
                           ('recvfrom_into', wrap_recvfrom_into, recvfrom_into)):
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = orig.__doc__
        fn.__wrapped__ = orig
        setattr(base, name, fn)


def _chain():
    """Import the sitecustomize this one hides (the system's, or the next on the path)."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    saved = list(sys.path)
    mine = sys.modules.pop('sitecustomize', None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]
    try:
        __import__('sitecustomize')
    except ImportError as ex:
        if ex.name != 'sitecustomize':
            raise
        if mine is not None:
            sys.modules['sitecustomize'] = mine
    finally:
        added = [p for p in sys.path if p not in saved]
        sys.path[:] = saved + added


try:
    if not (_SUPPORTED[0] <= sys.version_info[:2] <= _SUPPORTED[1]):
        sys.stderr.write('closewait: Python %d.%d is not supported (3.9 to 3.13): reports show the '
                         'interpreter\'s native frames only\n' % sys.version_info[:2])
    elif _library_loaded():
        _when_imported('socket', _install)
except Exception as _ex:  # never the program's problem; one line says what went wrong
    _say_unavailable(_ex)
_chain()
