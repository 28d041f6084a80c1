# The blog's first server (accept, sleep, then recv), adapted for the tests: port 0 on
# 127.0.0.1, the port and the accepted descriptor printed, a sleep given on the command line.
import signal
import socket
import sys
import time

signal.alarm(60)    # bounded: the test harness may never connect

HOST = '127.0.0.1'
SLEEP = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((HOST, 0))
s.listen(1)
print('PORT', s.getsockname()[1], flush=True)
conn, addr = s.accept()
print('ACCEPT', conn.fileno(), addr[1], flush=True)
time.sleep(SLEEP)
print('WOKE', conn.fileno(), flush=True)
data = conn.recv(1024)
if not data:
    print('EOF', conn.fileno(), flush=True)
conn.sendall(data)
fd = conn.fileno()
conn.close()
print('CLOSED', fd, 'close', flush=True)
s.close()
time.sleep(0.5)
print('DONE', flush=True)
