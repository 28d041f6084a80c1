#!/usr/bin/env python3
"""A fork-per-connection echo server for the `forks` part of make bench (bench/bench.py).

    forking_echo.py PORTFILE

socketserver.ForkingTCPServer on 127.0.0.1, a free port written to PORTFILE once it listens.
Each connection is served by a child of its own: it reads one line, writes it back, and exits.
Runs until SIGTERM.
"""
import os
import signal
import socketserver
import sys


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(line)


class Server(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 128


def main():
    portfile = sys.argv[1]
    srv = Server(("127.0.0.1", 0), Echo)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, portfile)
    srv.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
