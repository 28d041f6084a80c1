"""closewait-report: Suppressions, with the library's syntax and meaning (docs/CONTRACT.md)."""

import collections
import fnmatch
import os

from .values import clean_str

# Suppressions

class Suppressions:
    def __init__(self):
        self.rules = []      # (kind, glob, original text)
        self.used = collections.Counter()

    def load(self, path):
        with open(path, "rb") as f:
            data = f.read(1 << 24)
        for raw in data.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind, glob = "fun", line
            for prefix in ("fun", "mod", "src"):
                if line.startswith(prefix + ":"):
                    kind, glob = prefix, line[len(prefix) + 1:].strip()
                    break
            if glob:
                self.rules.append((kind, glob, clean_str(line, 512)))

    def match(self, frames):
        for kind, glob, text in self.rules:
            for fr in frames or ():
                if kind == "fun":
                    values = [fr.get("function")]
                elif kind == "mod":
                    m = fr.get("module")
                    values = [m, os.path.basename(m)] if m else []
                else:
                    s = fr.get("file")
                    values = [s, os.path.basename(s)] if s else []
                if any(v and fnmatch.fnmatchcase(v, glob) for v in values):
                    return text
        return None
