"""What /proc says about the library's watcher processes (shared by the test suites)."""
import os


def watchers_of(pid):
    """Pids of the watcher processes (cmdline closewait-watcher) started for program pid."""
    found = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/%s/cmdline' % d, 'rb') as f:
                if f.read().split(b'\0')[0] != b'closewait-watcher':
                    continue
            with open('/proc/%s/environ' % d, 'rb') as f:
                env = f.read().split(b'\0')
        except OSError:
            continue
        if any(e.startswith(b'CLOSEWAIT_HELPER=') and e.endswith(b':%d' % pid) for e in env):
            found.append(int(d))
    return found
