# Hands closewait_note_stack() texts a program could write: each must be read warily.
import ctypes
import socket
import sys
import time

note = ctypes.CDLL(None).closewait_note_stack
note.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
srv = socket.socket()
srv.bind(('127.0.0.1', 0))
srv.listen(4)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
fd = conn.fileno()
results = []
for text in (b'x' * 5000,                       # too long: refused
             b''):                              # empty: refused
    results.append(note(fd, 0, text, len(text)))
results.append(note(fd, 7, b'python\np\tf\tf.py\t1', 19))   # no such kind
results.append(note(9999, 0, b'python\np\tf\tf.py\t1', 19)) # not a socket of ours
hostile = (b'py\x1bthon\x00 3\n'
           b'p\tgood\x07name\t/x/\x01evil.py\t12\n'
           b'no tabs at all\n'
           b'q\tbadkind\tf.py\t1\n'
           b'p\tbadline\tf.py\t12a\n'
           b'p\thuge\tf.py\t99999999999999\n'
           b'r\t' + b'n' * 300 + b'\t' + b'/d' * 400 + b'.py\t7\n'
           b'p\t\xff\xfe\t\xc3\x28.py\t3')
results.append(note(fd, 0, hostile, len(hostile)))
print(' '.join(str(r) for r in results), flush=True)
time.sleep(60)
