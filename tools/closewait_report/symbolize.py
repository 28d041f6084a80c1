"""closewait-report: Frames that carry only module and offset, named with addr2line."""

import collections
import os
import re
import shutil
import subprocess

from .constants import MAX_FRAMES, SYMBOLIZE_TIMEOUT
from .elf import ElfInfo, file_crc32, read_elf_info

# Symbolization

_LOC = re.compile(r"^(.*?):([0-9]+|\?)(?::[0-9]+)?$")


def parse_loc(s):
    s = re.sub(r"\s+\(discriminator [0-9]+\)$", "", s.strip())
    m = _LOC.match(s)
    if not m:
        return None, None
    fname, line = m.group(1), m.group(2)
    if not fname or fname.startswith("??"):
        fname = None
    line = int(line) if line.isdigit() and int(line) > 0 else None
    return fname, line


def parse_function(s):
    s = s.strip()
    i = s.find(" inlined at ")
    if i >= 0:
        s = s[:i]
    if not s or s == "??":
        return None
    return s


def parse_addr2line(out):
    """{address: [(function, file, line), ...innermost first]} from `-a -f -i` output."""
    res = {}
    cur = None
    pending = None
    for line in out.splitlines():
        if re.fullmatch(r"0x[0-9a-fA-F]+", line.strip()):
            cur = int(line.strip(), 16)
            res.setdefault(cur, [])
            pending = None
            continue
        if cur is None:
            continue
        if pending is None:
            pending = line
        else:
            fname, lineno = parse_loc(line)
            res[cur].append((parse_function(pending), fname, lineno))
            pending = None
    return res


_NAME_PREFIXES = re.compile(r"^(?:_+|__GI_+|__libc_+|__GI___libc_+)")


def core_name(name):
    """The function's own identifier: no parameters, templates, scope or libc prefixes."""
    s = name
    for _ in range(8):                      # drop trailing (...) and <...> groups
        t = re.sub(r"(\([^()]*\)|<[^<>]*>)\s*(const|volatile|&|&&|\s)*$", "", s).strip()
        if t == s:
            break
        s = t
    ids = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)
    if not ids:
        return ""
    last = ids[-1]
    stripped = _NAME_PREFIXES.sub("", last)
    return stripped or last


def names_agree(logged, found):
    """Whether a function name from the log and one from addr2line can be the same
    function (aliases such as __libc_accept4/accept4, mangled vs demangled)."""
    a, b = core_name(logged), core_name(found)
    if not a or not b:
        return True
    return a == b or a in found or b in logged


def pc_groups(frames):
    """Yields (index, pc group number, whether the group is an inline chain).  The library
    logs one frame per function of an inline chain, all with the same pc; the innermost
    pc is group 0."""
    groups = []
    prev = object()
    for i, fr in enumerate(frames):
        key = (fr.get("module"), fr.get("offset"), fr.get("pc"))
        if key != prev or not groups or (key == (None, None, None)):
            groups.append([])
        groups[-1].append(i)
        prev = key
    for g, members in enumerate(groups):
        expanded = len(members) > 1 or any(frames[i].get("inlined") for i in members)
        for i in members:
            yield i, g, expanded


class Symbolizer:
    def __init__(self, debug_dirs=(), tool=None):
        self.debug_dirs = [os.path.abspath(d) for d in debug_dirs if d]
        if tool is None:
            tool = os.environ.get("CLOSEWAIT_REPORT_ADDR2LINE") or None
        if tool is None:
            tool = shutil.which("eu-addr2line") or shutil.which("addr2line")
        elif tool and not os.path.isabs(tool):
            tool = shutil.which(tool)
        self.tool = tool or None
        self.cache = {}        # (target, address) -> [(function, file, line)] or None
        self.targets = {}      # (module, build_id) -> (target path, min_vaddr) or None
        self.elf = {}
        self.crc = {}
        self.notes = []
        self.applied = 0       # frames rewritten

    def elf_info(self, path):
        if path not in self.elf:
            self.elf[path] = read_elf_info(path)
        return self.elf[path]

    def _debug_dirs(self):
        return self.debug_dirs + ["/usr/lib/debug"]

    def find_debug_file(self, module, info, build_id):
        bid = build_id or (info.build_id if info else None)
        if bid and len(bid) > 2:
            for d in self._debug_dirs():
                for cand in (os.path.join(d, ".build-id", bid[:2], bid[2:] + ".debug"),
                             os.path.join(d, bid[:2], bid[2:] + ".debug")):
                    ci = self.elf_info(cand)
                    if ci and (ci.build_id is None or ci.build_id == bid):
                        return cand
        if info and info.debuglink and module:
            mreal = os.path.realpath(module)
            mdir = os.path.dirname(mreal)
            name = info.debuglink
            cands = [os.path.join(mdir, name), os.path.join(mdir, ".debug", name)]
            for d in self._debug_dirs():
                cands.append(os.path.join(d, name))
                cands.append(os.path.join(d, mdir.lstrip("/"), name))
            for cand in cands:
                if os.path.realpath(cand) == mreal:
                    continue
                ci = self.elf_info(cand)
                if not ci:
                    continue
                if info.build_id and ci.build_id:
                    if ci.build_id == info.build_id:
                        return cand
                    continue
                if info.debuglink_crc is not None:
                    if cand not in self.crc:
                        self.crc[cand] = file_crc32(cand)
                    if self.crc[cand] != info.debuglink_crc:
                        continue
                return cand
        return None

    def target(self, module, build_id):
        """(file to give addr2line, min load vaddr) for a frame's module, or None."""
        key = (module, build_id)
        if key in self.targets:
            return self.targets[key]
        result = None
        info = self.elf_info(module) if module else None
        if info and build_id and info.build_id and info.build_id != build_id:
            info_ok = False          # the local file is another build: do not trust it
        else:
            info_ok = info is not None
        debug = self.find_debug_file(module if info_ok else None,
                                     info if info_ok else None, build_id)
        if debug:
            base = info.min_vaddr if info_ok else (self.elf_info(debug) or ElfInfo()).min_vaddr
            result = (debug, base)
        elif info_ok:
            result = (module, info.min_vaddr)
        self.targets[key] = result
        return result

    @staticmethod
    def needs(frame):
        return (frame.get("file") is None or frame.get("line") is None) \
            and frame.get("offset") is not None and bool(frame.get("module"))

    @staticmethod
    def address(frame, group, base):
        """The file address of a frame's offset (minus 1 when group > 0)."""
        addr = frame["offset"] - (1 if group > 0 else 0)
        if addr < 0:
            return None
        if base and addr < base:
            addr += base     # offset relative to the module's first mapping
        return addr

    def run(self, path, addrs):
        """Symbolizes addrs in one process call; returns {addr: entries}."""
        cmd = [self.tool, "-e", path, "-f", "-i", "-C", "-a"]
        try:
            p = subprocess.run(cmd, input="\n".join("0x%x" % a for a in addrs) + "\n",
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, errors="replace", timeout=SYMBOLIZE_TIMEOUT,
                               env=dict(os.environ, LC_ALL="C"))
        except (OSError, subprocess.SubprocessError, ValueError) as ex:
            self.notes.append("%s on %s failed: %s" % (os.path.basename(self.tool), path, ex))
            return {}
        return parse_addr2line(p.stdout)

    def symbolize(self, stacks):
        """Rewrites the given frame lists in place."""
        todo = collections.defaultdict(set)
        plan = []
        for frames in stacks:
            for i, group, expanded in pc_groups(frames):
                fr = frames[i]
                if expanded or not self.needs(fr):
                    continue          # the library already expanded this pc's inline chain
                t = self.target(fr["module"], fr["build_id"])
                if not t:
                    continue
                exact = self.address(fr, 0, t[1])
                if exact is None:
                    continue
                if fr.get("tail_call"):
                    addrs = (exact,)            # a function's entry, recovered by the library
                elif group > 0:
                    addrs = (exact - 1,) if exact > 0 else ()
                else:                           # innermost: an address, or a return address
                    addrs = (exact, exact - 1) if exact > 0 else (exact,)
                if not addrs:
                    continue
                plan.append((frames, i, t[0], addrs))
                for a in addrs:
                    if (t[0], a) not in self.cache:
                        todo[t[0]].add(a)
        if todo and not self.tool:
            self.notes.append("no eu-addr2line or addr2line found: frames left as "
                              "module+offset")
            return
        for path, addrs in todo.items():
            addrs = sorted(addrs)
            res = self.run(path, addrs)
            for a in addrs:
                entries = [e for e in res.get(a, []) if e[0] or e[1]]
                self.cache[(path, a)] = entries or None
        expansions = collections.defaultdict(dict)
        disagree = 0
        for frames, i, path, addrs in plan:
            entries = self.cache.get((path, addrs[-1]))
            if len(addrs) == 2:
                # The innermost frame is looked up as is, unless it is evidently a return
                # address: offset - 1 lies in the same function (a function's first byte is
                # never a return address of a call that returns).
                at = self.cache.get((path, addrs[0]))
                if at and not (entries and at[-1][0] and entries[-1][0] == at[-1][0]):
                    entries = at
            if not entries:
                continue
            logged = frames[i].get("function")
            if logged and not any(fn and names_agree(logged, fn) for fn, _f, _l in entries):
                # the log names another function: the local file is not the logged build
                disagree += 1
                continue
            expansions[id(frames)][i] = entries
            self.applied += 1
        if disagree:
            self.notes.append("%d frame(s) left as logged: the local module names another "
                              "function at that offset (a different build?)" % disagree)
        for frames in stacks:
            exp = expansions.get(id(frames))
            if not exp:
                continue
            out = []
            for i, fr in enumerate(frames):
                entries = exp.get(i)
                if not entries:
                    out.append(fr)
                    continue
                for j, (fn, fname, line) in enumerate(entries):
                    nf = dict(fr)
                    last = j == len(entries) - 1
                    nf["function"] = fn or (fr["function"] if last else None)
                    nf["file"] = fname
                    nf["line"] = line
                    nf["inlined"] = not last
                    nf["symbolized"] = True
                    out.append(nf)
            frames[:] = out[:MAX_FRAMES * 4]
