"""closewait-report: The report as Markdown, text or JSON."""

import json
import re

from .chart import mermaid
from .constants import MAX_LISTED
from .report import frame_line, lang_frame_line, proc_label

# Renderers

def md_code(s, table=False):
    """s as a Markdown code span (safe for any content); pipes escaped inside tables."""
    s = str(s)
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if (s.startswith("`") or s.endswith("`") or longest) else ""
    out = "%s%s%s%s%s" % (fence, pad, s, pad, fence)
    if table:
        out = out.replace("|", "\\|")
    return out


def counts_text(d, sep=", ", mark="x"):
    return sep.join("%s %s%d" % (k, mark, v) for k, v in d.items())


def limited(items, n=MAX_LISTED):
    items = list(items)
    if len(items) > n:
        return items[:n], len(items) - n
    return items, 0


def procs_text(f, code):
    items, more = limited(f["processes"])
    s = ", ".join(code(proc_label(p["host"], p["pid"])) for p in items)
    if more:
        s += " and %d more" % more
    if f["process_instances"] > len(f["processes"]):
        s += " (%d process instances: pids reused)" % f["process_instances"]
    return s


def ms_text(ms):
    if ms is None:
        return "unknown"
    if ms >= 1000:
        return "%d ms (%.1f s)" % (ms, ms / 1000.0)
    return "%d ms" % ms


def render_markdown(r):
    s = r["summary"]
    L = []
    if s["leaks_open"] or s["findings"]:
        L.append("# closewait: %d socket(s) left in CLOSE_WAIT from %d code site(s)"
                 % (s["leaks_open"], s["open_sites"]))
    else:
        L.append("# closewait: no leaked sockets")
    L.append("")
    line = ("%d leaked socket(s) still open, %d ever, from %d finding(s)"
            % (s["leaks_open"], s["leaks_total"], s["findings"]))
    if s["processes"]:
        line += " in %d process(es)" % s["processes"]
    if s["hosts"]:
        line += " on host(s) %s" % ", ".join(md_code(h) for h in s["hosts"])
    if s["first_seen"]:
        line += ", first seen %s, last seen %s" % (s["first_seen"], s["last_seen"])
    L.append(line + ".")
    if s["programs"]:
        progs, more = limited(s["programs"], 10)
        L.append("Program(s): %s%s." % (", ".join(md_code(p) for p in progs),
                                        " and %d more" % more if more else ""))
    if s["growing_findings"]:
        L.append("**%d finding(s) growing.**" % s["growing_findings"])
    if s["suppressed_findings"]:
        L.append("%d finding(s) suppressed (%d open / %d ever)."
                 % (s["suppressed_findings"], s["suppressed_leaks_open"],
                    s["suppressed_leaks_total"]))
    if s["suppressed_in_process"]:
        L.append("%d leak(s) suppressed in the processes themselves (CLOSEWAIT_SUPPRESSIONS)."
                 % s["suppressed_in_process"])
    L.append("")
    if r["findings"]:
        L.append("| # | open / ever | growing | reason(s) | top frame | program(s) |")
        L.append("|---:|---:|:---:|---|---|---|")
        for f in r["findings"]:
            progs, more = limited(f["programs"], 3)
            L.append("| %d | %d / %d | %s | %s | %s | %s |" % (
                f["rank"], f["count_open"], f["count_ever"],
                "**yes**" if f["growing"] else "no",
                ", ".join(md_code(k, True) for k in f["reasons"]) or "-",
                md_code(f["top_frame"], True) if f["top_frame"] else "(stack unknown)",
                (", ".join(md_code(p, True) for p in progs) + (" +%d" % more if more else ""))
                or "-"))
        L.append("")
    for f in r["findings"]:
        L.append("## %d. %s: %d open / %d ever" % (
            f["rank"], md_code(f["top_frame"]) if f["top_frame"] else "stack unknown",
            f["count_open"], f["count_ever"]))
        L.append("")
        L.append("- stack_id: %s" % md_code(f["stack_id"]))
        extra = ""
        if f["closed_late"]:
            extra = " (%d closed late" % f["closed_late"]
            if f["longest_held_ms"] is not None:
                extra += ", longest held %s" % ms_text(f["longest_held_ms"])
            extra += ")"
        L.append("- open / ever: %d / %d%s" % (f["count_open"], f["count_ever"], extra))
        g = f.get("growth")
        if f["growing"]:
            L.append("- growing: **yes**%s, in %s" % (
                ", **%s** (from %d to %d held)" % (g["text"], g["from_held"], g["to_held"]) if g else "",
                ", ".join(md_code(proc_label(p["host"], p["pid"])) for p in f["growing_in"][:MAX_LISTED])))
        else:
            L.append("- growing: no")
        if f["reasons"]:
            L.append("- reason(s): %s" % ", ".join(
                "%s x%d" % (md_code(k), v) for k, v in f["reasons"].items()))
        if f["opened_by"]:
            L.append("- opened by: %s" % ", ".join(
                "%s x%d" % (md_code(k), v) for k, v in f["opened_by"].items()))
        if f["eof_by"]:
            L.append("- EOF read by: %s" % ", ".join(
                "%s x%d" % (md_code(k), v) for k, v in f["eof_by"].items()))
        for what, label in (("owners", "owner"), ("callbacks", "event-loop callbacks"),
                             ("registered_by", "registered by")):
            if f.get(what):
                L.append("- %s: %s" % (label, ", ".join(
                    "%s x%d" % (md_code(k), v) for k, v in f[what].items())))
        if f["states"]:
            L.append("- TCP state(s): %s" % ", ".join(
                "%s x%d" % (md_code(k), v) for k, v in f["states"].items()))
        L.append("- oldest since FIN: %s" % ms_text(f["oldest_since_fin_ms"]))
        L.append("- first seen: %s, last seen: %s" % (f["first_seen"] or "unknown",
                                                      f["last_seen"] or "unknown"))
        L.append("- process(es): %s" % (procs_text(f, md_code) or "unknown"))
        if f["hosts"]:
            L.append("- host(s): %s" % ", ".join(md_code(h) for h in f["hosts"][:MAX_LISTED]))
        progs, more = limited(f["programs"])
        L.append("- program(s): %s" % ((", ".join(md_code(p) for p in progs)
                                       + (" and %d more" % more if more else "")) or "unknown"))
        if f["example_peers"]:
            L.append("- example peers: %s" % ", ".join(md_code(p) for p in f["example_peers"]))
        L.append("")
        if g and len(g["points"]) >= 2:
            L.append("Sockets held over time, every process together (%s):" % g["text"])
            L.append("")
            L.extend(mermaid(f["top_frame"] or f["stack_id"], g["points"], g))
            L.append("")
        if f.get("lang_open_stack"):
            L.append("Opened at, in %s:" % (f.get("lang") or "the program's language"))
            L.append("")
            L.append("```text")
            for fr in f["lang_open_stack"]:
                L.append(lang_frame_line(fr, fr["index"]))
            L.append("```")
            L.append("")
        if f.get("lang_eof_stack"):
            L.append("EOF reached the program at, in %s:" % (f.get("lang") or "the program's language"))
            L.append("")
            L.append("```text")
            for fr in f["lang_eof_stack"]:
                L.append(lang_frame_line(fr, fr["index"]))
            L.append("```")
            L.append("")
        if f["open_stack"]:
            L.append("Opened at:")
            L.append("")
            L.append("```text")
            for fr in f["open_stack"]:
                L.append(frame_line(fr, fr["index"]))
            L.append("```")
        else:
            L.append("Opened at: stack unknown (only seen in a summary event).")
        L.append("")
        if f["eof_stack"]:
            L.append("EOF read at:")
            L.append("")
            L.append("```text")
            for fr in f["eof_stack"]:
                L.append(frame_line(fr, fr["index"]))
            L.append("```")
            L.append("")
        for key, title in (("registration_stack", "Callbacks registered at:"),
                           ("blocked_fd_open_stack", "The owner waits on a socket opened at:")):
            if f.get(key):
                L.append(title)
                L.append("")
                L.append("```text")
                for fr in f[key]:
                    L.append(frame_line(fr, fr["index"]))
                L.append("```")
                L.append("")
        L.append("How to reproduce: %s" % md_code(f["reproduce_command"]) + ", then "
                 + f["reproduce"].split(", then ", 1)[1])
        L.append("")
    if r["suppressions_used"]:
        L.append("## Suppressed")
        L.append("")
        for u in r["suppressions_used"]:
            L.append("- %s: %d finding(s), %d open / %d ever" % (
                md_code(u["pattern"]), u["findings"], u["leaks_open"], u["leaks_total"]))
        L.append("")
    L.append("---")
    L.append("")
    L.append(inputs_text(r["inputs"], md_code))
    return "\n".join(L) + "\n"


def inputs_text(inp, code=lambda x: x):
    sk = inp["skipped"]
    skipped = sk["not_json"] + sk["not_closewait_event"]
    files, more = limited(inp["files"], 20)
    s = "Inputs: %d file(s) (%s%s), %d line(s), %d event(s) (%s)" % (
        len(inp["files"]), ", ".join(code(x) for x in files),
        " and %d more" % more if more else "", inp["lines"],
        sum(inp["events"].values()),
        ", ".join("%d %s" % (v, k) for k, v in inp["events"].items()))
    if skipped:
        s += ", %d skipped (%d not JSON, %d not closewait events)" % (
            skipped, sk["not_json"], sk["not_closewait_event"])
    if inp["duplicates"]:
        s += ", %d duplicate(s) ignored" % inp["duplicates"]
    if inp["unmatched_closed_late"]:
        s += ", %d closed_late without a matching leak" % inp["unmatched_closed_late"]
    if inp["read_errors"]:
        s += ", %d read error(s)" % len(inp["read_errors"])
    if inp["symbolizer"]:
        s += ", symbolized with %s" % inp["symbolizer"]
    return s + "."


def render_text(r):
    s = r["summary"]
    L = []
    if r["findings"]:
        L.append("=" * 65)
        L.append("==closewait==ERROR: LeakSanitizer-style report: %d socket(s) left in "
                 "CLOSE_WAIT" % s["leaks_open"])
        L.append("")
    for f in r["findings"]:
        grow = ", growing" if f["growing"] else ""
        L.append("Leak of %d socket(s) still open (%d ever%s) in CLOSE_WAIT, "
                 "stack_id %s, opened from:" % (f["count_open"], f["count_ever"], grow,
                                                f["stack_id"]))
        if f.get("lang_open_stack"):
            L.append("  in %s:" % (f.get("lang") or "the program's language"))
            for fr in f["lang_open_stack"]:
                L.append("    " + lang_frame_line(fr, fr["index"]))
            if f.get("lang_eof_stack"):
                L.append("  EOF reached the program at:")
                for fr in f["lang_eof_stack"]:
                    L.append("    " + lang_frame_line(fr, fr["index"]))
            if f["open_stack"]:
                L.append("  native:")
        if f["open_stack"]:
            for fr in f["open_stack"]:
                L.append("    " + frame_line(fr, fr["index"]))
        else:
            L.append("    (stack unknown: only seen in a summary event)")
        if f["eof_stack"]:
            L.append("  EOF read at:")
            for fr in f["eof_stack"]:
                L.append("    " + frame_line(fr, fr["index"]))
        if f.get("registration_stack"):
            L.append("  Callbacks registered at:")
            for fr in f["registration_stack"]:
                L.append("    " + frame_line(fr, fr["index"]))
        details = []
        for what, label in (("callbacks", "event-loop callbacks"), ("registered_by", "registered by"),
                            ("owners", "owner")):
            if f.get(what):
                details.append("%s: %s" % (label, counts_text(f[what])))
        if f["reasons"]:
            details.append("reason(s): " + counts_text(f["reasons"]))
        if f["opened_by"]:
            details.append("opened by: " + counts_text(f["opened_by"]))
        if f["closed_late"]:
            details.append("closed late: %d" % f["closed_late"])
        details.append("oldest since FIN: " + ms_text(f["oldest_since_fin_ms"]))
        if f.get("growth"):
            g = f["growth"]
            details.append("growth: %s (from %d to %d held)" % (g["text"], g["from_held"], g["to_held"]))
        for d in details:
            L.append("  " + d)
        L.append("  process(es): " + (procs_text(f, str) or "unknown"))
        progs, more = limited(f["programs"])
        L.append("  program(s): " + (", ".join(progs) + (" and %d more" % more if more else "")
                                     or "unknown"))
        if f["example_peers"]:
            L.append("  example peers: " + ", ".join(f["example_peers"]))
        L.append("  first seen: %s, last seen: %s" % (f["first_seen"] or "unknown",
                                                      f["last_seen"] or "unknown"))
        L.append("  reproduce: " + f["reproduce"])
        L.append("")
    if r["suppressions_used"]:
        L.append("-" * 65)
        L.append("Suppressions used:")
        L.append("  count open ever pattern")
        for u in r["suppressions_used"]:
            L.append("  %5d %4d %4d %s" % (u["findings"], u["leaks_open"], u["leaks_total"],
                                           u["pattern"]))
        L.append("-" * 65)
        L.append("")
    if s["suppressed_in_process"]:
        L.append("%d leak(s) suppressed in the processes themselves (CLOSEWAIT_SUPPRESSIONS)."
                 % s["suppressed_in_process"])
    L.append(inputs_text(r["inputs"]))
    L.append("")
    L.append("SUMMARY: closewait: %d leaked socket(s) from %d open site(s)"
             % (s["leaks_open"], s["open_sites"]))
    return "\n".join(L) + "\n"


def render_json(r):
    return json.dumps(r, indent=2, ensure_ascii=False) + "\n"
