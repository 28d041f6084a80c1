"""What /proc says about the library's watcher processes (shared by the test suites)."""
import os


def watcher_spec_pid(env_entry):
    """The pid of the process that started a watcher, from its CLOSEWAIT_WATCHER_OF=memfd:stderr:pid:..."""
    fields = env_entry.split(b'=', 1)[1].split(b':')
    return int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None


def watchers_of(pid):
    """Pids of the watcher processes (cmdline closewait-watcher) started by program pid (one
    watcher serves a process and the processes it forks)."""
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
        if any(e.startswith(b'CLOSEWAIT_WATCHER_OF=') and watcher_spec_pid(e) == pid for e in env):
            found.append(int(d))
    return found
