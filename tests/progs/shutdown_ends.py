"""A server that shuts down its side of a connection and never closes it, as a server with a
lingering close does before it reads the rest and forgets the close.

argv: ADDR [closelistener]  (the listener's address, a loopback one; closelistener: the listener is
closed before the shutdown, so that the connection's local address cannot come from it)
Prints PORT p, ACCEPTED fd, SHUT fd; ends when stdin closes."""
import socket
import sys

listener = socket.socket()
listener.bind((sys.argv[1], 0))
listener.listen(4)
print('PORT %d' % listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
print('ACCEPTED %d' % conn.fileno(), flush=True)
if len(sys.argv) > 2 and sys.argv[2] == 'closelistener':
    listener.close()
conn.shutdown(socket.SHUT_WR)
print('SHUT %d' % conn.fileno(), flush=True)
sys.stdin.read()
print('DONE', flush=True)
