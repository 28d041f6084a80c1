#!/usr/bin/env python3
"""The closewait benchmark suite (make bench; BENCH_QUICK=1 for a short run).

Run by bench/run.sh, which builds the programs of bench/ into a temporary directory and passes:
    bench.py BIN_DIR LIBRARY WORK_DIR
BIN_DIR holds micro, client, epoll_server, leaky_server, scale, forkloop and idlethread.so; LIBRARY is a
copy of libclosewait.so taken at the start (so a rebuild during the run changes nothing).

Every part prints its figures as it goes, and one table at the end.  Nothing here fails on a
time: figures are printed, budgets are compared and said to be met or not.  A part whose tool is
missing prints one "skipped" line.

Environment: BENCH_QUICK=1 (short run), BENCH_ONLY=micro,fork,callgrind,macro,langs,nginxcg,alt,scale,forks
(a subset), BENCH_OUT=FILE (also write the final table there); for the forks part only:
BENCH_FORKS=postgres,python,apache,nginx,forkloop (a subset of its workloads), BENCH_CGROUP=0 (count
CPU from /proc instead of a cgroup, to try the fallback), BENCH_BASELINE=LIBRARY (the servers
"without" run under that library, an earlier build of closewait say: the ratios are then of this
library against that one, both measured in the same minutes).
"""
import glob
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
BASELINE = os.environ.get("BENCH_BASELINE") or None
BIN, LIB, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from procinfo import watchers_of  # noqa: E402  (the tests' lookup of watcher processes)

# Sizes of everything, full run and quick run.
P = {
    "micro_alternations": 3 if QUICK else 5,   # processes per variant, alternating
    # Short rounds (well under a scheduler time slice), many of them: on a shared machine a round
    # that another process interrupts is an outlier the median leaves out.
    "micro_rounds": 15 if QUICK else 31,       # timed rounds per process
    "micro_calls": 2048,                       # read/recv calls per round
    "fork_rounds": 5 if QUICK else 11,         # timed rounds of forks per process
    "fork_calls": 20,                          # forks per round
    "micro_accepts": 64,                       # accept+close per round
    "cg_calls": 20000,                         # read/recv calls under callgrind
    "cg_accepts": 300 if QUICK else 1000,      # accepts under callgrind
    "depths": [8, 32, 64],
    "macro_rounds": 2 if QUICK else 5,         # rounds per variant, alternating
    "macro_seconds": 1 if QUICK else 3,        # wrk duration per round
    "redis_requests": 50000 if QUICK else 200000,
    "nginx_cg": (100, 600) if QUICK else (200, 2200),  # requests in the two callgrind runs
    "alt_runs": 1 if QUICK else 5,             # runs per tool, interleaved
    "alt_conns": 200, "alt_leak_every": 10, "alt_messages": 50 if QUICK else 200,
    "scale_sizes": [1000] if QUICK else [1000, 10000],    # and the most the limits allow
    "scale_window": 2 if QUICK else 10,        # seconds of watcher CPU measured
    "scale_leaks": 5,
    # forks: fork-per-connection servers (PostgreSQL, Python's ForkingTCPServer, Apache prefork)
    "forks_rounds": 3 if QUICK else 5,        # rounds per variant, alternating
    "pg_seconds": 1 if QUICK else 2,          # pgbench -T of one measured run
    "pg_pairs": 6 if QUICK else 12,           # ABBA pairs of runs against the two servers
    "pg_txn_pairs": 150 if QUICK else 300,    # transactions alternating between them (client pgpair), per run
    "nginx_pairs": 1000 if QUICK else 3000,   # requests to each of the two nginx, per run
    "py_pairs": 200 if QUICK else 400,        # connections to each of the two forking echo servers, per run
    "ab_requests": 2000,                      # ab -n, -c 4
    "forkloop_n": 2000,                       # timed forks per process
}

ROWS = []  # (part, what, without, with, change, note)


def row(part, what, without, with_, change, note=""):
    ROWS.append((part, what, without, with_, change, note))


def say(*a):
    print(*a, flush=True)


def want(part):
    return not ONLY or part in ONLY


def have(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    return missing


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs):
    if len(xs) < 4:
        return (min(xs), max(xs)) if xs else (float("nan"), float("nan"))
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def env_with(lib, extra=None):
    e = dict(os.environ)
    e.pop("LD_PRELOAD", None)
    for k in list(e):
        if k.startswith("CLOSEWAIT_"):
            del e[k]
    if lib:
        e["LD_PRELOAD"] = lib
    if extra:
        e.update(extra)
    return e


def run(cmd, env=None, timeout=120, check=True):
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError("%s: exit %d: %s" % (" ".join(cmd), r.returncode, r.stderr.strip()[-500:]))
    return r


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def wait_file(path, timeout=30.0, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def stop(proc, port=None, timeout=20.0):
    """SIGTERM, repeated (nginx in single-process mode can miss one that arrives outside
    epoll_wait, more so under valgrind); a connection wakes the event loop; SIGKILL at last."""
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            break
        if port is not None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                pass
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode


def callgrind_total(path):
    tot = None
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                tot = int(line.split()[1])
    if tot is None:
        raise RuntimeError("no totals in " + path)
    return tot


def fmt(x, unit="", nd=1):
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return ("%." + str(nd) + "f%s") % (x, unit)


def pct(a, b):
    return (b / a - 1.0) * 100.0


# ---------------------------------------------------------------------------------------------
# 1. micro: ns per call and added instructions per call

def micro():
    say("\n== 1. micro: read(), recv(), accept()+close(); ns per call (median of rounds, processes "
        "alternating; best round beside it, as the machine is shared)")
    micro_bin = os.path.join(BIN, "micro")
    idle = os.path.join(BIN, "idlethread.so")
    cases = [("read", "read() 1 byte, regular file", [str(P["micro_calls"])], None),
             ("recv", "recv() 1 byte, tracked TCP socket", [str(P["micro_calls"])], None)]
    for d in P["depths"]:
        cases.append(("accept", "accept()+close(), stack depth %d" % d,
                      [str(P["micro_accepts"]), str(d)], {"CLOSEWAIT_STACK_DEPTH": str(d)}))
    for mode, label, args, cwenv in cases:
        # plain; with an idle thread (what any second thread costs); with an idle thread that has
        # its own descriptor table (read/recv only); with closewait
        variants = [("plain", None, None), ("thread", idle, None)]
        if mode != "accept":
            variants.append(("unshared", idle, {"IDLETHREAD_UNSHARE": "1"}))
        variants.append(("closewait", LIB, cwenv))
        pooled = {v[0]: [] for v in variants}
        frames = None
        for k in range(P["micro_alternations"]):
            order = variants if k % 2 == 0 else list(reversed(variants))
            for v, lib, extra in order:
                out = run([micro_bin, mode, str(P["micro_rounds"])] + args, env=env_with(lib, extra)).stdout
                for line in out.splitlines():
                    f = line.split()
                    if f and f[0] == "ns":
                        pooled[v].extend(float(x) for x in f[2:])
                    elif f and f[0] == "frames_at_accept":
                        frames = int(f[1])
        m = {v: med(pooled[v]) for v in pooled}
        lo = {v: min(pooled[v]) for v in pooled}
        q = {v: quartiles(pooled[v]) for v in pooled}
        added = m["closewait"] - m["plain"]
        hook = m["closewait"] - m["thread"]
        extra_txt = "" if "unshared" not in m else "  idle thread, own fd table %.1f" % m["unshared"]
        say("  %-36s median: plain %.1f [IQR %.1f-%.1f]  idle thread %.1f%s  closewait %.1f [IQR %.1f-%.1f] ns"
            % (label, m["plain"], q["plain"][0], q["plain"][1], m["thread"], extra_txt, m["closewait"],
               q["closewait"][0], q["closewait"][1]))
        say("  %-36s   added %+.1f ns (%+.1f%%), closewait - idle thread (the hooks) %+.1f ns%s"
            % ("", added, pct(m["plain"], m["closewait"]), hook,
               "" if frames is None else "; frames on the stack at accept: %d" % frames))
        say("  %-36s best: plain %.1f  idle thread %.1f%s  closewait %.1f ns: added %+.1f, hooks %+.1f ns"
            % ("", lo["plain"], lo["thread"], "" if "unshared" not in lo else "  own fd table %.1f" % lo["unshared"],
               lo["closewait"], lo["closewait"] - lo["plain"], lo["closewait"] - lo["thread"]))
        note = "idle thread %.1f (hooks %+.1f ns)" % (m["thread"], hook)
        if "unshared" in m:
            note += ", idle thread with its own fd table %.1f" % m["unshared"]
        note += "; best rounds %.1f / %.1f" % (lo["plain"], lo["closewait"])
        row("micro", label + " (ns/call)", fmt(m["plain"]), fmt(m["closewait"]),
            "%+.1f ns (%+.1f%%)" % (added, pct(m["plain"], m["closewait"])), note)


def fork_cost():
    say("\n== 1c. fork(): fork of a process holding a tracked connection, the child _exit()s at once, "
        "waitpid(); us per fork (median of rounds, processes alternating)")
    micro_bin = os.path.join(BIN, "micro")
    variants = [("plain", None, None), ("closewait", LIB, None),
                ("closewait-thread", LIB, {"CLOSEWAIT_WATCHER": "thread"})]
    pooled = {v[0]: [] for v in variants}
    for k in range(P["micro_alternations"]):
        for v, lib, extra in (variants if k % 2 == 0 else list(reversed(variants))):
            out = run([micro_bin, "fork", str(P["fork_rounds"]), str(P["fork_calls"])], env=env_with(lib, extra)).stdout
            for line in out.splitlines():
                f = line.split()
                if f and f[0] == "ns":
                    pooled[v].extend(float(x) / 1000.0 for x in f[2:])
    m = {v: med(pooled[v]) for v in pooled}
    say("  plain %.1f us  closewait (watcher process) %.1f us  closewait (watcher thread) %.1f us per fork"
        % (m["plain"], m["closewait"], m["closewait-thread"]))
    row("micro", "fork()+_exit+waitpid (us/fork)", "%.1f" % m["plain"], "%.1f" % m["closewait"],
        "%+.1f us" % (m["closewait"] - m["plain"]),
        "thread mode %.1f us: the child's copy of the table and its watcher's start are the difference"
        % m["closewait-thread"])


def micro_callgrind():
    say("\n== 1b. micro under callgrind: instructions per call (only the timed loops are collected)")
    if have("valgrind"):
        say("  skipped: valgrind is not installed")
        return
    micro_bin = os.path.join(BIN, "micro")
    idle = os.path.join(BIN, "idlethread.so")
    cases = [("read", "read() regular file", str(P["cg_calls"]), [], None),
             ("recv", "recv() tracked TCP socket", str(P["cg_calls"]), [], None)]
    for d in P["depths"]:
        cases.append(("accept", "accept()+close(), depth %d" % d, str(P["cg_accepts"]), [str(d)],
                      {"CLOSEWAIT_STACK_DEPTH": str(d)}))
    for mode, label, calls, extra, cwenv in cases:
        ir = {}
        for v, lib in (("plain", None), ("thread", idle), ("closewait", LIB)):
            out = os.path.join(WORK, "cg.micro.%s.%s.%s" % (mode, "-".join(extra) or "x", v))
            env = env_with(lib, cwenv if v == "closewait" else None)
            run(["valgrind", "--tool=callgrind", "--collect-atstart=no", "--callgrind-out-file=" + out,
                 os.path.join(BIN, "micro"), mode, "1", calls] + extra, env=env, timeout=300)
            ir[v] = callgrind_total(out) / int(calls)
        added = ir["closewait"] - ir["plain"]
        say("  %-32s plain %8.1f Ir  +idle thread %8.1f Ir  closewait %8.1f Ir  added %+.1f Ir/call "
            "(hooks %+.1f, glibc's multi-thread path %+.1f)"
            % (label, ir["plain"], ir["thread"], ir["closewait"], added, ir["closewait"] - ir["thread"],
               ir["thread"] - ir["plain"]))
        row("micro", label + " (Ir/call)", fmt(ir["plain"]), fmt(ir["closewait"]),
            "%+.0f Ir (%+.0f%%)" % (added, pct(ir["plain"], ir["closewait"])),
            "hooks %+.0f, second thread %+.0f" % (ir["closewait"] - ir["thread"], ir["thread"] - ir["plain"]))


# ---------------------------------------------------------------------------------------------
# 2. macro: nginx, redis, the epoll server; each with and without, alternating

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; use epoll; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000000;
    keepalive_timeout 65;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location / {{ }}
    }}
}}
"""


def nginx_config(d):
    """Directory d made ready for an nginx of NGINX_CONF on a free port serving /f512; returns
    (config path, port)."""
    for sub in ("www", "body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    with open(os.path.join(d, "www", "f512"), "wb") as f:
        f.write(bytes((65 + i % 26) for i in range(512)))
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port))
    return conf, port


def nginx_setup():
    d = os.path.join(WORK, "nginx")
    conf, port = nginx_config(d)
    return d, conf, port


def nginx_cmd(d, conf):
    return [shutil.which("nginx"), "-p", d, "-c", conf, "-e", os.path.join(d, "error.log")]


# The server on CPU 0 (its watcher thread too), the load generator on CPU 1: less noise from
# the scheduler moving them around on this 2-core machine.
def on_cpu(cpu):
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def wrk(port, seconds, close):
    cmd = on_cpu(1) + ["wrk", "-t1", "-c32", "-d%ds" % seconds]
    if close:
        cmd += ["-H", "Connection: close"]
    out = run(cmd + ["http://127.0.0.1:%d/f512" % port], timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    errs = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or n is None:
        raise RuntimeError("wrk printed no rate: " + out)
    note = ""
    if errs:
        note += "socket errors: " + errs.group(1)
    if non2xx:
        note += " non-2xx: " + non2xx.group(1)
    return float(m.group(1)), int(n.group(1)), note.strip()


def proc_cpu_ns(pid):
    """CPU time of all the threads of pid, from schedstat (ns), or utime+stime if there is none."""
    total = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                total += int(f.read().split()[0])
        except OSError:
            with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                st = f.read()
            fl = st[st.rindex(")") + 2:].split()
            total += (int(fl[11]) + int(fl[12])) * 1e9 / os.sysconf("SC_CLK_TCK")
    return total


def tree_cpu_ns(root):
    """CPU time of root and all its descendants (a tracer and its tracee, say)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        kids.setdefault(int(st[st.rindex(")") + 2:].split()[1]), []).append(int(d))
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            total += proc_cpu_ns(p)
        except OSError:
            pass
    return total


def measured(pid, fn):
    """fn() -> (rate, requests); returns (rate, server CPU us per request)."""
    c0 = proc_cpu_ns(pid)
    rate, requests = fn()
    c1 = proc_cpu_ns(pid)
    return rate, (c1 - c0) / 1000.0 / max(requests, 1)


def alternate(rounds, measure):
    """measure(with_lib) -> (rate, cpu_us_per_request); ABBA order."""
    res = {False: [], True: []}
    for k in range(rounds):
        for w in ((False, True) if k % 2 == 0 else (True, False)):
            res[w].append(measure(w))
    return res


def report_ratio(part, label, res):
    rates = {w: [r for r, _ in res[w]] for w in res}
    cpus = {w: [c for _, c in res[w]] for w in res}
    rr = [b / a for a, b in zip(rates[False], rates[True])]
    cr = [b / a for a, b in zip(cpus[False], cpus[True])]
    say("  %-36s req/s without %8.0f  with %8.0f  ratio %.3f (pairs %.3f-%.3f)\n"
        "  %-36s server CPU us/req without %6.2f  with %6.2f  ratio %.3f (pairs %.3f-%.3f)"
        % (label, med(rates[False]), med(rates[True]), med(rr), min(rr), max(rr),
           "", med(cpus[False]), med(cpus[True]), med(cr), min(cr), max(cr)))
    row(part, label + " req/s", "%.0f" % med(rates[False]), "%.0f" % med(rates[True]), "x%.3f" % med(rr),
        "%d pairs, ratio spread %.3f-%.3f" % (len(rr), min(rr), max(rr)))
    row(part, label + " server CPU us/req", "%.2f" % med(cpus[False]), "%.2f" % med(cpus[True]),
        "x%.3f" % med(cr), "%d pairs, ratio spread %.3f-%.3f" % (len(cr), min(cr), max(cr)))


def macro():
    say("\n== 2. macro: with/without the library, alternating rounds (%d each, %d s); throughput and the "
        "server's CPU time per request (all its threads, schedstat), server on CPU 0, load on CPU 1; "
        "load average now %.1f" % (P["macro_rounds"], P["macro_seconds"], os.getloadavg()[0]))
    secs = P["macro_seconds"]
    if have("nginx", "wrk"):
        say("  nginx: skipped: %s not installed" % ", ".join(have("nginx", "wrk")))
    else:
        d, conf, port = nginx_setup()
        for close in (False, True):
            notes = []

            def once(w):
                p = subprocess.Popen(on_cpu(0) + nginx_cmd(d, conf), env=env_with(LIB if w else None),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    if not wait_port(port, 15, p):
                        raise RuntimeError("nginx did not start; see " + d + "/error.log")
                    if not QUICK:
                        wrk(port, 1, close)  # warm-up, not counted

                    def load():
                        rps, n, note = wrk(port, secs, close)
                        if note:
                            notes.append(note)
                        return rps, n
                    return measured(p.pid, load)
                finally:
                    stop(p, port)
            res = alternate(P["macro_rounds"], once)
            report_ratio("macro", "nginx keep-alive" if not close else "nginx Connection: close", res)
            if notes:
                say("    wrk said: " + "; ".join(sorted(set(notes))))
    if have("redis-server", "redis-benchmark"):
        say("  redis: skipped: %s not installed" % ", ".join(have("redis-server", "redis-benchmark")))
    else:
        rd = os.path.join(WORK, "redis")
        os.makedirs(rd, exist_ok=True)
        port = free_port()
        got = {"SET": {False: [], True: []}, "GET": {False: [], True: []}}
        # Requests per test: P["redis_requests"] at first, then about 2 s worth at the rate the
        # first round saw (a loaded machine would otherwise stretch this part for minutes).
        nreq = {"SET": P["redis_requests"], "GET": P["redis_requests"]}

        def once_redis(w):
            p = subprocess.Popen(on_cpu(0) + ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                              "--daemonize", "no", "--loglevel", "warning", "--dir", rd],
                                 env=env_with(LIB if w else None), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            try:
                if not wait_port(port, 15, p):
                    raise RuntimeError("redis-server did not start")
                for t in ("SET", "GET"):
                    def load():
                        n = nreq[t]
                        out = run(on_cpu(1) + ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t",
                                               t.lower(), "-n", str(n), "-c", "50", "--csv"],
                                  timeout=300).stdout
                        for line in out.splitlines():
                            f = [x.strip('"') for x in line.split(",")]
                            if len(f) > 1 and f[0] == t:
                                return float(f[1]), n
                        raise RuntimeError("redis-benchmark printed no rate: " + out[-300:])
                    got[t][w].append(measured(p.pid, load))
                    if len(got[t][w]) == 1 and not got[t][not w]:
                        rate = got[t][w][0][0]
                        nreq[t] = int(max(20000, min(P["redis_requests"], rate * P["macro_seconds"] * 2 / 3)))
                return None
            finally:
                stop(p)
        alternate(P["macro_rounds"], once_redis)
        for t in ("SET", "GET"):
            report_ratio("macro", "redis %s keep-alive" % t, got[t])
    if have("wrk"):
        say("  epoll server: skipped: wrk not installed")
    else:
        portfile = os.path.join(WORK, "epoll.port")

        def once_epoll(w):
            if os.path.exists(portfile):
                os.unlink(portfile)
            p = subprocess.Popen(on_cpu(0) + [os.path.join(BIN, "epoll_server"), portfile],
                                 env=env_with(LIB if w else None), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            try:
                if not wait_file(portfile, 15, p):
                    raise RuntimeError("epoll_server did not start")
                time.sleep(0.05)
                port = int(open(portfile).read())
                if not QUICK:
                    wrk(port, 1, True)  # warm-up, not counted
                return measured(p.pid, lambda: wrk(port, secs, True)[:2])
            finally:
                stop(p)
        res = alternate(P["macro_rounds"], once_epoll)
        report_ratio("macro", "epoll server, new conn/request", res)


# 2b. language runtimes: the program's own stacks (tools/langs, hooks/jvm.c)

LANGS_DIR = os.path.join(os.path.dirname(HERE), "tools", "langs")


def langs():
    """A Python, a Node.js and a Java server, a new connection per request (wrk, Connection:
    close): without the library, with it alone (native stacks), and with the language stacks
    too (the wrapper's PYTHONPATH and NODE_OPTIONS; Java needs nothing), rounds rotating."""
    rounds, secs = P["macro_rounds"], P["macro_seconds"]
    say("\n== 2b. language stacks: a Python, a Node.js and a Java server, new connection per request; "
        "%d rounds of %d s per variant, rotating; load average now %.1f" % (rounds, secs, os.getloadavg()[0]))
    if have("wrk"):
        say("  langs: skipped: wrk not installed")
        return
    src = os.path.join(HERE, "langs")
    servers = [("python", [sys.executable, os.path.join(src, "server.py")], [])]
    if not have("node"):
        servers.append(("node", ["node", os.path.join(src, "server.js")], []))
    else:
        say("  node: skipped: not installed")
    if not have("java", "javac"):
        classes = os.path.join(WORK, "langs-classes")
        run(["javac", "-d", classes, os.path.join(src, "BenchServer.java")], env=env_with(None), timeout=180)
        servers.append(("java", ["java", "-cp", classes, "BenchServer"], []))
    else:
        say("  java: skipped: java or javac not installed")
    shims = {"PYTHONPATH": os.path.join(LANGS_DIR, "python"),
             "NODE_OPTIONS": '--require "%s"' % os.path.join(LANGS_DIR, "node", "closewait.js")}
    variants = [("without", None, None), ("library", LIB, {"CLOSEWAIT_LOG": "off"}),
                ("library+langs", LIB, dict(shims, CLOSEWAIT_LOG="off"))]
    for name, cmd, _ in servers:
        portfile = os.path.join(WORK, "langs.%s.port" % name)
        got = {v[0]: [] for v in variants}

        def once(variant):
            _, lib, extra = variant
            if os.path.exists(portfile):
                os.unlink(portfile)
            p = subprocess.Popen(on_cpu(0) + cmd + [portfile], env=env_with(lib, extra),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if not wait_file(portfile, 30, p):
                    raise RuntimeError("%s server did not start" % name)
                time.sleep(0.05)
                port = int(open(portfile).read())
                wrk(port, 1, True)  # warm-up (the JIT, the first stacks), not counted
                return measured(p.pid, lambda: wrk(port, secs, True)[:2])
            finally:
                stop(p)
        for k in range(rounds):
            order = variants[k % 3:] + variants[:k % 3]
            for v in order:
                got[v[0]].append(once(v))
        base = got["without"]
        for label, key in (("library alone", "library"), ("library + language stacks", "library+langs")):
            rr = [b[0] / a[0] for a, b in zip(base, got[key])]
            cr = [b[1] / a[1] for a, b in zip(base, got[key])]
            say("  %-7s %-27s req/s without %7.0f  with %7.0f  ratio %.3f (pairs %.3f-%.3f); "
                "server CPU us/req %.1f -> %.1f (x%.3f)"
                % (name, label, med([r for r, _ in base]), med([r for r, _ in got[key]]), med(rr), min(rr), max(rr),
                   med([c for _, c in base]), med([c for _, c in got[key]]), med(cr)))
            row("langs", "%s server, %s, req/s" % (name, label), "%.0f" % med([r for r, _ in base]),
                "%.0f" % med([r for r, _ in got[key]]), "x%.3f" % med(rr),
                "%d rounds, ratio spread %.3f-%.3f" % (len(rr), min(rr), max(rr)))
            row("langs", "%s server, %s, server CPU us/req" % (name, label), "%.1f" % med([c for _, c in base]),
                "%.1f" % med([c for _, c in got[key]]), "x%.3f" % med(cr),
                "%d rounds, ratio spread %.3f-%.3f" % (len(cr), min(cr), max(cr)))
        if name == "java":
            continue  # nothing is set for Java: the two variants are the same program
        cr = [b[1] / a[1] for a, b in zip(got["library"], got["library+langs"])]
        say("  %-7s language stacks alone (library+langs / library): server CPU us/req ratio %.3f (pairs %.3f-%.3f)"
            % (name, med(cr), min(cr), max(cr)))
        row("langs", "%s server, the language stacks alone, CPU us/req" % name,
            "%.1f" % med([c for _, c in got["library"]]), "%.1f" % med([c for _, c in got["library+langs"]]),
            "x%.3f" % med(cr), "budget: x1.10 or better (a new connection per request, nothing else done)")


def nginx_callgrind():
    n1, n2 = P["nginx_cg"]
    say("\n== 2b. nginx under callgrind: user-space instructions per request "
        "(collected inside ngx_process_events_and_timers; (Ir(%d) - Ir(%d)) / %d, so start-up, "
        "warm-up and exit are excluded)" % (n2, n1, n2 - n1))
    if have("nginx", "valgrind"):
        say("  skipped: %s not installed" % ", ".join(have("nginx", "valgrind")))
        return
    d, conf, port = nginx_setup()
    budgets = {"ka": 1.0, "close": 5.0}
    idle = os.path.join(BIN, "idlethread.so")
    for mode in ("ka", "close"):
        per = {}
        variants = (("plain", None, None), ("thread", idle, None), ("closewait", LIB, None),
                    ("closewait-thread", LIB, {"CLOSEWAIT_WATCHER": "thread"}))
        for v, lib, extra in variants:
            tot = {}
            for n in (n1, n2):
                out = os.path.join(WORK, "cg.nginx.%s.%s.%d" % (mode, v, n))
                p = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=no",
                                      "--toggle-collect=ngx_process_events_and_timers",
                                      "--callgrind-out-file=" + out] + nginx_cmd(d, conf),
                                     env=env_with(lib, extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    if not wait_port(port, 60, p):
                        raise RuntimeError("nginx under valgrind did not start")
                    run([os.path.join(BIN, "client"), "http", str(port), "/f512", str(n), mode], timeout=600)
                finally:
                    stop(p, port, timeout=60)
                tot[n] = callgrind_total(out)
            per[v] = (tot[n2] - tot[n1]) / float(n2 - n1)
        base, cw, thr, cwt = per["plain"], per["closewait"], per["thread"], per["closewait-thread"]
        added = pct(base, cw)
        label = "keep-alive" if mode == "ka" else "one connection per request"
        verdict = "within" if added <= budgets[mode] else "OVER"
        split = ("watcher process (default): the hooks and backtraces alone; with the watcher as a thread "
                 "(CLOSEWAIT_WATCHER=thread) %+.0f Ir (%+.2f%%), of which an idle second thread alone "
                 "%+.0f Ir (%+.2f%%)" % (cwt - base, pct(base, cwt), thr - base, pct(base, thr)))
        say("  %-28s without %8.0f Ir/req  with %8.0f Ir/req  added %+.0f Ir (%+.2f%%); budget +%.0f%%: %s\n"
            "  %-28s %s" % (label, base, cw, cw - base, added, budgets[mode], verdict, "", split))
        row("nginx Ir", label + " (Ir/request)", "%.0f" % base, "%.0f" % cw,
            "%+.0f Ir (%+.2f%%)" % (cw - base, added), "budget +%.0f%%: %s; %s" % (budgets[mode], verdict, split))


# ---------------------------------------------------------------------------------------------
# 3. the alternatives on one leaking workload

def marked_line(path, marker):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if marker in line:
                return i
    return -1


def alternatives():
    conns, every, msgs = P["alt_conns"], P["alt_leak_every"], P["alt_messages"]
    leaks = conns // every
    say("\n== 3. the same leaking workload under each tool: %d connections, %d round trips each, "
        "%d leak (%d runs each; the client's wall time for the whole exchange, and the CPU time the "
        "server and its tool spent meanwhile)" % (conns, msgs, leaks, P["alt_runs"]))
    src = os.path.join(HERE, "leaky_server.c")
    open_line = marked_line(src, "/* LEAK-OPEN-SITE */")
    eof_line = marked_line(src, "/* LEAK-EOF-SITE */")
    server = os.path.join(BIN, "leaky_server")

    def one(prefix, env, tag, linger):
        portfile = os.path.join(WORK, "leaky.%s.port" % tag)
        if os.path.exists(portfile):
            os.unlink(portfile)
        p = subprocess.Popen(prefix + [server, portfile, str(conns), str(every), str(linger)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_file(portfile, 60, p):
            p.kill()
            raise RuntimeError("leaky_server did not start under " + tag)
        port = open(portfile).read().strip()
        c0 = tree_cpu_ns(p.pid)
        out = run([os.path.join(BIN, "client"), "echo", port, str(conns), str(msgs), "x"], timeout=600).stdout
        cpu = (tree_cpu_ns(p.pid) - c0) / 1e9
        elapsed = float(out.split()[1])
        _, err = p.communicate(timeout=120)
        return elapsed, cpu, err

    tools = ["plain", "closewait"]
    if not have("valgrind"):
        tools.append("valgrind --track-fds=yes")
    else:
        say("  valgrind: skipped: not installed")
    if not have("strace"):
        tools.append("strace -f -k -e trace=network,close")
    else:
        say("  strace: skipped: not installed")
    times = {t: [] for t in tools}
    cpus = {t: [] for t in tools}
    logs = {}
    for k in range(P["alt_runs"]):  # one run of each tool in turn, so drift spreads evenly
        for name in tools:
            tag = name.split()[0]
            log = os.path.join(WORK, "alt.%s.%d.log" % (tag, k))
            lib, extra, pre, linger = None, None, [], 0
            if name == "closewait":
                # it reports while the program runs: the server lives past the grace period
                lib, linger = LIB, 2000
                extra = {"CLOSEWAIT_GRACE_MS": "1000", "CLOSEWAIT_FORMAT": "json", "CLOSEWAIT_LOG": log}
            elif tag == "valgrind":
                pre = ["valgrind", "--track-fds=yes", "--log-file=" + log]
            elif tag == "strace":
                pre = ["strace", "-f", "-k", "-e", "trace=network,close", "-o", log]
            t, cpu, _ = one(pre, env_with(lib, extra), tag, linger)
            times[name].append(t)
            cpus[name].append(cpu)
            logs[name] = log
    base, base_cpu = med(times["plain"]), med(cpus["plain"])
    for name in tools:
        t, cpu = med(times[name]), med(cpus[name])
        found = verdict_for(name, logs[name], leaks, open_line, eof_line)
        slow, slow_cpu = t / base, cpu / base_cpu
        say("  %-38s wall %7.3f s (x%.2f)  CPU %7.3f s (x%.2f)  %s" % (name, t, slow, cpu, slow_cpu, found))
        row("alternatives", name, "%.3f s wall, %.3f s CPU" % (base, base_cpu),
            "%.3f s wall, %.3f s CPU" % (t, cpu), "x%.2f wall, x%.2f CPU" % (slow, slow_cpu), found)


def verdict_for(name, log, leaks, open_line, eof_line):
    if name == "plain":
        return "(no tool)"
    text = open(log, errors="replace").read() if os.path.exists(log) else ""
    open_ref = "leaky_server.c:%d" % open_line
    if name == "closewait":
        import json
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        lk = [e for e in events if e.get("event") == "leak"]

        def has_line(frames, line):
            return any(fr.get("file", "").endswith("leaky_server.c") and fr.get("line") == line
                       for fr in frames or [])
        at_open = sum(1 for e in lk if has_line(e.get("open_stack"), open_line))
        at_eof = sum(1 for e in lk if has_line(e.get("eof_stack"), eof_line))
        legacy = sum(1 for e in lk if any(fr.get("function") == "serve_legacy" for fr in e.get("eof_stack") or []))
        return ("%d leak reports (%s); open stack at %s in %d, EOF stack at line %d in %d, "
                "through serve_legacy in %d" % (len(lk), "exactly the %d" % leaks if len(lk) == leaks else
                                                 "expected %d" % leaks, open_ref, at_open, eof_line, at_eof, legacy))
    if name.startswith("valgrind"):
        blocks = text.split("Open AF_INET socket")[1:]
        with_line = sum(1 for b in blocks if open_ref in b.split("\n\n")[0])
        return ("%d open AF_INET sockets listed at exit (%d leaked + the listener), %d with the accept "
                "line %s; no CLOSE_WAIT distinction, nothing about the missing close"
                % (len(blocks), leaks, with_line, open_ref))
    if name.startswith("strace"):
        # Pair accepts and closes by descriptor number: the trace holds the answer, the tool
        # does not give it.
        open_fds = {}
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.search(r"\baccept4?\(.*\)\s+=\s+(\d+)", line)
            if m:
                stack = []
                for nxt in lines[i + 1:i + 40]:
                    if nxt.lstrip().startswith(">"):
                        stack.append(nxt)
                    else:
                        break
                open_fds[int(m.group(1))] = stack
                continue
            m = re.search(r"\bclose\((\d+)\)\s+=\s+0", line)
            if m:
                open_fds.pop(int(m.group(1)), None)
        via_accept_conn = sum(1 for s in open_fds.values() if any("accept_conn" in x for x in s))
        return ("%d trace lines, no verdict; pairing accept/close by fd afterwards finds %d never closed, "
                "%d with accept_conn in the stack (function+offset, no file:line)"
                % (len(lines), len(open_fds), via_accept_conn))
    return ""


# ---------------------------------------------------------------------------------------------
# 4. scale: many idle sockets in one process

def proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def pss_kib(pid):
    """Proportional set size: shared pages (the region, libraries) divided among their users, so
    the program and its watcher process can be added up without counting the region twice."""
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return proc_status(pid, "VmRSS")


def thread_cpu(pid, tid):
    """(utime+stime in seconds from stat, on-CPU seconds from schedstat or None)."""
    with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    sched = None
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
            sched = int(f.read().split()[0]) / 1e9
    except OSError:
        pass
    return ticks / hz, sched


def watcher_process(pid):
    """The watcher process started for program pid, or None (thread mode)."""
    found = watchers_of(pid)
    return found[0] if found else None


def scale_top():
    """The most idle sockets one process can hold here: the descriptor limit (raised to the hard
    limit for the children) less 100 for the process's and the library's own descriptors, and
    no more than the ephemeral ports the client can use."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    top, why = soft - 100, "the %d-descriptor limit per process, less 100 for stdio, the listener, " \
        "the log and the library's own descriptors" % soft
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        if hi - lo - 1000 < top:
            top, why = hi - lo - 1000, "the %d ephemeral ports, less 1000" % (hi - lo + 1)
    except (OSError, ValueError):
        pass
    return top, why


def machine_tcp():
    """(in use, TIME_WAIT) TCP sockets of the whole machine (/proc/net/sockstat): the watcher's
    sock_diag dumps walk the kernel's whole established hash, every program's sockets and the
    TIME_WAIT ones included, so its CPU depends on these as much as on N."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                fl = line.split()
                if fl and fl[0] == "TCP:":
                    return int(fl[fl.index("inuse") + 1]), int(fl[fl.index("tw") + 1])
    except (OSError, ValueError):
        pass
    return -1, -1


def scale():
    top, why = scale_top()
    sizes = [n for n in P["scale_sizes"] if n < top] + ([top] if top > 0 else [])
    say("\n== 4. scale: one process holding N idle established sockets, %d of which leak "
        "(CLOSEWAIT_GRACE_MS=1000, so the watcher looks every 250 ms); N stops at %d: %s"
        % (P["scale_leaks"], top, why))
    exe = os.path.join(BIN, "scale")
    k = P["scale_leaks"]
    for n in sizes:
        rss = {}
        for w in (False, True):
            portfile = os.path.join(WORK, "scale.%d.%d.port" % (n, w))
            log = os.path.join(WORK, "scale.%d.log" % n)
            for f in (portfile, log):
                if os.path.exists(f):
                    os.unlink(f)
            extra = {"CLOSEWAIT_GRACE_MS": "1000", "CLOSEWAIT_FORMAT": "json", "CLOSEWAIT_LOG": log}
            srv = subprocess.Popen([exe, "server", portfile, str(n)], env=env_with(LIB if w else None, extra),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
            cli = None
            try:
                if not wait_file(portfile, 30, srv):
                    raise RuntimeError("scale server did not start")
                port = open(portfile).read().strip()
                cli = subprocess.Popen([exe, "client", port, str(n), str(k)], env=env_with(None),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                if cli.stdout.readline().strip() != "connected" or srv.stdout.readline().strip() != "ready":
                    raise RuntimeError("scale: connections not set up")
                time.sleep(1.0)  # the watcher's first looks (inode of each descriptor) happen here
                rss[w] = pss_kib(srv.pid)
                if not w:
                    continue
                # the watcher: its own process (the default; its memory counts too), else a thread
                wpid = watcher_process(srv.pid)
                if wpid is not None:
                    rss[w] += pss_kib(wpid)
                    owner, tid = wpid, wpid
                else:
                    tids = [int(t) for t in os.listdir("/proc/%d/task" % srv.pid) if int(t) != srv.pid]
                    if len(tids) != 1:
                        say("  N=%d: no watcher process, and %d threads besides main; skipped" % (n, len(tids)))
                        continue
                    owner, tid = srv.pid, tids[0]
                a_ticks, a_sched = thread_cpu(owner, tid)
                t0 = time.monotonic()
                time.sleep(P["scale_window"])
                b_ticks, b_sched = thread_cpu(owner, tid)
                span = time.monotonic() - t0
                inuse, tw = machine_tcp()
                cpu_ticks = (b_ticks - a_ticks) / span * 1000.0        # ms of CPU per s
                cpu_sched = (b_sched - a_sched) / span * 1000.0 if a_sched is not None else None
                # leak: the client closes k; time until each report line is in the log
                cli.stdin.write("close\n")
                cli.stdin.flush()
                closed_ns = int(cli.stdout.readline().split()[1])
                seen = []
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and len(seen) < k:
                    cnt = 0
                    if os.path.exists(log):
                        with open(log) as f:
                            cnt = sum(1 for line in f if '"event":"leak"' in line)
                    now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    while len(seen) < cnt:
                        seen.append((now_ns - closed_ns) / 1e6)
                    time.sleep(0.005)
                lat = "%d reports, latency %s ms (min %s, max %s)" % (
                    len(seen), fmt(med(seen), nd=0), fmt(min(seen) if seen else None, nd=0),
                    fmt(max(seen) if seen else None, nd=0))
                say("  N=%-6d watcher CPU %s ms/s (utime+stime; %s ms/s by schedstat) over %.1f s; %s; "
                    "PSS without %d KiB, with %d KiB (program and watcher); TCP sockets on the machine "
                    "(each dump walks them all): %d in use, %d TIME_WAIT"
                    % (n, fmt(cpu_ticks, nd=1), fmt(cpu_sched, nd=2), span, lat, rss[False], rss[True], inuse, tw))
                row("scale", "N=%d idle sockets" % n, "PSS %d KiB" % rss[False], "PSS %d KiB" % rss[True],
                    "%+d KiB" % (rss[True] - rss[False]),
                    "watcher %s ms CPU/s (schedstat %s); %s; machine: %d TCP sockets, %d TIME_WAIT"
                    % (fmt(cpu_ticks), fmt(cpu_sched, nd=2), lat, inuse, tw))
            finally:
                for p in (cli, srv):
                    if p is not None and p.poll() is None:
                        try:
                            p.stdin.write("quit\n")
                            p.stdin.flush()
                        except (BrokenPipeError, OSError):
                            pass
                for p in (cli, srv):
                    if p is not None:
                        try:
                            p.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            p.kill()
                            p.wait()


# ---------------------------------------------------------------------------------------------
# 5. forks: fork-per-connection servers, and the CPU time of every process they involve

def cgroup2_root():
    """Where cgroup v2 is mounted (/sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified
    on a hybrid one), or None."""
    found = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fl = line.split()
                if len(fl) > 2 and fl[2] == "cgroup2":
                    found.append(fl[1].replace("\\040", " "))
    except OSError:
        return None
    if "/sys/fs/cgroup" in found:
        return "/sys/fs/cgroup"
    return found[0] if found else None


def proc_stat_fields(pid):
    with open("/proc/%s/stat" % pid) as f:
        st = f.read()
    return st[st.rindex(")") + 2:].split()


class CpuMeter:
    """CPU time of all the processes a server involves: its whole tree, the orphans it leaves
    (the library's watcher processes are nobody's children), the library's own included.

    The server's launcher is put into a cgroup v2 of its own (preexec), which every process
    it forks, double-forks or orphans stays in; cpu.stat usage_usec before and after counts
    them all, exited ones too.  Where no cgroup v2 is writable: /proc, the tree's
    utime+stime+cutime+cstime at both ends, plus every process named closewait-watcher
    sampled each 10 ms (the CPU after a watcher's last sample is missed)."""
    HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self, name=""):
        self.cg, self.why = None, ""
        root = cgroup2_root()
        if root is None:
            self.why = "no cgroup v2 mounted"
        else:
            path = os.path.join(root, "closewait-bench-%d%s" % (os.getpid(), name))
            try:
                os.makedirs(path, exist_ok=True)
                with open(os.path.join(path, "cpu.stat")) as f:
                    if "usage_usec" not in f.read():
                        raise OSError("no usage_usec in cpu.stat")
                self.cg = path
            except OSError as e:
                self.why = "%s not writable (%s)" % (path, e)
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        if os.environ.get("BENCH_CGROUP", "1") == "0" and self.cg is not None:
            self.close()
            self.cg, self.why = None, "BENCH_CGROUP=0"
        self.watchers, self.stop_ev, self.thread, self.baseline = {}, None, None, False
        self.root, self.settled = None, True

    def describe(self):
        if self.cg:
            return "cgroup v2 %s, cpu.stat usage_usec" % self.cg
        return ("/proc sampling (%s): the server tree's utime+stime+cutime+cstime, closewait-watcher "
                "processes sampled every 10 ms; short-lived watchers are undercounted" % self.why)

    def preexec(self):
        if self.cg is None:
            return None
        procs = os.path.join(self.cg, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        return enter

    # -- cgroup
    def _usage_us(self):
        with open(os.path.join(self.cg, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    return int(v)
        raise RuntimeError("no usage_usec")

    def procs(self):
        if self.cg is None:
            return -1
        with open(os.path.join(self.cg, "cgroup.procs")) as f:
            return sum(1 for line in f if line.strip())

    def settle(self, most, timeout=5.0):
        """Wait until at most `most` processes are left in the cgroup (the connections' children
        and their watchers have exited); True if they were."""
        if self.cg is None:
            return True
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.procs() <= most:
                return True
            time.sleep(0.02)
        return False

    # -- /proc
    def _tree_ticks(self, root):
        kids, vals = {}, {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                fl = proc_stat_fields(d)
            except OSError:
                continue
            kids.setdefault(int(fl[1]), []).append(int(d))
            vals[int(d)] = sum(int(x) for x in fl[11:15])
        total, todo = 0, [root]
        while todo:
            p = todo.pop()
            todo.extend(kids.get(p, []))
            total += vals.get(p, 0)
        return total

    def _sample_watchers(self):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if not f.read().startswith(b"closewait-watcher"):
                        continue
                fl = proc_stat_fields(d)
            except OSError:
                continue
            key = (int(d), int(fl[19]))
            v = int(fl[11]) + int(fl[12])
            if key in self.watchers:
                base = self.watchers[key][0]
            else:  # present at begin(): counted from there; started later: from 0
                base = v if self.baseline else 0
            self.watchers[key] = (base, v)

    def _sampler(self):
        while not self.stop_ev.wait(0.01):
            self._sample_watchers()

    # -- the interval
    def begin(self, root=None):
        """root: the server's pid, or None for a program started after begin() and waited
        for before end() (its CPU then comes from this process's RUSAGE_CHILDREN)."""
        self.root = root
        if self.cg is not None:
            self.n0 = self.procs()
            self.u0 = self._usage_us()
            return
        import resource
        import threading
        self.watchers = {}
        self.baseline = True
        self._sample_watchers()
        self.baseline = False
        if root is None:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.t0 = r.ru_utime + r.ru_stime
        else:
            self.t0 = self._tree_ticks(root) / self.HZ
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._sampler, daemon=True)
        self.thread.start()

    def end(self):
        """Seconds of CPU since begin(), once the processes started meanwhile have gone."""
        if self.cg is not None:
            self.settled = self.settle(self.n0 if self.root is not None else 0)
            return (self._usage_us() - self.u0) / 1e6
        import resource
        time.sleep(0.2)
        self.stop_ev.set()
        self.thread.join()
        self._sample_watchers()
        self.settled = True
        if self.root is None:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            tree = r.ru_utime + r.ru_stime - self.t0
        else:
            tree = self._tree_ticks(self.root) / self.HZ - self.t0
        return tree + sum(v - base for base, v in self.watchers.values()) / self.HZ

    def empty(self, timeout=10.0):
        """After a server stopped: wait for every process of the cgroup to be gone; those left
        (ours, all of them) are killed."""
        if self.cg is None:
            return
        if not self.settle(0, timeout):
            try:
                with open(os.path.join(self.cg, "cgroup.kill"), "w") as f:
                    f.write("1")
            except OSError:
                with open(os.path.join(self.cg, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
            self.settle(0, 5.0)

    def close(self):
        if self.cg is None:
            return
        self.empty()
        try:
            os.rmdir(self.cg)
        except OSError as e:
            say("  could not remove %s: %s" % (self.cg, e))


def forks_processes_created():
    """Processes created on the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0


def ensure_tool(test, pkgs):
    """None when test() holds, after an apt-get install of pkgs if needed; else the reason."""
    if test():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not installed, and not root with apt-get to install %s" % " ".join(pkgs)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("  installing %s (apt-get install -y)" % " ".join(pkgs))
    r = None
    for update in (False, True):
        if update:
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=300)
        r = subprocess.run(["apt-get", "install", "-y", "-qq"] + pkgs, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
        if r.returncode == 0:
            break
    if r.returncode != 0:
        tail = [x for x in r.stdout.strip().splitlines() if x.strip()][-1:] or ["no output"]
        return "apt-get install -y %s failed (exit %d): %s" % (" ".join(pkgs), r.returncode, tail[0][:200])
    return None if test() else "%s installed, but still not found" % " ".join(pkgs)


def pg_bindir():
    def version(p):
        try:
            return float(p.split("/")[-3])
        except ValueError:
            return 0.0
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version)
    return os.path.dirname(found[-1]) if found else None


def as_user(user):
    if shutil.which("setpriv"):
        return ["setpriv", "--reuid=" + user, "--regid=" + user, "--init-groups", "--"]
    return ["runuser", "-u", user, "--"]


def forks_ratio(label, unit, res, budget_rate, budget_cpu_text, cpu_unit):
    """res[w] = list of (rate, cpu_us_per_unit, procs_per_unit, note); prints and records the
    median of the per-pair ratios for the rate and for the CPU per unit."""
    rates = {w: [x[0] for x in res[w]] for w in res}
    cpus = {w: [x[1] for x in res[w]] for w in res}
    procs = {w: [x[2] for x in res[w]] for w in res}
    rr = [b / a for a, b in zip(rates[False], rates[True])]
    cr = [b / a for a, b in zip(cpus[False], cpus[True])]
    r_med, c_med = med(rr), med(cr)
    rate_budget = ""
    if budget_rate is not None:
        rate_budget = "; budget >= %.2fx: %s" % (budget_rate, "within" if r_med >= budget_rate else "OVER")
    cpu_verdict = "within" if c_med <= 1.03 else "OVER"
    say("  %-40s %s without %9.1f  with %9.1f  ratio %.3f (pairs %.3f-%.3f)%s"
        % (label, unit, med(rates[False]), med(rates[True]), r_med, min(rr), max(rr), rate_budget))
    say("  %-40s all processes' CPU, us/%s: without %8.1f  with %8.1f  ratio %.3f (pairs %.3f-%.3f); "
        "%s: %s" % ("", cpu_unit, med(cpus[False]), med(cpus[True]), c_med, min(cr), max(cr),
                    budget_cpu_text, cpu_verdict))
    say("  %-40s processes created per %s (whole machine): without %.2f  with %.2f"
        % ("", cpu_unit, med(procs[False]), med(procs[True])))
    row("forks", "%s (%s)" % (label, unit), "%.1f" % med(rates[False]), "%.1f" % med(rates[True]),
        "x%.3f" % r_med, "%d pairs, spread %.3f-%.3f%s" % (len(rr), min(rr), max(rr), rate_budget))
    row("forks", "%s (CPU us/%s, all processes)" % (label, cpu_unit), "%.1f" % med(cpus[False]),
        "%.1f" % med(cpus[True]), "x%.3f" % c_med,
        "%d pairs, spread %.3f-%.3f; %s: %s; processes per %s %.2f / %.2f"
        % (len(cr), min(cr), max(cr), budget_cpu_text, cpu_verdict, cpu_unit, med(procs[False]),
           med(procs[True])))


def start_server(meter, cmd, env, log, **kw):
    out = open(log, "ab")
    try:
        # A session of its own: Apache's parent, shutting down, sends SIGTERM to its whole
        # process group, which must not be ours.
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=meter.preexec(), start_new_session=True, **kw)
    finally:
        out.close()


def end_server(meter, p, sig=signal.SIGTERM, timeout=30.0):
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    meter.empty()


def measure_load(meter, root, load, units_of):
    """load() -> its result; returns (result, CPU us per unit, processes created per unit)."""
    n0 = forks_processes_created()
    meter.begin(root)
    got = load()
    cpu = meter.end()
    created = forks_processes_created() - n0
    units = max(units_of(got), 1)
    return got, cpu * 1e6 / units, created / units


def baseline_beside(lib):
    """What the servers 'without' run under: nothing, or BENCH_BASELINE's copy beside lib."""
    return os.path.join(os.path.dirname(lib), "baseline.so") if BASELINE is not None else None


def forks():
    rounds = P["forks_rounds"]
    meter = CpuMeter()
    say("\n== 5. forks: fork-per-connection servers; %d rounds each way, alternating (ABBA), a new "
        "server each round; ratio = median of the per-pair ratios, with/without; server on CPU 0, "
        "load on CPU 1; load average now %.2f %.2f %.2f"
        % ((rounds,) + os.getloadavg()))
    say("  CPU of every process involved (server tree, orphans, closewait-watcher): " + meter.describe())
    # run.sh's trap ends us with SIGTERM on ^C: the servers, the cgroup and the directory go too
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    d = tempfile.mkdtemp(prefix="closewait-bench-forks.", dir="/tmp")
    os.chmod(d, 0o755)  # the servers' users (postgres, www-data) read the library and the files
    lib = os.path.join(d, "libclosewait.so")
    shutil.copy(LIB, lib)
    os.chmod(lib, 0o755)
    if BASELINE is not None:
        # A copy too, where the servers' users can read it; every "without" below is this library.
        say("  BENCH_BASELINE: the servers 'without' run under %s: every ratio is this library against it"
            % BASELINE)
        shutil.copy(BASELINE, os.path.join(d, "baseline.so"))
        os.chmod(os.path.join(d, "baseline.so"), 0o755)
    first_row = len(ROWS)
    try:
        only = set(filter(None, os.environ.get("BENCH_FORKS", "").split(",")))
        for name, fn in (("postgres", forks_postgres), ("python", forks_python), ("apache", forks_apache),
                         ("nginx", forks_nginx), ("forkloop", forks_forkloop)):
            if only and name not in only:
                continue
            t0 = time.monotonic()
            try:
                fn(meter, d, lib, rounds)
            except Exception as e:  # one workload that cannot run says so; the others go on
                say("  %s: SKIP after an error: %s" % (name, e))
                row("forks", name + " (not measured)", "-", "-", "-", str(e)[:160])
            say("  (%s took %.0f s; load average %.2f)" % (name, time.monotonic() - t0, os.getloadavg()[0]))
    finally:
        signal.signal(signal.SIGTERM, old_term)
        meter.close()
        if BASELINE is not None:  # no row may be read as against no library at all
            ROWS[first_row:] = [r[:5] + ("'without' is BENCH_BASELINE=%s; %s" % (BASELINE, r[5]),) for r in ROWS[first_row:]]
        if os.environ.get("BENCH_KEEP", "0") == "1":
            say("  forks: directory %s kept" % d)
        else:
            shutil.rmtree(d, ignore_errors=True)


def paired_runs(meters, pids, mode, ports, pairs, rounds):
    """`rounds` runs of `client MODE PORT_A PORT_B PAIRS` (pair, pgpair, httppair: single
    connections alternating between the server without the library, A, and the one with it, B),
    each server's CPU from its own meter.  Returns res[with] = [(rate from the median connection,
    CPU us per connection, processes created per connection, "")] for forks_ratio; B's rate is
    A's over the median of the per-pair time ratios, so the spread is that of the pairs."""
    client = os.path.join(BIN, "client")
    res = {False: [], True: []}
    for _ in range(rounds):
        n0 = forks_processes_created()
        for w in (False, True):
            meters[w].begin(pids[w])
        out = run(on_cpu(1) + [client, mode, str(ports[False]), str(ports[True]), str(pairs)], timeout=600).stdout
        cpu = {w: meters[w].end() for w in (False, True)}
        created = (forks_processes_created() - n0) / (2.0 * pairs)
        m = re.search(r"pair_us ([\d.]+) ([\d.]+) ([\d.]+)", out)
        if m is None:
            raise RuntimeError("client %s printed nothing: %s" % (mode, out[-300:]))
        a_us, ratio = float(m.group(1)), float(m.group(3))
        res[False].append((1e6 / a_us, cpu[False] * 1e6 / pairs, created, ""))
        res[True].append((1e6 / a_us / ratio, cpu[True] * 1e6 / pairs, created, ""))
    return res


def paired_part(meters, procs, ports, mode, warmup, pairs, rounds, verdict):
    """A warm-up of `warmup` pairs not counted, then paired_runs, then forks_ratio(label, unit,
    res, budget_rate, budget_cpu_text, cpu_unit) with verdict's five."""
    client = os.path.join(BIN, "client")
    run(on_cpu(1) + [client, mode, str(ports[False]), str(ports[True]), str(warmup)], timeout=60)
    res = paired_runs(meters, {w: procs[w].pid for w in procs}, mode, ports, pairs, rounds)
    label, unit, budget_rate, budget_cpu_text, cpu_unit = verdict
    forks_ratio(label, unit, res, budget_rate, budget_cpu_text, cpu_unit)


def end_servers(meters, procs):
    """The server with the library first, then the other; the second meter's cgroup goes too."""
    for w in (True, False):
        if w in procs:
            end_server(meters[w], procs[w])
    meters[True].close()


def forks_postgres(meter, d, lib, rounds):
    """Two servers side by side, one with the library, one without, both up for the whole part:
    short pgbench runs alternate between them (ABBA), so that the drift of a shared machine
    (a server's connection rate swings by a third from one second to the next here) falls on both
    alike, and each ratio is of two runs a few seconds apart.  Each server's processes are in a
    cgroup of their own for its CPU."""
    secs, pairs = P["pg_seconds"], P["pg_pairs"]
    why = ensure_tool(lambda: pg_bindir() is not None and os.path.exists(os.path.join(pg_bindir(), "pgbench")),
                      ["postgresql"])
    if why is None:
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            why = "no postgres user"
    if why is None and os.geteuid() != 0:
        why = "not root: cannot run the server as the postgres user"
    if why is not None:
        say("  postgres: SKIP: " + why)
        row("forks", "PostgreSQL pgbench (skipped)", "-", "-", "-", why)
        return
    bindir = pg_bindir()
    import pwd
    pw = pwd.getpwnam("postgres")
    pg = os.path.join(d, "pg")
    os.mkdir(pg)
    os.chown(pg, pw.pw_uid, pw.pw_gid)
    as_pg = as_user("postgres")
    pgbench = os.path.join(bindir, "pgbench")
    meters = {False: meter, True: CpuMeter("-with")}
    servers = {}

    def server_cmd(w):
        data = os.path.join(pg, "data-with" if w else "data")
        return data, on_cpu(0) + as_pg + [os.path.join(bindir, "postgres"), "-D", data, "-h", "127.0.0.1", "-p",
                                          str(servers[w]["port"]), "-k", pg, "-c", "autovacuum=off", "-c",
                                          "fsync=off", "-c", "max_connections=50", "-c",
                                          "external_pid_file=" + os.path.join(pg, "with.pid" if w else "without.pid")]

    def conn(w):
        return ["-h", "127.0.0.1", "-p", str(servers[w]["port"]), "-U", "postgres"]

    def ready(w):
        p = servers[w]["proc"]
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError("postgres exited %d; see %s" % (p.returncode, servers[w]["log"]))
            r = subprocess.run([os.path.join(bindir, "pg_isready"), "-q", "-t", "1"] + conn(w)[:4],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres not ready; see " + servers[w]["log"])

    def start(w):
        data, cmd = server_cmd(w)
        servers[w]["proc"] = start_server(meters[w], cmd, env_with(lib if w else baseline_beside(lib)), servers[w]["log"])
        ready(w)
        return cmd

    def pgbench_cmd(w, args, seconds):
        return on_cpu(1) + [pgbench] + conn(w) + ["-S", "-c", "4", "-j", "2", "-T", str(seconds)] + args + ["postgres"]

    def bench(w, args, seconds):
        return pgbench_result(run(pgbench_cmd(w, args, seconds), env=env_with(None), timeout=seconds + 120).stdout)

    def bench_at_once(args, seconds):
        """A pgbench against each server, both at once: what the machine does meanwhile falls on
        both alike.  Returns {w: ((tps, transactions), CPU us per transaction, processes per
        transaction)}."""
        n0 = forks_processes_created()
        for w in (False, True):
            meters[w].begin(servers[w]["proc"].pid)
        ps = {w: subprocess.Popen(pgbench_cmd(w, args, seconds), env=env_with(None), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for w in (False, True)}
        outs = {w: ps[w].communicate(timeout=seconds + 120)[0].decode("utf-8", "replace") for w in ps}
        cpu = {w: meters[w].end() for w in ps}
        created = forks_processes_created() - n0
        got = {}
        for w in ps:
            tps, n = pgbench_result(outs[w])
            got[w] = ((tps, n), cpu[w] * 1e6 / max(n, 1), created / 2.0 / max(n, 1))
        return got

    def pgbench_result(out):
        tps = re.search(r"^tps = ([\d.]+)", out, re.M)
        n = re.search(r"number of transactions actually processed: (\d+)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if tps is None or n is None:
            raise RuntimeError("pgbench printed no tps: " + out[-400:])
        if failed and int(failed.group(1)) > 0:
            raise RuntimeError("pgbench: %s failed transactions" % failed.group(1))
        return float(tps.group(1)), int(n.group(1))

    for w in (False, True):
        servers[w] = {"port": free_port(), "log": os.path.join(pg, "server-with.log" if w else "server.log")}
    try:
        # One database, initialized once and copied: both servers serve the same tables.
        data = server_cmd(False)[0]
        run(as_pg + [os.path.join(bindir, "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync",
                     "--no-locale", "-E", "UTF8"], env=env_with(None), timeout=180)
        start(False)
        run([pgbench] + conn(False) + ["-i", "-q", "-s", "1", "postgres"], env=env_with(None), timeout=300)
        end_server(meters[False], servers[False]["proc"], signal.SIGINT)
        run(["cp", "-a", data, server_cmd(True)[0]])
        cmd = start(False)
        start(True)
        say("  postgres %s, two servers side by side, %d ABBA pairs of %d s runs: %s"
            % (os.path.basename(os.path.dirname(bindir)), pairs, secs, " ".join(cmd)))
        for w in (False, True):
            bench(w, ["-C"], 1)  # warm-up, not counted
        got = {"C": {False: [], True: []}, "P": {False: [], True: []}}
        for key, args in (("C", ["-C"]), ("P", [])):
            for k in range(pairs):
                for w in ((False, True) if k % 2 == 0 else (True, False)):
                    (tps, n), cpu, procs = measure_load(meters[w], servers[w]["proc"].pid,
                                                        lambda: bench(w, args, secs), lambda g: g[1])
                    got[key][w].append((tps, cpu, procs, ""))
        forks_ratio("PostgreSQL pgbench -S -C (new connection)", "tps", got["C"], 0.97, "reference <= 1.03x",
                    "transaction")
        # The same pgbench -S -C against both servers at once, each server's CPU in its cgroup: a
        # reference (the two compete for CPU 0, and each transaction's latency counts as much as
        # its CPU), not the method, which alternates the runs.
        both = {False: [], True: []}
        for k in range(pairs):
            res = bench_at_once(["-C"], secs)
            for w in (False, True):
                (tps, n), cpu, procs = res[w]
                both[w].append((tps, cpu, procs, ""))
        forks_ratio("PostgreSQL pgbench -S -C, both servers at once", "tps", both, None, "reference <= 1.03x",
                    "transaction")
        forks_ratio("PostgreSQL pgbench -S (persistent)", "tps", got["P"], 0.98, "reference <= 1.03x", "transaction")
        # pgbench -S -C's transaction, one at a time, alternating between the two servers
        # (bench/client.c pgpair): the ratio of two transactions a few milliseconds apart.
        res = paired_runs(meters, {w: servers[w]["proc"].pid for w in servers}, "pgpair",
                          {w: servers[w]["port"] for w in servers}, P["pg_txn_pairs"], rounds)
        forks_ratio("PostgreSQL, pgbench -S -C's transaction, %d pairs alternating" % P["pg_txn_pairs"], "tps", res,
                    0.97, "reference <= 1.03x", "transaction")
    finally:
        for w in (True, False):
            if "proc" in servers.get(w, {}):
                end_server(meters[w], servers[w]["proc"], signal.SIGINT)
        meters[True].close()
    library_said(servers[True]["log"])


def library_said(log):
    """The library's own lines in a server's log (a fallback to thread mode, say)."""
    try:
        with open(log, errors="replace") as f:
            lines = [x.strip() for x in f if "closewait:" in x]
    except OSError:
        return
    if lines:
        say("    the library said (%d lines), first: %s" % (len(lines), lines[0][:200]))


def forks_python(meter, d, lib, rounds):
    """Two ForkingTCPServers side by side, one with the library, one without; the client
    alternates single connections between them (A B, B A, ...) and times each one, so that what
    the machine does meanwhile falls on both alike; each server's processes are in a cgroup of
    their own for its CPU.  `rounds` runs of py_pairs pairs; the median of the runs."""
    pairs = P["py_pairs"]
    script = os.path.join(HERE, "forking_echo.py")
    say("  python socketserver.ForkingTCPServer (bench/forking_echo.py), two servers side by side: "
        "client pair PORT_A PORT_B %d (one-line connections alternating between them), %d runs" % (pairs, rounds))
    meters = {False: meter, True: CpuMeter("-with")}
    procs, ports = {}, {}
    try:
        for w in (False, True):
            portfile = os.path.join(d, "py-with.port" if w else "py.port")
            if os.path.exists(portfile):
                os.unlink(portfile)
            log = os.path.join(d, "python-with.log" if w else "python.log")
            procs[w] = start_server(meters[w], on_cpu(0) + [sys.executable, script, portfile], env_with(lib if w else baseline_beside(lib)), log)
            if not wait_file(portfile, 30, procs[w]):
                raise RuntimeError("forking_echo.py did not start; see " + log)
            ports[w] = open(portfile).read().strip()
        paired_part(meters, procs, ports, "pair", 20, pairs, rounds,
                    ("Python ForkingTCPServer, %d pairs of connections" % pairs, "conn/s", 0.97, "reference <= 1.03x",
                     "connection"))
    finally:
        end_servers(meters, procs)
    library_said(os.path.join(d, "python-with.log"))


def start_nginx(meter, nd, lib):
    """An nginx (NGINX_CONF, one process) serving /f512 from directory nd, in meter's cgroup, on
    CPU 0, with the library when lib is not None; returns (process, port) once it listens."""
    conf, port = nginx_config(nd)
    proc = start_server(meter, on_cpu(0) + nginx_cmd(nd, conf), env_with(lib), os.path.join(nd, "stderr.log"))
    if not wait_port(port, 30, proc):
        raise RuntimeError("nginx did not start; see " + os.path.join(nd, "error.log"))
    return proc, port


def forks_nginx(meter, d, lib, rounds):
    """nginx (no fork) in the forks part for its budget there: the CPU of every process involved,
    the library's watcher included, per new connection, at most +3%.  Two nginx side by side, one
    with the library, one without, each in a cgroup of its own; the client alternates single
    Connection: close requests between them."""
    if shutil.which("nginx") is None:
        say("  nginx: SKIP: nginx is not installed")
        row("forks", "nginx (skipped)", "-", "-", "-", "nginx is not installed")
        return
    pairs = P["nginx_pairs"]
    meters = {False: meter, True: CpuMeter("-with")}
    procs, ports = {}, {}
    try:
        for w in (False, True):
            procs[w], ports[w] = start_nginx(meters[w], os.path.join(d, "nginx-with" if w else "nginx"),
                                             lib if w else baseline_beside(lib))
        say("  nginx, two side by side: client httppair PORT_A PORT_B %d (Connection: close, alternating), "
            "%d runs" % (pairs, rounds))
        paired_part(meters, procs, ports, "httppair", 200, pairs, rounds,
                    ("nginx, a new connection per request, pairs alternating", "req/s", None, "budget <= 1.03x",
                     "request"))
    finally:
        end_servers(meters, procs)
    forks_nginx_saturated(meter, d, lib)


def forks_nginx_saturated(meter, d, lib):
    """nginx saturated: wrk -c32 with Connection: close against each of two nginx in turn (ABBA,
    2 s runs), CPU per request from each one's cgroup.  Two instances differ by up to 5% on this
    machine even without the library, and which one is cheaper changes with each start (where
    their memory lands): so each block starts a new pair, the library on one instance and then
    on the other, and the median is over the pairs of every block."""
    if shutil.which("wrk") is None:
        say("  nginx saturated: SKIP: wrk is not installed")
        row("forks", "nginx saturated (skipped)", "-", "-", "-", "wrk is not installed")
        return
    secs, pairs, blocks = (2, 1, 2) if QUICK else (2, 2, 6)
    say("  nginx saturated, two side by side: wrk -t1 -c32 -d%ds 'Connection: close', %d blocks of %d ABBA "
        "pairs, each block two new nginx, the library on one and then on the other" % (secs, blocks, pairs))
    res = {False: [], True: []}
    for block in range(blocks):
        meters = {0: meter, 1: CpuMeter("-other")}
        procs, ports = {}, {}
        try:
            for i in (0, 1):
                with_lib = (i == 1) == (block % 2 == 0)
                procs[i], ports[i] = start_nginx(meters[i], os.path.join(d, "nginx-sat-%d" % i),
                                                 lib if with_lib else baseline_beside(lib))
            lib_on = 1 if block % 2 == 0 else 0

            def one(i):
                meters[i].begin(procs[i].pid)
                out = run(on_cpu(1) + ["wrk", "-t1", "-c32", "-d%ds" % secs, "-H", "Connection: close",
                                       "http://127.0.0.1:%d/f512" % ports[i]], timeout=secs + 60).stdout
                cpu = meters[i].end()
                m = re.search(r"^\s*(\d+) requests in", out, re.M)
                if m is None:
                    raise RuntimeError("wrk printed no count: " + out[-300:])
                n = int(m.group(1))
                res[i == lib_on].append((n / float(secs), cpu * 1e6 / max(n, 1), 0.0, ""))
            for i in (0, 1):  # warm-up, not counted
                run(on_cpu(1) + ["wrk", "-t1", "-c32", "-d1s", "-H", "Connection: close",
                                 "http://127.0.0.1:%d/f512" % ports[i]], timeout=60)
            for k in range(pairs):
                for i in ((0, 1) if k % 2 == 0 else (1, 0)):
                    one(i)
        finally:
            for i in (1, 0):
                if i in procs:
                    end_server(meters[i], procs[i])
            meters[1].close()
    forks_ratio("nginx saturated (wrk -c32, new connection per request), new pairs, roles swapped", "req/s", res, None,
                "budget <= 1.03x", "request")


APACHE_CONF = """ServerRoot "{dir}"
LoadModule mpm_prefork_module {mods}/mod_mpm_prefork.so
LoadModule authz_core_module {mods}/mod_authz_core.so
Listen 127.0.0.1:{port}
ServerName 127.0.0.1
PidFile {dir}/httpd.pid
ErrorLog {dir}/error.log
LogLevel warn
DefaultRuntimeDir {dir}
Mutex file:{dir} default
User {user}
Group {group}
DocumentRoot {dir}/www
<Directory {dir}/www>
    Require all granted
</Directory>
KeepAlive Off
StartServers 8
MinSpareServers 1
MaxSpareServers 8
ServerLimit 8
MaxRequestWorkers 8
MaxConnectionsPerChild 0
"""


def forks_apache(meter, d, lib, rounds):
    nreq = P["ab_requests"]
    why = ensure_tool(lambda: shutil.which("apache2") is not None and shutil.which("ab") is not None and
                      os.path.exists("/usr/lib/apache2/modules/mod_mpm_prefork.so"), ["apache2", "apache2-utils"])
    if why is None and os.geteuid() != 0:
        why = "not root: apache2 switches to its User"
    if why is not None:
        say("  apache: SKIP: " + why)
        row("forks", "Apache prefork (skipped)", "-", "-", "-", why)
        return
    import grp
    import pwd
    user, group = "www-data", "www-data"
    try:
        pwd.getpwnam(user)
        grp.getgrnam(group)
    except KeyError:
        user, group = "nobody", "nogroup"
    def apache_dir(name):
        ad = os.path.join(d, name)
        os.makedirs(os.path.join(ad, "www"))
        with open(os.path.join(ad, "www", "f512"), "wb") as f:
            f.write(bytes((65 + i % 26) for i in range(512)))
        os.chmod(ad, 0o755)
        port = free_port()
        conf = os.path.join(ad, "httpd.conf")
        with open(conf, "w") as f:
            f.write(APACHE_CONF.format(dir=ad, mods="/usr/lib/apache2/modules", port=port, user=user, group=group))
        return ad, port, on_cpu(0) + [shutil.which("apache2"), "-d", ad, "-f", conf, "-DFOREGROUND"]

    ad, port, cmd = apache_dir("apache")
    url = "http://127.0.0.1:%d/f512" % port
    say("  apache prefork (a fixed pool of 8 children, kept: a pool that grows with the load grows by chance, from 12 to 21 "
        "processes in a run, with or without the library): %s; ab -n %d -c 4 %s (a new connection "
        "per request)" % (" ".join(cmd), nreq, url))
    log = os.path.join(ad, "stderr.log")
    res = {False: [], True: []}

    def ab(n):
        out = run(on_cpu(1) + ["ab", "-q", "-n", str(n), "-c", "4", url], timeout=300).stdout
        rps = re.search(r"Requests per second:\s+([\d.]+)", out)
        done = re.search(r"Complete requests:\s+(\d+)", out)
        failed = re.search(r"Failed requests:\s+(\d+)", out)
        non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
        if rps is None or done is None:
            raise RuntimeError("ab printed no rate: " + out[-400:])
        if (failed and int(failed.group(1))) or non2xx:
            raise RuntimeError("ab: failed requests: " + out[-400:])
        return float(rps.group(1)), int(done.group(1))

    def once(w):
        p = start_server(meter, cmd, env_with(lib if w else baseline_beside(lib)), log)
        try:
            if not wait_port(port, 30, p):
                raise RuntimeError("apache2 did not start; see %s/error.log" % ad)
            ab(200)  # warm-up, not counted
            (rps, n), cpu, procs = measure_load(meter, p.pid, lambda: ab(nreq), lambda g: g[1])
            res[w].append((rps, cpu, procs, ""))
        finally:
            end_server(meter, p)
        return None
    alternate(rounds, once)
    forks_ratio("Apache prefork, ab -c 4, new conn/request", "req/s", res, None,
                "reference <= 1.03x", "request")
    library_said(os.path.join(ad, "error.log"))

    # Two side by side, each in a cgroup of its own, single connections alternating between them
    # (as for nginx): a server's start, its watchers' first looks and the machine's swings fall
    # on both alike, which the rounds above, a new server each, cannot promise.
    meters = {False: meter, True: CpuMeter("-with")}
    procs, ports = {}, {}
    try:
        for w in (False, True):
            pad, ports[w], pcmd = apache_dir("apache-pair-with" if w else "apache-pair")
            procs[w] = start_server(meters[w], pcmd, env_with(lib if w else baseline_beside(lib)), os.path.join(pad, "stderr.log"))
            if not wait_port(ports[w], 30, procs[w]):
                raise RuntimeError("apache2 did not start; see %s/error.log" % pad)
        say("  apache prefork, two side by side: client httppair PORT_A PORT_B %d (Connection: close, "
            "alternating), %d runs" % (P["nginx_pairs"], rounds))
        paired_part(meters, procs, ports, "httppair", 200, P["nginx_pairs"], rounds,
                    ("Apache prefork, a new connection per request, pairs alternating", "req/s", None,
                     "reference <= 1.03x", "request"))
    finally:
        end_servers(meters, procs)


def forks_forkloop(meter, d, lib, rounds):
    n = P["forkloop_n"]
    exe = os.path.join(BIN, "forkloop")
    say("  fork cost: forkloop %d (one listener, 10 accepted connections held; fork + _exit(0) + waitpid)" % n)
    res = {False: [], True: []}

    def once(w):
        def load():
            p = subprocess.Popen(on_cpu(0) + [exe, str(n)], env=env_with(lib if w else baseline_beside(lib)),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=meter.preexec())
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                raise RuntimeError("forkloop: exit %d: %s" % (p.returncode, err.strip()[-300:]))
            f = out.split()
            return float(f[1]), float(f[2]), float(f[4]) if len(f) > 4 else float("nan")
        (mean, median, faults), cpu, procs = measure_load(meter, None, load, lambda g: n)
        meter.empty()
        res[w].append((mean, median, cpu, procs, faults))
        return None
    alternate(rounds, once)
    mean = {w: med([x[0] for x in res[w]]) for w in res}
    median = {w: med([x[1] for x in res[w]]) for w in res}
    cpu = {w: med([x[2] for x in res[w]]) for w in res}
    procs = {w: med([x[3] for x in res[w]]) for w in res}
    faults = {w: med([x[4] for x in res[w]]) for w in res}
    added = [b[0] - a[0] for a, b in zip(res[False], res[True])]
    ratio = [b[0] / a[0] for a, b in zip(res[False], res[True])]
    cr = [b[2] / a[2] for a, b in zip(res[False], res[True])]
    verdict = "within" if med(added) <= 30.0 else "OVER"
    say("  %-40s us/fork (mean of %d) without %7.1f  with %7.1f  added %+.1f us (pairs %+.1f..%+.1f), "
        "ratio %.2f; budget at most +30 us: %s"
        % ("fork()+_exit+waitpid", n, mean[False], mean[True], med(added), min(added), max(added),
           med(ratio), verdict))
    say("  %-40s single forks' median: without %.1f  with %.1f us" % ("", median[False], median[True]))
    say("  %-40s page faults per fork and exit (program and child): without %.1f  with %.1f"
        % ("", faults[False], faults[True]))
    say("  %-40s all processes' CPU, us/fork: without %.1f  with %.1f  ratio %.3f (pairs %.3f-%.3f); "
        "processes created per fork (whole machine) %.2f / %.2f"
        % ("", cpu[False], cpu[True], med(cr), min(cr), max(cr), procs[False], procs[True]))
    row("forks", "fork()+_exit+waitpid, 10 conns held (us/fork)", "%.1f" % mean[False], "%.1f" % mean[True],
        "%+.1f us (x%.2f)" % (med(added), med(ratio)),
        "%d pairs; budget +30 us: %s; single forks' median %.1f / %.1f" % (len(added), verdict, median[False],
                                                                          median[True]))
    row("forks", "fork()+_exit+waitpid (CPU us/fork, all processes)", "%.1f" % cpu[False], "%.1f" % cpu[True],
        "x%.3f" % med(cr), "processes per fork %.2f / %.2f" % (procs[False], procs[True]))
    row("forks", "fork()+_exit+waitpid (page faults per fork)", "%.1f" % faults[False], "%.1f" % faults[True],
        "%+.1f" % (faults[True] - faults[False]), "the program and its child")


# ---------------------------------------------------------------------------------------------

def table():
    head = ("part", "what", "without", "with closewait", "change", "notes")
    rows = [head] + [tuple(str(c) for c in r) for r in ROWS]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("| " + " | ".join(r[j].ljust(w[j]) for j in range(5)) + " | " + r[5] + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w[j] + 2) for j in range(5)) + "|---|")
    return "\n".join(lines)


def main():
    t_start = time.monotonic()
    say("closewait benchmarks%s: %s cores, kernel %s, %s" % (
        " (BENCH_QUICK)" if QUICK else "", os.cpu_count(), os.uname().release, cpu_model()))
    parts = [("micro", micro), ("fork", fork_cost), ("callgrind", micro_callgrind), ("macro", macro),
             ("langs", langs), ("nginxcg", nginx_callgrind), ("alt", alternatives), ("scale", scale), ("forks", forks)]
    for name, fn in parts:
        if not want(name):
            continue
        t0 = time.monotonic()
        try:
            fn()
        except Exception as e:  # a part that cannot run says so; the others go on
            say("  %s: skipped after an error: %s" % (name, e))
            row(name, "(not measured)", "-", "-", "-", str(e)[:120])
        say("  (%s took %.0f s)" % (name, time.monotonic() - t0))
    say("\n== summary (%.0f s in all)\n" % (time.monotonic() - t_start))
    t = table()
    say(t)
    if os.environ.get("BENCH_OUT"):
        with open(os.environ["BENCH_OUT"], "w") as f:
            f.write(t + "\n")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
