# Two places accept and keep connections: one native stack (the interpreter's), two sites.
import socket

held = []


def accept_a(srv):
    held.append(srv.accept()[0])  # closewait-test: site-a


def accept_b(srv):
    held.append(srv.accept()[0])  # closewait-test: site-b


srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    accept_a(srv)
    accept_b(srv)
