# A keep-alive pool of http.client connections that never notices the server closing idle ones.
import http.client
import sys
import time

port = int(sys.argv[1])
pool = []


def fetch(path):
    conn = pool.pop() if pool else http.client.HTTPConnection('127.0.0.1', port)
    conn.request('GET', path)  # closewait-test: open
    body = conn.getresponse().read()
    pool.append(conn)
    return body


for i in range(3):
    fetch('/%d' % i)
print('fetched', flush=True)
time.sleep(60)
