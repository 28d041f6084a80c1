# A socketserver.ThreadingTCPServer whose handler reads the request lines to EOF, then waits
# for its backend's answer with no timeout.  The backend never answers: the handler's thread
# never returns, so socketserver's shutdown_request() never runs and the connection is held.
import queue
import socketserver

answers = queue.Queue()  # the backend's answers; it is down and puts nothing


class LineHandler(socketserver.StreamRequestHandler):
    def handle(self):  # closewait-test: handler
        lines = []
        while True:
            line = self.rfile.readline()  # closewait-test: eof
            if not line:
                break
            lines.append(line)
        self.wfile.write(answers.get())


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True


srv = Server(('127.0.0.1', 0), LineHandler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
