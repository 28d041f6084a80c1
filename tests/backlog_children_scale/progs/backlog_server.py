# The seed write-up's second scenario: listen(1), a slow handler, clients that give up while
# queued.  Accepts N connections, holding each one HOLD seconds before closing it.
#   backlog_server.py N HOLD [BACKLOG]   (BACKLOG defaults to the write-up's 1)
import socket, sys, time
n, hold = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(('127.0.0.1', 0))
s.listen(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
print('PORT', s.getsockname()[1], flush=True)
for i in range(n):
    conn, addr = s.accept()
    time.sleep(hold)
    conn.close()
print('DONE', flush=True)
time.sleep(1.5)
