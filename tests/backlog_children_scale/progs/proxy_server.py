# A proxy-style process: holds many idle accepted connections; closes those whose peer hangs
# up, except the ones it "forgets" (it stops watching LEAKS of them).
import selectors, socket, sys, time
n, linger = int(sys.argv[1]), float(sys.argv[2])
leak_every = int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0)); s.listen(4096)
print('PORT', s.getsockname()[1], flush=True)
sel = selectors.DefaultSelector()
conns = []
while len(conns) < n:
    c, _ = s.accept()
    conns.append(c)
    # every leak_every-th connection is dropped from the selector: its EOF is never read
    if len(conns) % leak_every != 0:
        sel.register(c, selectors.EVENT_READ)
print('READY', flush=True)
end = time.time() + linger
while time.time() < end:
    for key, _ in sel.select(timeout=0.2):
        c = key.fileobj
        if not c.recv(4096):
            sel.unregister(c)
            c.close()
