"""A server with two listeners on one port, on 127.0.0.1 and 127.0.0.2, that accepts one
connection on each.  The first it never reads nor closes (a leak once its peer closes); the second
it reads to EOF and closes.  When both come from one client address and port, the library's key
for an accepted connection (the peer's end and the local port) is the same for both.

argv: [nodump]  (nodump: prctl(PR_SET_DUMPABLE, 0) first, so that /proc/PID/fd is closed to the
watcher unless it has CAP_SYS_PTRACE)
Prints PORT p, ACCEPTED fd local (twice), CLOSED fd; ends when stdin closes."""
import ctypes
import socket
import sys
import threading

if len(sys.argv) > 1 and sys.argv[1] == 'nodump':
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE

first = socket.socket()
first.bind(('127.0.0.1', 0))
port = first.getsockname()[1]
second = socket.socket()
second.bind(('127.0.0.2', port))
first.listen(4)
second.listen(4)
print('PORT %d' % port, flush=True)

kept, _ = first.accept()
print('ACCEPTED %d %s:%d' % ((kept.fileno(),) + kept.getsockname()), flush=True)
served, _ = second.accept()
print('ACCEPTED %d %s:%d' % ((served.fileno(),) + served.getsockname()), flush=True)


def serve():
    fd = served.fileno()
    while served.recv(4096):
        pass
    served.close()
    print('CLOSED %d' % fd, flush=True)


threading.Thread(target=serve, daemon=True).start()
sys.stdin.read()
print('DONE', flush=True)
