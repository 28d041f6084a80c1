"""closewait-report: The command line."""

import argparse
import os
import re
import sys

from .constants import FORMAT_VERSION, PROG
from .values import clean_str
from .collect import Collector
from .merge import merge
from .symbolize import Symbolizer
from .suppress import Suppressions
from .report import build_report
from .render import render_json, render_markdown, render_text
from .chart import svg

# Command line

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Merge closewait JSON Lines logs (CLOSEWAIT_FORMAT=json) into one report: "
                    "leaked sockets grouped by the stack that opened them.",
        epilog="Logs may be rotated (x.log.1) and gzip/xz/bzip2-compressed; '-' reads stdin. "
               "Exit status: 0 report written, 1 --fail-on-leak and an unsuppressed finding, "
               "2 usage error. See docs/report.md.")
    p.add_argument("--format", choices=("markdown", "json", "text"), default="markdown",
                   help="report format (default: markdown)")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE "
                   "(default: stdout)")
    p.add_argument("--symbolize", action=argparse.BooleanOptionalAction, default=True,
                   help="name frames that carry only module+offset with eu-addr2line or "
                        "addr2line (default: on)")
    p.add_argument("--debug-dir", action="append", default=[], metavar="DIR",
                   help="also look for separate debug files here (repeatable); "
                        "/usr/lib/debug is always searched")
    p.add_argument("--suppressions", action="append", default=[], metavar="FILE",
                   help="patterns of findings to leave out (fun:GLOB, mod:GLOB, src:GLOB, "
                        "or a bare function GLOB); repeatable")
    p.add_argument("--svg", metavar="DIR",
                   help="also write, for each growing finding, an SVG chart of the sockets it "
                        "holds over time: DIR/finding-RANK-STACKID.svg (DIR is created)")
    p.add_argument("--fail-on-leak", action="store_true",
                   help="exit 1 if any finding is not suppressed")
    p.add_argument("--version", action="version", version="%s %d" % (PROG, FORMAT_VERSION))
    p.add_argument("logs", nargs="+", metavar="LOG", help="closewait JSON Lines log, or '-'")
    return p.parse_args(argv)


def warn(msg):
    try:
        sys.stderr.write("%s: %s\n" % (PROG, clean_str(msg, 2000)))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def generate(args, col=None):
    """Reads args.logs (unless col is given), returns (report dict, rendered text)."""
    supp = Suppressions()
    for path in args.suppressions:
        supp.load(path)
    if col is None:
        col = Collector()
        for name in args.logs:
            col.read(name)
    findings = merge(col)
    tool_name = None
    if args.symbolize:
        sym = Symbolizer(args.debug_dir)
        stacks = [f.frames for f in findings if f.frames]
        stacks += [f.eof_frames for f in findings if f.eof_frames]
        sym.symbolize(stacks)
        if sym.tool and sym.applied:
            tool_name = os.path.basename(sym.tool)
        for n in sym.notes[:5]:
            warn(n)
    for f in findings:
        f.suppressed_by = supp.match(f.frames) or supp.match(f.lang_frames)
    report = build_report(findings, col, supp, tool_name)
    render = {"markdown": render_markdown, "json": render_json, "text": render_text}
    return report, render[args.format](report)


def svg_name(f):
    return "finding-%d-%s.svg" % (f["rank"], re.sub(r"[^0-9A-Za-z]", "_", f["stack_id"])[:64])


def write_svgs(report, directory):
    """One SVG per growing finding with a growth to draw."""
    os.makedirs(directory, exist_ok=True)
    for f in report["findings"]:
        g = f.get("growth")
        if not g or len(g["points"]) < 2:
            continue
        with open(os.path.join(directory, svg_name(f)), "w", encoding="utf-8") as out:
            out.write(svg(f["top_frame"] or f["stack_id"], g["points"], g))


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    # Usage errors first: every log and suppressions file must be openable.
    for name in args.logs:
        if name == "-":
            continue
        if not os.path.exists(name):
            warn("%s: no such file" % name)
            return 2
        if os.path.isdir(name):
            warn("%s: is a directory" % name)
            return 2
        if not os.access(name, os.R_OK):
            warn("%s: cannot read" % name)
            return 2
    if args.logs.count("-") > 1:
        warn("'-' (stdin) given more than once")
        return 2
    for path in args.suppressions:
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            warn("%s: cannot read the suppressions file" % path)
            return 2
    col = Collector()
    for name in args.logs:
        try:
            col.read(name)
        except OSError as e:
            warn("%s: %s" % (name, e.strerror or e))
            return 2
    inp = col.inputs
    skipped = inp.not_json + inp.not_event
    if skipped:
        warn("skipped %d of %d line(s): %d not JSON, %d not closewait events (first at %s)"
             % (skipped, inp.lines, inp.not_json, inp.not_event, inp.first_bad))
    for e in inp.read_errors:
        warn(e)
    try:
        report, text = generate(args, col)
    except OSError as e:
        warn("%s" % e)
        return 2
    if args.svg is not None:
        try:
            write_svgs(report, args.svg)
        except OSError as e:
            warn("%s: %s" % (args.svg, e.strerror or e))
            return 2
    data = text.encode("utf-8", "replace")
    if args.output:
        try:
            with open(args.output, "wb") as f:
                f.write(data)
        except OSError as e:
            warn("%s: %s" % (args.output, e.strerror or e))
            return 2
    else:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            try:   # keep the interpreter from complaining when it flushes at exit
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 0
    if args.fail_on_leak and report["findings"]:
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
