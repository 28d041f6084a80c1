"""closewait-report: growth over time, for a growing finding: the rate in words, a Mermaid
xychart-beta block for the Markdown report, and a self-contained SVG file."""

import bisect
import datetime
import re

MERMAID_POINTS = 24          # categories on the Mermaid x axis
JSON_POINTS = 500            # samples kept in the JSON report (resampled beyond that)


def _utc(ts):
    return datetime.datetime.fromtimestamp(ts / 1000.0, tz=datetime.timezone.utc)


def _num(x):
    """40, 2.5, 0.3: a rate as people write it."""
    if x >= 10:
        return "%d" % round(x)
    s = "%.1f" % x
    return s[:-2] if s.endswith(".0") else s


def _at(times, values, t):
    """The count held at time t (the last sample at or before it)."""
    i = bisect.bisect_right(times, t) - 1
    return values[max(i, 0)]


def resample(timeline, n):
    """n (time, count) points evenly spaced over the timeline, the first and last included."""
    times = [t for t, _ in timeline]
    values = [v for _, v in timeline]
    t0, t1 = times[0], times[-1]
    if n < 2 or t1 == t0:
        return [(t0, values[-1])]
    pts = []
    for k in range(n):
        t = t0 + (t1 - t0) * k // (n - 1)
        pts.append((t, _at(times, values, t)))
    return pts


def growth(timeline):
    """The growth of one finding from its timeline [(ts_ms, sockets held)]: where it started
    (the last time the count was at its lowest), the rate since then, and the rate in words.
    None when there is nothing to say (fewer than two samples, no rise)."""
    tl = [(t, v) for t, v in timeline if t is not None]
    if len(tl) < 2:
        return None
    low = min(v for _, v in tl[:-1])
    start = max(i for i, (_, v) in enumerate(tl[:-1]) if v == low)
    t0, n0 = tl[start]
    t1, n1 = tl[-1]
    rise = n1 - n0
    if rise <= 0:
        return None
    span = t1 - t0
    start_dt, end_dt = _utc(t0), _utc(t1)
    if start_dt.date() != end_dt.date():
        since = start_dt.strftime("%Y-%m-%d %H:%M")
    elif span < 3600 * 1000:
        since = start_dt.strftime("%H:%M:%S")
    else:
        since = start_dt.strftime("%H:%M")
    per_hour = rise * 3600000.0 / span if span > 0 else None
    if per_hour is None:
        text = "+%d sockets at %s UTC" % (rise, since)
    else:
        per_s = per_hour / 3600.0
        for unit, mult in (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86400)):
            if per_s * mult >= 1 or unit == "day":
                text = "+%s sockets/%s since %s UTC" % (_num(per_s * mult), unit, since)
                break
    return {
        "since": start_dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t0 % 1000),
        "until": end_dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t1 % 1000),
        "from_held": n0,
        "to_held": n1,
        "rate_per_hour": None if per_hour is None else round(per_hour, 3),
        "text": text,
        "points": [[t, v] for t, v in (tl if len(tl) <= JSON_POINTS else resample(tl, JSON_POINTS))],
    }


def _time_labels(times):
    """Time labels for the axis, as short as the span allows and all different."""
    span = times[-1] - times[0]
    if span >= 86400 * 1000:
        formats = ("%m-%d %H:%M", "%m-%d %H:%M:%S")
    elif span >= 3600 * 1000:
        formats = ("%H:%M", "%H:%M:%S")
    else:
        formats = ("%H:%M:%S",)
    for fmt in formats:
        labels = [_utc(t).strftime(fmt) for t in times]
        if len(set(labels)) == len(labels):
            return labels
    return [_utc(t).strftime("%H:%M:%S.") + "%03d" % (t % 1000) for t in times]


_TITLE_UNSAFE = re.compile(r"[^A-Za-z0-9 _.:()+\-/,]")


def safe_title(s, n=80):
    """Text from a log as a chart title: what no Mermaid string or markup can take apart."""
    s = _TITLE_UNSAFE.sub("?", s or "")
    return s if len(s) <= n else s[:n - 3] + "..."


def mermaid(title, timeline, g):
    """The lines of a ```mermaid block: the sockets held over time (resampled evenly, so that
    the categories of the x axis are evenly spaced in time)."""
    tl = [(t, v) for t, v in timeline if t is not None]
    times = [t for t, _ in tl]
    n = MERMAID_POINTS
    span = times[-1] - times[0]
    if span < (n - 1) * 1000:       # one point a second at most: labels stay readable
        n = max(2, span // 1000 + 1)
    pts = resample(tl, n)
    top = max(v for _, v in pts)
    ymax = max(1, top + max(1, top // 10))
    labels = ", ".join('"%s"' % l for l in _time_labels([t for t, _ in pts]))
    return [
        "```mermaid",
        "xychart-beta",
        '    title "%s"' % safe_title(title),
        '    x-axis "time (UTC)" [%s]' % labels,
        '    y-axis "sockets held" 0 --> %d' % ymax,
        "    line [%s]" % ", ".join("%d" % v for _, v in pts),
        "```",
    ]


def _xml(s):
    s = "".join(c if c in "\t\n" or ord(c) >= 0x20 else "?" for c in str(s))
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def _nice_max(v):
    """A round top for the y axis, at least v."""
    if v <= 5:
        return max(v, 1)
    step = 10 ** (len(str(int(v))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= v:
            return int(m * step)
    return int(10 * step)


def svg(title, timeline, g, width=720, height=320):
    """A standalone SVG of the sockets held over time, as steps (a count changes at an event and
    holds until the next), with its axes, the rate, and nothing that needs a script or a font
    file."""
    tl = [(t, v) for t, v in timeline if t is not None]
    left, right, top, bottom = 64, 44, 58, 48
    pw, ph = width - left - right, height - top - bottom
    t0, t1 = tl[0][0], tl[-1][0]
    tspan = max(t1 - t0, 1)
    ymax = _nice_max(max(v for _, v in tl) + 1)

    def x(t):
        return left + pw * (t - t0) / tspan

    def y(v):
        return top + ph - ph * v / ymax

    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12">' % (width, height, width, height),
           '<title>%s</title>' % _xml("Sockets held: " + title),
           '<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>' % (width, height),
           '<text x="%d" y="22" font-size="15" font-weight="bold" fill="#222222">%s</text>'
           % (left, _xml(safe_title("Sockets held: " + title, 90))),
           '<text x="%d" y="42" fill="#b22222">%s (from %d to %d held)</text>'
           % (left, _xml(g["text"]), g["from_held"], g["to_held"])]
    # horizontal grid and y labels
    ticks = 5 if ymax >= 5 else ymax
    for k in range(ticks + 1):
        v = ymax * k / ticks
        yy = y(v)
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#dddddd"/>' % (left, yy, left + pw, yy))
        out.append('<text x="%d" y="%.1f" text-anchor="end" fill="#444444">%s</text>'
                   % (left - 6, yy + 4, _num(v) if v != int(v) else "%d" % v))
    # x labels
    nx = 5 if t1 > t0 else 1
    xt = [t0 + (t1 - t0) * k // max(nx - 1, 1) for k in range(nx)]
    for t, label in zip(xt, _time_labels(xt) if len(xt) > 1 else [_utc(t0).strftime("%H:%M:%S")]):
        xx = x(t)
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888888"/>' % (xx, top + ph, xx, top + ph + 5))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#444444">%s</text>'
                   % (xx, top + ph + 19, _xml(label)))
    out.append('<text x="%d" y="%d" text-anchor="middle" fill="#444444">time (UTC)</text>'
               % (left + pw // 2, height - 8))
    out.append('<text x="16" y="%d" text-anchor="middle" fill="#444444" transform="rotate(-90 16 %d)">'
               'sockets held</text>' % (top + ph // 2, top + ph // 2))
    out.append('<polyline fill="none" stroke="#888888" points="%d,%d %d,%d %d,%d"/>'
               % (left, top, left, top + ph, left + pw, top + ph))
    # the steps
    pts = []
    prev = None
    for t, v in tl:
        if prev is not None:
            pts.append("%.1f,%.1f" % (x(t), y(prev)))
        pts.append("%.1f,%.1f" % (x(t), y(v)))
        prev = v
    if len(tl) == 1:
        pts.append("%.1f,%.1f" % (left + pw, y(prev)))
    out.append('<polyline fill="none" stroke="#d62728" stroke-width="2.5" points="%s"/>' % " ".join(pts))
    out.append("</svg>")
    return "\n".join(out) + "\n"
