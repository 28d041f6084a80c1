# make bench, part "langs": an HTTP server answering one request per connection, then closing.
# Writes its port to the file named by argv[1].
import socket
import sys

RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Length: 512\r\nConnection: close\r\n\r\n' + b'x' * 512


def serve(srv):
    while True:
        conn, _ = srv.accept()
        with conn, conn.makefile('rb') as reader:
            while reader.readline() not in (b'\r\n', b''):
                pass
            conn.sendall(RESPONSE)


srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', 0))
srv.listen(128)
with open(sys.argv[1] + '.tmp', 'w') as f:
    f.write(str(srv.getsockname()[1]))
import os
os.rename(sys.argv[1] + '.tmp', sys.argv[1])
serve(srv)
