# The instruction count of BENCHMARKS.md section 11: N connections, client and server in this process.
import socket, sys
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(128)
addr = srv.getsockname()
for i in range(n):
    c = socket.create_connection(addr)
    s, _ = srv.accept()
    c.sendall(b'GET / HTTP/1.1\r\n\r\n')
    with s.makefile('rb') as r:
        while r.readline() not in (b'\r\n', b''):
            pass
    s.sendall(b'x' * 512)
    s.close()
    c.recv(1024)
    c.close()
