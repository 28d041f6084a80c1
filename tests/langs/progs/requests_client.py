# A requests.Session client that asks for streamed responses, looks at their status and never
# reads or closes them: urllib3 cannot put a connection back in the pool, and each one stays
# open after the server closes it.
import sys
import time

import requests

port = int(sys.argv[1])
session = requests.Session()
seen = []


def fetch(path):
    r = session.get('http://127.0.0.1:%d%s' % (port, path), stream=True)  # closewait-test: open
    seen.append(r)
    return r.status_code


for i in range(3):
    fetch('/%d' % i)
print('fetched', flush=True)
time.sleep(60)
