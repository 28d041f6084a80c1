# A line server whose handler reads with makefile() and never closes the connection.
import socket
import sys

held = []


def handle(conn):
    held.append(conn)
    reader = conn.makefile('rb')
    while True:
        line = reader.readline()  # closewait-test: eof
        if not line:
            break


def serve(srv):
    while True:
        conn, _ = srv.accept()  # closewait-test: accept
        handle(conn)


srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
serve(srv)
