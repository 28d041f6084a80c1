"""closewait-report: Open counts per process instance merged by open site; growth."""

import bisect
import collections

# Merging: open counts per process instance, growth

def is_growing(samples, leaks):
    """The growing rule (docs/report.md): within one process and one stack, take the open
    count after each of its events (leak +1, matched closed_late -1, summary sets it).
    Growing when there were at least 3 leaks, the mean over the last half of these
    samples is higher than over the first half, and the last sample is at least the
    highest of the first half."""
    n = len(samples)
    if leaks < 3 or n < 3:
        return False
    half = n // 2
    first, last = samples[:half], samples[n - half:]
    return (sum(last) / len(last) > sum(first) / len(first)
            and samples[-1] >= max(first) and samples[-1] > 0)


class HostResolver:
    """The host of an event without a `host` field: the host named by the latest `start`
    event of the same pid, at or before the event, in the same log family."""

    def __init__(self, records):
        starts = collections.defaultdict(list)
        for ts, _s, kind, host, pid, _fd, _sid, _p, family in records:
            if kind == "start" and host:
                starts[(family, pid)].append((ts, host))
        self.starts = {}
        for k, v in starts.items():
            v.sort()
            self.starts[k] = ([t for t, _ in v], [h for _, h in v])

    def __call__(self, ts, host, pid, family):
        if host:
            return host
        s = self.starts.get((family, pid))
        if not s:
            return None
        i = bisect.bisect_right(s[0], ts) - 1
        return s[1][i] if i >= 0 else None


def merge(col):
    """Replays the events in time order per process instance.  A process instance is
    (host, pid, generation): a `start` event after other events of the pid, or a summary
    at exit, begins the next one (the pid was reused)."""
    resolve = HostResolver(col.records)
    gen = collections.Counter()
    active = {}
    open_fds = {}                    # (inst, sid) -> Counter(fd -> n)
    open_n = collections.Counter()   # (inst, sid) -> open count
    leaks = collections.Counter()    # (inst, sid) -> leak events
    ever_lib = {}                    # (inst, sid) -> count_ever / site_ever from the library
    lib_growing = {}                 # (inst, sid) -> the library's flag on the last event
    samples = collections.defaultdict(list)
    # sid -> [(ts, sockets held over every process instance)]: the growth charts
    held_now = collections.Counter()
    timeline = collections.defaultdict(list)

    def track(key, ts):
        sid = key[1]
        total = held_now[sid] + open_n[key] - track.last.get(key, 0)
        track.last[key] = open_n[key]
        held_now[sid] = total
        tl = timeline[sid]
        if tl and tl[-1][0] == ts:
            tl[-1] = (ts, total)
        else:
            tl.append((ts, total))
    track.last = {}
    closed = collections.Counter()
    held = {}
    procs = collections.defaultdict(set)
    inst_exe, inst_grace = {}, {}
    suppressed_in_process = {}
    for ts, _seq, kind, host, pid, fd, sid, payload, family in sorted(
            col.records, key=lambda r: (r[0], r[1])):
        host = resolve(ts, host, pid, family)
        hp = (host, pid)
        if kind == "start":
            if active.get(hp):
                gen[hp] += 1
                active[hp] = False
            inst = (host, pid, gen[hp])
            if payload[0]:
                inst_exe[inst] = payload[0]
            if payload[1] is not None:
                inst_grace[inst] = payload[1]
            continue
        inst = (host, pid, gen[hp])
        active[hp] = True
        if kind == "leak":
            key = (inst, sid)
            site_open, site_ever, flag = payload
            open_fds.setdefault(key, collections.Counter())[fd] += 1
            open_n[key] = site_open if site_open is not None else open_n[key] + 1
            leaks[key] += 1
            if site_ever is not None:
                ever_lib[key] = max(site_ever, ever_lib.get(key, 0))
            lib_growing[key] = flag
            samples[key].append(open_n[key])
            track(key, ts)
            procs[sid].add(hp)
        elif kind == "closed_late":
            key = (inst, sid)
            c = open_fds.get(key)
            if c and c[fd] > 0:
                c[fd] -= 1
            elif open_n[key] > (sum(c.values()) if c else 0):
                pass        # one of the leaks known only by count (site_open, summary)
            else:
                col.inputs.unmatched_closed_late += 1
                continue
            open_n[key] = max(0, open_n[key] - 1)
            samples[key].append(open_n[key])
            track(key, ts)
            lib_growing[key] = False
            closed[sid] += 1
            if payload is not None and (sid not in held or payload > held[sid]):
                held[sid] = payload
        else:  # summary: authoritative for the stacks it lists
            entries, at_exit, supp = payload
            for s, now, ever, flag in entries:
                key = (inst, s)
                if now is not None:
                    open_n[key] = now
                    samples[key].append(now)
                    track(key, ts)
                if ever is not None:
                    ever_lib[key] = max(ever, ever_lib.get(key, 0))
                lib_growing[key] = flag
                procs[s].add(hp)
                col.finding(s)
            if supp is not None:
                suppressed_in_process[inst] = supp
            if at_exit:
                gen[hp] += 1
                active[hp] = False
    keys = set(open_n) | set(leaks) | set(ever_lib)
    for key in keys:
        inst, sid = key
        f = col.finding(sid)
        f.count_open += open_n.get(key, 0)
        f.count_ever += max(leaks.get(key, 0), ever_lib.get(key, 0), open_n.get(key, 0))
        f.instances += 1
        if is_growing(samples.get(key, []), leaks.get(key, 0)) or lib_growing.get(key):
            f.growing_procs.append((inst[0], inst[1]))
        if inst in inst_grace:
            g = inst_grace[inst]
            f.grace_ms = g if f.grace_ms is None else min(f.grace_ms, g)
        if not f.leak_events and inst in inst_exe:
            f.exes[inst_exe[inst]] += 1
    for sid, s in procs.items():
        col.finding(sid).procs |= s
    for sid, tl in timeline.items():
        col.finding(sid).timeline = tl
    for sid, n in closed.items():
        f = col.finding(sid)
        f.closed_late += n
        f.max_held_ms = held.get(sid)
    col.suppressed_in_process = sum(suppressed_in_process.values())
    return [f for f in col.findings.values() if f.count_ever > 0 or f.count_open > 0]
