"""closewait-report: The report model (the JSON output; Markdown and text are rendered from it)."""

import collections
import fnmatch
import json
import os
import shlex

from .constants import FORMAT_VERSION, KNOWN_EVENTS, MAX_TS_MS, PROG, REASON_HINTS, SYSTEM_MODULE_GLOBS
from .chart import growth
from .values import fmt_time

# The report model (the JSON output; Markdown and text are rendered from it)

def proc_label(host, pid):
    return "%d@%s" % (pid, host) if host else "%d" % pid


def top_frame(frames):
    """The first frame in the program's own code (not libc, the loader, or closewait)."""
    if not frames:
        return None
    for fr in frames:
        m = fr.get("module")
        base = os.path.basename(m) if m else ""
        if base and any(fnmatch.fnmatchcase(base, g) for g in SYSTEM_MODULE_GLOBS):
            continue
        fn = fr.get("function") or ""
        if not m and fn.startswith(("closewait_", "__closewait")):
            continue
        return fr
    return frames[0]


def lang_top_frame(frames):
    """The first frame of the program's own code in a language stack, else its first."""
    if not frames:
        return None
    for fr in frames:
        if fr.get("program"):
            return fr
    return frames[0]


def lang_frame_json(fr, index):
    return {"index": index, "function": fr.get("function"), "file": fr.get("file"),
            "line": fr.get("line"), "program": bool(fr.get("program"))}


def lang_frame_line(fr, index):
    """`#0 function at file:line` (and `(library)` for the runtime's or a library's code)."""
    parts = ["#%d" % index, fr.get("function") or "??"]
    if fr.get("file"):
        parts.append("at %s%s" % (fr["file"], ":%d" % fr["line"] if fr.get("line") else ""))
    if not fr.get("program"):
        parts.append("(library)")
    return " ".join(parts)


def frame_json(fr, index):
    return {
        "index": index,
        "function": fr.get("function"),
        "file": fr.get("file"),
        "line": fr.get("line"),
        "module": fr.get("module"),
        "offset": None if fr.get("offset") is None else "0x%x" % fr["offset"],
        "pc": None if fr.get("pc") is None else "0x%x" % fr["pc"],
        "build_id": fr.get("build_id"),
        "inlined": bool(fr.get("inlined")),
        "tail_call": bool(fr.get("tail_call")),
        "symbolized": bool(fr.get("symbolized")),
    }


def short_frame(fr):
    """`function (file:line)` for tables and headings."""
    if fr is None:
        return "(stack unknown)"
    fn = fr.get("function")
    if fn is None:
        if fr.get("module") and fr.get("offset") is not None:
            fn = "%s+0x%x" % (os.path.basename(fr["module"]), fr["offset"])
        elif fr.get("pc") is not None:
            fn = "0x%x" % fr["pc"]
        else:
            fn = "??"
    if fr.get("file"):
        loc = os.path.basename(fr["file"])
        if fr.get("line"):
            loc += ":%d" % fr["line"]
        return "%s (%s)" % (fn, loc)
    return fn


def frame_line(fr, index):
    """`#0 function at file:line (module+0xoff)` for a frame as in the JSON report."""
    parts = ["#%d" % index, fr.get("function") or "??"]
    if fr.get("file"):
        parts.append("at %s%s" % (fr["file"], ":%d" % fr["line"] if fr.get("line") else ""))
    if fr.get("module") and fr.get("offset") is not None:
        parts.append("(%s+%s)" % (fr["module"], fr["offset"]))
    elif fr.get("module"):
        parts.append("(%s)" % fr["module"])
    elif fr.get("pc") is not None:
        parts.append("(%s)" % fr["pc"])
    if fr.get("inlined"):
        parts.append("[inlined]")
    if fr.get("tail_call"):
        parts.append("[tail call]")
    return " ".join(parts)


def reproduce_hint(f):
    exe = f.exes.most_common(1)[0][0] if f.exes else "<program>"
    if f.grace_ms is not None:          # what the process ran with (its start event)
        grace = f.grace_ms
    else:                               # the leaks were reported at least this late
        grace = f.min_since_fin if f.min_since_fin is not None else 1000
        grace = max(100, min(10000, grace // 100 * 100))
    cmd = ("LD_PRELOAD=libclosewait.so CLOSEWAIT_GRACE_MS=%d CLOSEWAIT_FORMAT=json "
           "CLOSEWAIT_LOG=/tmp/closewait.%%p.log %s"
           % (grace, shlex.quote(exe) if exe != "<program>" else exe))
    reason = f.reasons.most_common(1)[0][0] if f.reasons else None
    hint = REASON_HINTS.get(reason, "make the peer close its side first")
    peer = " (as %s did)" % f.peers[0] if f.peers else ""
    return cmd, "%s, then %s%s; the socket is reported after %d ms." % (
        cmd, hint, peer, grace)


def build_report(findings, col, supp, symbolized_with):
    listed, suppressed = [], []
    for f in findings:
        (suppressed if f.suppressed_by else listed).append(f)
    order = lambda f: (-f.count_open, -f.count_ever,
                       f.first_ts if f.first_ts is not None else MAX_TS_MS, f.stack_id)
    listed.sort(key=order)
    suppressed.sort(key=order)
    out_findings = []
    hosts, procs, progs = set(), set(), collections.Counter()
    first, last = None, None
    for rank, f in enumerate(listed, 1):
        frames = f.frames or []
        top = lang_top_frame(f.lang_frames) or top_frame(frames)
        cmd, hint = reproduce_hint(f)
        procs_sorted = sorted(f.procs, key=lambda hp: (hp[0] or "", hp[1]))
        f_hosts = sorted({h for h, _ in f.procs if h})
        hosts.update(f_hosts)
        procs.update(f.procs)
        progs.update(f.exes)
        if f.first_ts is not None:
            first = f.first_ts if first is None else min(first, f.first_ts)
            last = f.last_ts if last is None else max(last, f.last_ts)
        out_findings.append({
            "rank": rank,
            "stack_id": f.stack_id,
            "count_open": f.count_open,
            "count_ever": f.count_ever,
            "closed_late": f.closed_late,
            "longest_held_ms": f.max_held_ms,
            "growing": bool(f.growing_procs),
            "growth": growth(f.timeline) if f.growing_procs else None,
            "growing_in": [{"host": h, "pid": p} for h, p in
                           sorted(set(f.growing_procs), key=lambda hp: (hp[0] or "", hp[1]))],
            "reasons": dict(f.reasons.most_common()),
            "opened_by": dict(f.opened_by.most_common()),
            "eof_by": dict(f.eof_by.most_common()),
            "states": dict(f.states.most_common()),
            "example_peers": list(f.peers),
            "first_seen": fmt_time(f.first_ts),
            "last_seen": fmt_time(f.last_ts),
            "oldest_since_fin_ms": f.max_since_fin,
            "processes": [{"host": h, "pid": p} for h, p in procs_sorted],
            "process_instances": f.instances,
            "pids": sorted({p for _, p in f.procs}),
            "hosts": f_hosts,
            "programs": [e for e, _ in f.exes.most_common()],
            "top_frame": short_frame(top) if top is not None else None,
            "open_stack": [frame_json(fr, i) for i, fr in enumerate(frames)],
            "eof_stack": [frame_json(fr, i) for i, fr in enumerate(f.eof_frames or [])],
            "stack_known": bool(frames),
            "owners": dict(f.owners.most_common()),
            "callbacks": dict(f.callbacks.most_common()),
            "registered_by": dict(f.registered_by.most_common()),
            "registration_stack": [frame_json(fr, i) for i, fr in enumerate(f.reg_frames or [])],
            "blocked_fd_open_stack": [frame_json(fr, i) for i, fr in enumerate(f.blocked_open_frames or [])],
            "reproduce": hint,
            "reproduce_command": cmd,
        })
        if f.lang_frames or f.lang_eof_frames:
            # the program's own stack in its language: only when there is one
            out_findings[-1].update({
                "lang": f.lang,
                "lang_open_stack": [lang_frame_json(fr, i) for i, fr in enumerate(f.lang_frames or [])],
                "lang_eof_stack": [lang_frame_json(fr, i) for i, fr in enumerate(f.lang_eof_frames or [])],
            })
    used = collections.defaultdict(lambda: [0, 0, 0])
    for f in suppressed:
        u = used[f.suppressed_by]
        u[0] += 1
        u[1] += f.count_open
        u[2] += f.count_ever
    inp = col.inputs
    report = {
        "tool": PROG,
        "format_version": FORMAT_VERSION,
        "summary": {
            "leaks_open": sum(f["count_open"] for f in out_findings),
            "leaks_total": sum(f["count_ever"] for f in out_findings),
            "findings": len(out_findings),
            "open_sites": sum(1 for f in out_findings if f["count_open"] > 0),
            "growing_findings": sum(1 for f in out_findings if f["growing"]),
            "suppressed_findings": len(suppressed),
            "suppressed_leaks_open": sum(f.count_open for f in suppressed),
            "suppressed_leaks_total": sum(f.count_ever for f in suppressed),
            "suppressed_in_process": col.suppressed_in_process,
            "processes": len(procs),
            "hosts": sorted(hosts),
            "programs": [e for e, _ in progs.most_common()],
            "first_seen": fmt_time(first),
            "last_seen": fmt_time(last),
        },
        "findings": out_findings,
        "suppressions_used": [{"pattern": k, "findings": v[0], "leaks_open": v[1],
                               "leaks_total": v[2]} for k, v in sorted(used.items())],
        "inputs": {
            "files": list(inp.files),
            "lines": inp.lines,
            "events": {k: inp.events.get(k, 0) for k in KNOWN_EVENTS},
            "skipped": {"not_json": inp.not_json, "not_closewait_event": inp.not_event,
                        "too_long": inp.oversize},
            "duplicates": inp.duplicates,
            "unmatched_closed_late": inp.unmatched_closed_late,
            "read_errors": list(inp.read_errors),
            "symbolizer": symbolized_with,
        },
    }
    return report
