"""closewait-report: The checks every value read from a log goes through: a log line is hostile until proven otherwise."""

import datetime
import math
import re

from .constants import MAX_FRAMES, MAX_STR, MAX_TS_MS

# Defensive field accessors: a log line is hostile until proven otherwise.

_UNSAFE_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f"
                           "\u202a-\u202e\u2066-\u2069\ufeff]")


def clean_str(s, maxlen=MAX_STR):
    """A printable, valid-UTF-8 copy of s: lone surrogates and invalid bytes become '?',
    control and bidi characters become '?', and the length is bounded."""
    if len(s) > maxlen:
        s = s[:maxlen] + "..."
    s = s.encode("utf-8", "replace").decode("utf-8", "replace")
    return _UNSAFE_CHARS.sub("?", s)


def as_str(v, maxlen=MAX_STR):
    if isinstance(v, str) and v:
        return clean_str(v, maxlen)
    return None


def as_int(v, lo=0, hi=(1 << 63) - 1):
    """An integer within [lo, hi], or None.  Accepts ints, integral finite floats and
    decimal strings; refuses bools, NaN, infinities, and anything out of range."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        x = v
    elif isinstance(v, float):
        if not math.isfinite(v) or abs(v) > 1e19:
            return None
        x = int(v)
    elif isinstance(v, str) and 0 < len(v) <= 20 and re.fullmatch(r"-?[0-9]+", v):
        x = int(v)
    else:
        return None
    if x < lo or x > hi:
        return None
    return x


def as_hex(v):
    """An address or offset: "0x1a2b" (or a decimal int); 0 <= x < 2**64, else None."""
    if isinstance(v, str):
        m = re.fullmatch(r"(?:0[xX])?([0-9a-fA-F]{1,16})", v.strip())
        if not m:
            return None
        return int(m.group(1), 16)
    return as_int(v, 0, (1 << 64) - 1)


def as_build_id(v):
    if isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{4,128}", v):
        return v.lower()
    return None


def as_stack_id(v):
    if isinstance(v, str) and 0 < len(v) <= 64:
        if re.fullmatch(r"[0-9a-fA-F]+", v):
            return v.lower()
        return clean_str(v, 64)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 64):
        return "%016x" % v
    return None


def parse_time_str(s):
    """ms since the epoch from an ISO 8601 string, or None."""
    if not isinstance(s, str) or len(s) > 64:
        return None
    try:
        t = s.strip()
        if t.endswith(("Z", "z")):
            t = t[:-1] + "+00:00"
        dt = datetime.datetime.fromisoformat(t)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.timezone.utc)
        ms = int(dt.timestamp() * 1000)
    except (ValueError, OverflowError, OSError, TypeError):
        return None
    return ms if 0 <= ms <= MAX_TS_MS else None


def fmt_time(ts):
    if ts is None:
        return None
    try:
        dt = datetime.datetime.fromtimestamp(ts / 1000.0, tz=datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (ts % 1000)


def parse_frames(v):
    """A list of frame dicts from an open_stack/eof_stack value, or None."""
    if not isinstance(v, list) or not v:
        return None
    frames = []
    for f in v[:MAX_FRAMES]:
        if not isinstance(f, dict):
            f = {}
        line = as_int(f.get("line"), 0, 10 ** 9)
        frames.append({
            "pc": as_hex(f.get("pc")),
            "module": as_str(f.get("module"), 1024),
            "offset": as_hex(f.get("offset")),
            "function": as_str(f.get("function"), 1024),
            "file": as_str(f.get("file"), 1024),
            "line": line if line else None,
            "build_id": as_build_id(f.get("build_id")),
            "inlined": f.get("inlined") is True,
            "tail_call": f.get("tail_call") is True,
            "symbolized": False,
        })
    return frames


def parse_lang_frames(v):
    """A list of language frame dicts from a lang_open_stack/lang_eof_stack value, or None."""
    if not isinstance(v, list) or not v:
        return None
    frames = []
    for f in v[:MAX_FRAMES]:
        if not isinstance(f, dict):
            continue
        line = as_int(f.get("line"), 0, 10 ** 9)
        frames.append({
            "function": as_str(f.get("function"), 1024),
            "file": as_str(f.get("file"), 1024),
            "line": line if line else None,
            "program": f.get("program") is True,
        })
    return frames or None
