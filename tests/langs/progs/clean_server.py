# The same server, closing each connection at EOF.
import socket


def handle(conn):
    with conn, conn.makefile('rb') as reader:
        while reader.readline():
            pass


srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    handle(conn)
