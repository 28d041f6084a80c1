#!/usr/bin/env python3
"""The closewait benchmark suite (make bench; BENCH_QUICK=1 for a short run).

Run by bench/run.sh, which builds the programs of bench/ into a temporary directory and passes:
    bench.py BIN_DIR LIBRARY WORK_DIR
BIN_DIR holds micro, client, epoll_server, leaky_server, scale and idlethread.so; LIBRARY is a
copy of libclosewait.so taken at the start (so a rebuild during the run changes nothing).

Every part prints its figures as it goes, and one table at the end.  Nothing here fails on a
time: figures are printed, budgets are compared and said to be met or not.  A part whose tool is
missing prints one "skipped" line.

Environment: BENCH_QUICK=1 (short run), BENCH_ONLY=micro,fork,callgrind,macro,nginxcg,alt,scale (a
subset), BENCH_OUT=FILE (also write the final table there).
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
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


def nginx_setup():
    d = os.path.join(WORK, "nginx")
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "f512"), "wb") as f:
        f.write(bytes((65 + i % 26) for i in range(512)))
    port = free_port()
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port))
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
                    "PSS without %d KiB, with %d KiB (program and watcher)"
                    % (n, fmt(cpu_ticks, nd=1), fmt(cpu_sched, nd=2), span, lat, rss[False], rss[True]))
                row("scale", "N=%d idle sockets" % n, "PSS %d KiB" % rss[False], "PSS %d KiB" % rss[True],
                    "%+d KiB" % (rss[True] - rss[False]),
                    "watcher %s ms CPU/s (schedstat %s); %s" % (fmt(cpu_ticks), fmt(cpu_sched, nd=2), lat))
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
             ("nginxcg", nginx_callgrind), ("alt", alternatives), ("scale", scale)]
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
