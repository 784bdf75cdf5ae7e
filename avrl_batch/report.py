"""``avrl report``: one self-contained HTML page to review a scan.

Everything is inline (CSS, SVG timelines, a few lines of JS, thumbnails as ``data:`` URIs),
so the file can be mailed or opened offline. Every piece of text from the data (source
URIs, camera names, error messages) goes through ``html.escape``: it is user data.

Layout: summary tiles; a legend (click a label to hide/show it); one SVG timeline per
camera over the recorded time (a grey "recorded" lane shows the footage that was scanned,
with the stretches that could not be decoded in red on it, then one lane per label with
its events as coloured bars; recordings with an unknown start get their own timeline in
seconds from the file start); counts by label and by camera; the event list with
thumbnails; the unreadable spans; the failed sources.
"""

from __future__ import annotations

import base64
import bisect
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avrl_batch.review import EventClip

# Okabe-Ito-like palette: distinguishable with the common colour-vision deficiencies
LABEL_COLOURS: dict[str, str] = {
    "arrest": "#0072B2",
    "chase": "#E69F00",
    "fight": "#D55E00",
    "knockdown": "#CC79A7",
    "run": "#009E73",
    "shoot": "#7A0019",
    "scatter": "#56B4E9",
}
# further labels (a model trained on its own classes) take these in legend order, then hues
# spread by the golden angle
_PALETTE = ("#0072B2", "#E69F00", "#D55E00", "#CC79A7", "#009E73", "#7A0019", "#56B4E9",
            "#F0E442", "#332288", "#117733", "#AA4499", "#88CCEE")

# SVG geometry (px in the viewBox; the SVG scales to the page width)
_W, _LEFT, _RIGHT, _LANE, _TOP, _AXIS = 1100, 120, 48, 22, 8, 26
_GAP_PX = 26  # width of a cut (a long stretch without footage) on a time axis
_UNREADABLE_COLOUR = "#d62728"  # a stretch of a recording that could not be decoded


@dataclass(frozen=True)
class Report:
    html: str
    n_events: int
    n_cameras: int
    n_errors: int
    # one line per manifest left out (not a JSON object, a field of the wrong type)
    warnings: tuple[str, ...] = ()


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def label_colours(labels: list[str]) -> dict[str, str]:
    """A distinct colour per label: SHADE's labels keep theirs, the others take the unused
    palette colours in order, then hues 137.5° apart."""
    colours = {lb: LABEL_COLOURS[lb] for lb in labels if lb in LABEL_COLOURS}
    free = [c for c in _PALETTE if c not in colours.values()]
    for lb in labels:
        if lb not in colours:
            n = len(colours)
            colours[lb] = free.pop(0) if free else f"hsl({(n * 137.5) % 360:.0f},65%,45%)"
    return colours


def _fmt_time(t: datetime | None) -> str:
    return "" if t is None else t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _ticks(lo: float, hi: float, timed: bool, max_ticks: int) -> list[float]:
    """Round tick positions in [lo, hi], at most about ``max_ticks`` of them."""
    span = max(hi - lo, 1e-9)
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
             43200, 86400, 172800, 604800, 2592000]
    step = next((st for st in steps if span / st <= max_ticks), span)
    v = math.ceil(lo / step) * step
    out = []
    while v <= hi + 1e-9:
        out.append(v)
        v += step
    return out


def _tick_label(v: float, timed: bool, long_span: bool, fine: bool) -> str:
    if not timed:
        return f"{v:g} s"
    t = datetime.fromtimestamp(v, timezone.utc)
    clock = "%H:%M:%S" if fine else "%H:%M"
    if long_span or t.strftime("%H:%M:%S") == "00:00:00":
        return t.strftime("%m-%d " + clock)
    return t.strftime(clock)


def _clusters(intervals: list[tuple[float, float]]) -> list[list[float]]:
    """Recorded intervals merged into stretches of the axis. A gap longer than all the
    recorded time together (and than a minute) is cut out of the axis, so two short
    recordings days apart are not squeezed into slivers; cuts are marked on the drawing."""
    iv = sorted(intervals)
    cut = max(60.0, sum(b - a for a, b in iv))
    out = [list(iv[0])]
    for a, b in iv[1:]:
        if a - out[-1][1] > cut:
            out.append([a, b])
        else:
            out[-1][1] = max(out[-1][1], b)
    return out


@dataclass(frozen=True)
class _Axis:
    """Seconds -> px on a time axis made of ``clusters`` (see ``_clusters``), one scale for
    all of them and a cut of _GAP_PX between two."""

    clusters: list[list[float]]
    starts: list[float]  # px where each cluster begins
    scale: float  # px per second

    @classmethod
    def fit(cls, clusters: list[list[float]]) -> _Axis:
        inner = _W - _LEFT - _RIGHT
        total = max(sum(hi - lo for lo, hi in clusters), 1e-9)
        scale = (inner - _GAP_PX * (len(clusters) - 1)) / total
        starts, pos = [], float(_LEFT)
        for lo, hi in clusters:
            starts.append(pos)
            pos += (hi - lo) * scale + _GAP_PX
        return cls(clusters, starts, scale)

    def x(self, v: float) -> float:
        i = max(bisect.bisect_right(self.clusters, v, key=lambda c: c[0]) - 1, 0)
        lo, hi = self.clusters[i]
        return self.starts[i] + (min(max(v, lo), hi) - lo) * self.scale


def _timeline_svg(
    title: str, lanes: list[str], spans: list[dict[str, Any]], timed: bool
) -> str:
    """One SVG: lane 0 is 'recorded'; ``spans`` have lane, x0, x1, colour, tip, event_id.
    Lane 0 spans define the axis (see ``_clusters``)."""
    axis = _Axis.fit(_clusters([(s["x0"], s["x1"]) for s in spans if s["lane"] == 0]))
    height = _TOP + _LANE * len(lanes) + _AXIS
    parts = [
        f'<svg class="timeline" viewBox="0 0 {_W} {height}" width="100%" role="img" '
        f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts += _lane_rows(lanes)
    parts += _axis_marks(axis, _TOP + _LANE * len(lanes), timed)
    parts += _span_bars(axis, spans)
    parts.append("</svg>")
    return "".join(parts)


def _lane_rows(lanes: list[str]) -> list[str]:
    """Each lane's striped background and its name in the left margin."""
    inner = _W - _LEFT - _RIGHT
    parts = []
    for i, name in enumerate(lanes):
        y = _TOP + i * _LANE
        parts.append(
            f'<rect x="{_LEFT}" y="{y}" width="{inner}" height="{_LANE}" '
            f'fill="{"#f4f4f4" if i % 2 else "#fbfbfb"}"/>'
            f'<text x="{_LEFT - 8}" y="{y + _LANE * 0.68:.1f}" text-anchor="end" '
            f'class="lane">{_e(name)}</text>'
        )
    return parts


def _axis_marks(axis: _Axis, axis_y: float, timed: bool) -> list[str]:
    """Tick lines and labels under the lanes, and a marked cut between two clusters."""
    clusters, scale = axis.clusters, axis.scale
    long_span = timed and clusters[-1][1] - clusters[0][0] > 86400
    last_label = -1e9
    parts = []
    for i, (lo, hi) in enumerate(clusters):
        width = (hi - lo) * scale
        fine = (hi - lo) / max(1, int(width // 110)) < 60
        ticks = [lo] + [v for v in _ticks(lo, hi, timed, max(1, int(width // 110)))
                        if (v - lo) * scale >= 90]
        for v in ticks:
            xv = axis.x(v)
            parts.append(
                f'<line x1="{xv:.1f}" x2="{xv:.1f}" y1="{_TOP}" y2="{axis_y + 4}" class="tick"/>'
            )
            if xv - last_label >= 90:  # keep labels from overlapping
                last_label = xv
                parts.append(
                    f'<text x="{xv:.1f}" y="{axis_y + 17}" text-anchor="middle" class="axis">'
                    f"{_e(_tick_label(v, timed, long_span, fine))}</text>"
                )
        if i + 1 < len(clusters):
            gx = axis.starts[i] + width
            gap = clusters[i + 1][0] - hi
            parts.append(
                f'<g class="cut"><rect x="{gx + 3:.1f}" y="{_TOP}" width="{_GAP_PX - 6}" '
                f'height="{axis_y - _TOP}" fill="#ffffff" stroke="#999" stroke-dasharray="3 3"/>'
                f'<text x="{gx + _GAP_PX / 2:.1f}" y="{axis_y - 4}" text-anchor="middle" '
                f'class="axis">≈</text><title>no footage for {_e(_fmt_dur(gap))} '
                "(cut from the axis)</title></g>"
            )
    return parts


def _span_bars(axis: _Axis, spans: list[dict[str, Any]]) -> list[str]:
    """One bar per span in its lane; an event's bar links to its row in the event list."""
    parts = []
    for s in spans:
        y = _TOP + s["lane"] * _LANE + 3
        x0 = axis.x(s["x0"])
        w = max(axis.x(s["x1"]) - x0, 3.0)  # a short event stays visible
        cls = f' class="{_e(s["cls"])}"' if s.get("cls") else ""
        rect = (
            f'<rect{cls} x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{_LANE - 6}" rx="2" '
            f'fill="{s["colour"]}"><title>{_e(s["tip"])}</title></rect>'
        )
        if s.get("event_id"):
            parts.append(
                f'<a href="#ev-{_e(s["event_id"])}" class="bar" data-event-id="{_e(s["event_id"])}"'
                f' data-label="{_e(s["label"])}">{rect}</a>'
            )
        else:
            parts.append(rect)
    return parts


def _camera_timelines(
    camera: str,
    coverage: list[dict[str, Any]],
    events: list[dict[str, Any]],
    colours: dict[str, str],
    unreadable: Sequence[dict[str, Any]] = (),
) -> list[str]:
    """One timeline over recorded time, plus one in seconds for recordings without a start;
    unreadable spans are red bars on the recorded lane."""
    out = []
    for timed in (True, False):
        cov = [c for c in coverage if (c["t0"] is not None) == timed]
        if not cov:
            continue
        sources = {c["source_uri"] for c in cov}
        evs = [e for e in events if e["source_uri"] in sources]
        labels = [lb for lb in colours if any(e["label"] == lb for e in evs)]
        lanes = ["recorded", *labels]

        def pos(row: dict[str, Any], t_key: str, s_key: str, timed: bool = timed) -> float:
            return row[t_key].timestamp() if timed else float(row[s_key])

        lo = min(pos(c, "t0", "s0") for c in cov)
        hi = max(pos(c, "t1", "s1") for c in cov)
        hi = max([hi, *(pos(u, "end_time", "end_s") for u in unreadable
                        if u["source_uri"] in sources)])
        spans = [
            {
                "lane": 0, "x0": pos(c, "t0", "s0"), "x1": pos(c, "t1", "s1"), "colour": "#c9c9c9",
                "tip": f"{_basename(c['source_uri'])}: {c['n_windows']} windows"
                + (f" ({c['n_inferred']} inferred, {c['n_windows'] - c['n_inferred']} "
                   "screened out)" if c.get("n_inferred", c["n_windows"]) < c["n_windows"]
                   else "")
                + f", {_fmt_dur(c['s1'] - c['s0'])}"
                + ("" if c["has_audio"] else " (no audio)"),
            }
            for c in cov
        ]
        for u in unreadable:
            if u["source_uri"] not in sources:
                continue
            spans.append(
                {
                    "lane": 0, "x0": pos(u, "start_time", "start_s"),
                    "x1": pos(u, "end_time", "end_s"), "colour": _UNREADABLE_COLOUR,
                    "cls": "unreadable",
                    "tip": f"unreadable {_basename(u['source_uri'])} {u['start_s']:.1f}-"
                    f"{u['end_s']:.1f} s ({_fmt_dur(u['end_s'] - u['start_s'])}): "
                    f"{u['reason']}: {u['message']}",
                }
            )
        for e in evs:
            spans.append(
                {
                    "lane": lanes.index(e["label"]),
                    "x0": pos(e, "start_time", "start_s"),
                    "x1": pos(e, "end_time", "end_s"),
                    "colour": colours[e["label"]],
                    "tip": f"{e['label']} {e['peak_score']:.2f} · {_basename(e['source_uri'])} "
                    f"{e['start_s']:.1f}-{e['end_s']:.1f} s",
                    "event_id": e["event_id"],
                    "label": e["label"],
                }
            )
        if timed:
            t_lo = datetime.fromtimestamp(lo, timezone.utc)
            t_hi = datetime.fromtimestamp(hi, timezone.utc)
            sub = f"{_fmt_time(t_lo)} – {_fmt_time(t_hi)} UTC"
        else:
            sub = "recording start unknown: seconds from the start of each file"
        title = f"{camera}"
        out.append(
            f'<section class="cam" data-camera="{_e(camera)}"><h3>{_e(title)} '
            f'<small>{_e(sub)} · {len(sources)} recording(s) · {len(evs)} event(s)</small></h3>'
            + _timeline_svg(f"timeline of {camera}", lanes, spans, timed)
            + "</section>"
        )
    return out


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fff}
header{background:#1d2733;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px} header p{margin:0;color:#c8d2dd}
main{padding:8px 28px 40px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 4px} h3 small{font-weight:normal;color:#666}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-top:16px}
.tile{background:#f3f6f9;border-radius:6px;padding:10px 16px;min-width:110px}
.tile b{display:block;font-size:22px}
.legend{display:flex;gap:8px;flex-wrap:wrap;margin:12px 0}
.legend button{border:1px solid #ccc;background:#fff;border-radius:14px;padding:3px 10px;
cursor:pointer;font:inherit}
.legend button.off{opacity:.35} .chip{display:inline-block;width:12px;height:12px;
border-radius:3px;margin-right:5px;vertical-align:-1px}
svg.timeline{display:block;max-width:1100px}
svg text.lane{font-size:12px;fill:#333} svg text.axis{font-size:11px;fill:#555}
svg line.tick{stroke:#d5d5d5;stroke-width:1}
svg a.bar rect:hover{stroke:#000;stroke-width:1.5}
table{border-collapse:collapse;margin:6px 0} th,td{padding:4px 10px;text-align:left;
border-bottom:1px solid #eee;vertical-align:middle} th{background:#f3f6f9}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar-cell{display:inline-block;height:10px;border-radius:2px;background:#8fa3b8}
img.thumb{display:block;width:120px;border-radius:3px;background:#ddd}
.nothumb{width:120px;height:68px;background:#eee;color:#888;font-size:11px;display:flex;
align-items:center;justify-content:center;border-radius:3px}
.src{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
tr.hidden,a.bar.hidden{display:none} tr:target{background:#fff5cc}
td.when{white-space:nowrap} .empty{color:#666}
.counts{display:flex;gap:48px;flex-wrap:wrap;align-items:flex-start}
"""

_JS = """
document.querySelectorAll('.legend button').forEach(function(b){
  b.addEventListener('click',function(){
    b.classList.toggle('off');
    var off=b.classList.contains('off'), lb=b.getAttribute('data-label');
    document.querySelectorAll('[data-label="'+lb+'"]').forEach(function(el){
      if(el!==b){el.classList.toggle('hidden',off);}
    });
  });
});
"""


def build_report(
    out: str,
    *,
    endpoint_url: str | None = None,
    html_path: str | None = None,
    clip_expiry_s: int | None = None,
    model_id: str | None = None,
    note: Any = None,
) -> Report:
    """Read the scan output ``out`` and render the report page: one model's results
    (``model_id``, default the newest scan's; ``note`` is told which when there are several),
    each source's newest version (query.connect). ``html_path`` is where the page will be
    written (local clips are linked relative to it); ``clip_expiry_s`` is how long the
    presigned links to the clips of an S3 output stay valid (none: not linked)."""
    from avrl_batch.query import ORDER_BY, OutputTree, connect
    from avrl_batch.review import event_clips, review_key

    tree = OutputTree.open(out, endpoint_url=endpoint_url)
    con = connect(tree, model_id=model_id, note=note)
    events = con.sql(f"SELECT * FROM events ORDER BY {ORDER_BY['events']}").to_arrow_table()
    coverage = con.sql(
        "SELECT camera, source_uri, min(start_s) AS s0, max(end_s) AS s1, min(start_time) AS t0,"
        " max(end_time) AS t1, count(*) AS n_windows, bool_or(has_audio) AS has_audio, "
        # a cascade scan's screened-out windows (inferred false) were never seen by the model
        " count(*) FILTER (WHERE inferred IS NOT FALSE) AS n_inferred "
        "FROM windows GROUP BY camera, source_uri ORDER BY camera, t0 NULLS LAST, source_uri"
    ).to_arrow_table().to_pylist()
    errors = con.sql(f"SELECT * FROM errors ORDER BY {ORDER_BY['errors']}").to_arrow_table()
    unreadable = con.sql(
        f"SELECT * FROM unreadable ORDER BY {ORDER_BY['unreadable']}"
    ).to_arrow_table().to_pylist()
    ev = events.to_pylist()
    err = errors.to_pylist()
    skipped: list[str] = []
    manifests = tree.manifests(skipped)
    clips = event_clips(tree.out, ev, html_path=html_path, clip_expiry_s=clip_expiry_s,
                        endpoint_url=endpoint_url)
    models = [str(m["model_id"]) for m in manifests if m.get("model_id")]
    key = review_key(tree.out, models or [e["model_id"] for e in ev])
    page = _render(_Scan(out, ev, coverage, err, manifests, clips, key, unreadable))
    cameras = {c["camera"] for c in coverage} | {e["camera"] for e in ev}
    return Report(html=page, n_events=len(ev), n_cameras=len(cameras), n_errors=len(err),
                  warnings=tuple(skipped))


def _camera_key(camera: str | None) -> str:
    return "(no camera)" if camera is None else camera


@dataclass(frozen=True)
class _Scan:
    """What the page shows: the scan output's rows and its manifests."""

    out: str
    events: list[dict[str, Any]]
    coverage: list[dict[str, Any]]  # per source: camera, s0/s1, t0/t1, n_windows, has_audio
    errors: list[dict[str, Any]]
    manifests: list[dict[str, Any]]
    clips: dict[str, EventClip]  # event_id -> its clip (avrl clips), where there is one
    review_key: str  # where the page keeps the analyst's verdicts (localStorage)
    unreadable: Sequence[dict[str, Any]] = ()  # UNREADABLE rows

    @cached_property
    def labels(self) -> list[str]:
        """The legend: the scanned models' anomaly classes (manifest order), then any other
        label an event has."""
        from avrl_batch.query import model_classes

        labels: dict[str, None] = {}
        for classes in model_classes(self.manifests).values():
            labels.update(dict.fromkeys(classes.anomaly))
        # a foreign manifest's events still show under their labels
        labels.update(dict.fromkeys(sorted({e["label"] for e in self.events} - set(labels))))
        return list(labels)

    @cached_property
    def class_names(self) -> list[str]:
        """Every class a verdict may name instead of an event's label: the scanned models'
        classes (normal ones included), then any other label an event has."""
        from avrl_batch.query import model_classes

        names: dict[str, None] = {}
        for classes in model_classes(self.manifests).values():
            names.update(dict.fromkeys(classes.names))
        names.update(dict.fromkeys(self.labels))
        return list(names)

    @cached_property
    def colours(self) -> dict[str, str]:
        return label_colours(self.labels)

    @property
    def cameras(self) -> list[str]:
        return sorted(
            {_camera_key(c["camera"]) for c in self.coverage}
            | {_camera_key(e["camera"]) for e in self.events}
        )


def _render(scan: _Scan) -> str:
    from avrl_batch import review

    events, errors = scan.events, scan.errors
    h = _head(scan)
    h += _timelines(scan)
    h += _counts(scan)
    h += _table_section(
        f"Events ({len(events)})",
        "No events found.",
        review.export_bar(scan.class_names)
        + "<table class='events'><tr><th>thumbnail</th><th>clip and audio</th><th>label</th>"
        "<th>camera</th><th>when</th><th>duration</th><th>peak</th><th>mean</th>"
        "<th>windows</th><th>verdict</th><th>source</th></tr>",
        [_event_row(e, scan.colours, scan.clips.get(e["event_id"])) for e in events],
    )
    if scan.unreadable:
        h += _table_section(
            f"Unreadable spans ({len(scan.unreadable)})",
            "",
            "<table class='unreadable'><tr><th>camera</th><th>when</th><th>seconds in the "
            "source</th><th>duration</th><th>reason</th><th>message</th><th>source</th></tr>",
            [_unreadable_row(u) for u in scan.unreadable],
        )
    h += _table_section(
        f"Failed sources ({len(errors)})",
        "Every source was scanned.",
        "<table class='errors'><tr><th>source</th><th>stage</th><th>error</th>"
        "<th>message</th></tr>",
        [_error_row(r) for r in errors],
    )
    h += _scans(scan.manifests)
    script = _JS + (review.JS if events else "")
    h.append(f"</main><script>{script}</script></body></html>")
    return "\n".join(h)


def _head(scan: _Scan) -> list[str]:
    """The document head, the page header and the summary tiles."""
    out, events, coverage, manifests = scan.out, scan.events, scan.coverage, scan.manifests
    footage_s = sum(c["s1"] - c["s0"] for c in coverage)
    n_windows = sum(c["n_windows"] for c in coverage)
    n_inferred = sum(c.get("n_inferred", c["n_windows"]) for c in coverage)
    models = sorted({str(m.get("model_id")) for m in manifests if m.get("model_id")})
    models = models or sorted({e["model_id"] for e in events})
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from avrl_batch.review import CSS as review_css
    h = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>avrl report · {_e(out)}</title><style>{_CSS}{review_css}</style></head><body>",
        f"<header><h1>Anomaly events · {_e(out)}</h1><p>model {_e(', '.join(models) or '?')}"
        f" · {len(manifests)} scan(s) · generated {_e(generated)}</p></header>"
        f'<main data-review-key="{_e(scan.review_key)}">',
        '<div class="tiles">',
    ]
    for value, name in (
        (len(coverage), "recordings scanned"),
        (_fmt_dur(footage_s), "of footage"),
        (f"{n_windows:,}", "windows"),
        *(
            [(f"{n_inferred:,}", "windows inferred (the rest screened out)")]
            if n_inferred < n_windows else []
        ),
        (len(events), "events"),
        (len(scan.cameras), "cameras"),
        (len(scan.errors), "failed sources"),
        *(
            [(_fmt_dur(sum(u["end_s"] - u["start_s"] for u in scan.unreadable)), "unreadable")]
            if scan.unreadable else []
        ),
    ):
        h.append(f'<div class="tile"><b>{_e(value)}</b>{_e(name)}</div>')
    h.append("</div>")
    return h


def _timelines(scan: _Scan) -> list[str]:
    """The legend (every anomaly class with its count) and each camera's timelines."""
    events, coverage, cameras, colours = scan.events, scan.coverage, scan.cameras, scan.colours
    h = ['<h2>Timeline by camera</h2><div class="legend">']
    for label in colours:
        n = sum(1 for e in events if e["label"] == label)
        h.append(
            f'<button type="button" data-label="{_e(label)}"><span class="chip" '
            f'style="background:{colours[label]}"></span>{_e(label)} ({n})</button>'
        )
    h.append("</div>")
    if not cameras:
        h.append('<p class="empty">No recordings were scanned successfully.</p>')
    for cam in cameras:
        cov = [c for c in coverage if _camera_key(c["camera"]) == cam]
        evs = [e for e in events if _camera_key(e["camera"]) == cam]
        # events of a source whose windows are missing still get a lane span from themselves
        known = {c["source_uri"] for c in cov}
        for e in evs:
            if e["source_uri"] not in known:
                known.add(e["source_uri"])
                cov.append({"camera": e["camera"], "source_uri": e["source_uri"],
                            "s0": e["start_s"], "s1": e["end_s"], "t0": e["start_time"],
                            "t1": e["end_time"], "n_windows": 0, "n_inferred": 0,
                            "has_audio": True})
        h.extend(_camera_timelines(cam, cov, evs, colours, scan.unreadable))
    return h


def _counts(scan: _Scan) -> list[str]:
    """Events by label (with a bar), and recordings, footage and events by camera."""
    events, coverage, cameras, colours = scan.events, scan.coverage, scan.cameras, scan.colours
    h = ['<h2>Counts</h2><div class="counts">']
    by_label = [(lb, sum(1 for e in events if e["label"] == lb)) for lb in colours]
    top = max([n for _, n in by_label] + [1])
    h.append("<table><tr><th>label</th><th>events</th><th></th></tr>")
    for lb, n in by_label:
        h.append(
            f'<tr data-label-count="{_e(lb)}"><td><span class="chip" style="background:'
            f'{colours[lb]}"></span>{_e(lb)}</td><td class="num">{n}</td><td><span '
            f'class="bar-cell" style="width:{120 * n / top:.0f}px;background:{colours[lb]}">'
            "</span></td></tr>"
        )
    h.append("</table><table><tr><th>camera</th><th>recordings</th><th>footage</th>"
             "<th>events</th></tr>")
    for cam in cameras:
        cov = [c for c in coverage if _camera_key(c["camera"]) == cam]
        n_ev = sum(1 for e in events if _camera_key(e["camera"]) == cam)
        h.append(
            f'<tr data-camera-count="{_e(cam)}"><td>{_e(cam)}</td><td class="num">{len(cov)}</td>'
            f'<td class="num">{_e(_fmt_dur(sum(c["s1"] - c["s0"] for c in cov)))}</td>'
            f'<td class="num">{n_ev}</td></tr>'
        )
    h.append("</table></div>")
    return h


def _table_section(title: str, empty: str, header: str, rows: list[str]) -> list[str]:
    """A titled table, or one line saying there is nothing to list."""
    if not rows:
        return [f"<h2>{title}</h2>", f'<p class="empty">{empty}</p>']
    return [f"<h2>{title}</h2>", header, *rows, "</table>"]


def _event_row(e: dict[str, Any], colours: dict[str, str], clip: EventClip | None) -> str:
    from avrl_batch.review import clip_cell, verdict_cell

    if e["thumbnail"]:
        b64 = base64.b64encode(e["thumbnail"]).decode()
        thumb = f'<img class="thumb" alt="peak frame" src="data:image/jpeg;base64,{b64}">'
    else:
        thumb = '<div class="nothumb">no thumbnail</div>'
    if e["start_time"] is not None:
        when = f"{_fmt_time(e['start_time'])} UTC"
    else:
        when = f"+{e['start_s']:.1f} s into the file"
    return (
        f'<tr id="ev-{_e(e["event_id"])}" data-event-id="{_e(e["event_id"])}" '
        f'data-label="{_e(e["label"])}"><td>{thumb}</td>{clip_cell(clip)}'
        f'<td><span class="chip" style="background:{colours[e["label"]]}"></span>'
        f'{_e(e["label"])}</td><td>{_e(e["camera"])}</td><td class="when">{_e(when)}<br>'
        f'<small>{e["start_s"]:.1f}–{e["end_s"]:.1f} s</small></td>'
        f'<td class="num">{_e(_fmt_dur(e["end_s"] - e["start_s"]))}</td>'
        f'<td class="num">{e["peak_score"]:.2f}</td>'
        f'<td class="num">{e["mean_score"]:.2f}</td><td class="num">{e["n_windows"]}</td>'
        f"{verdict_cell(e)}"
        f'<td class="src" title="{_e(e["source_uri"])}">{_e(e["source_uri"])}</td></tr>'
    )


def _unreadable_row(u: dict[str, Any]) -> str:
    return (
        f'<tr data-unreadable-source="{_e(u["source_uri"])}"><td>{_e(u["camera"])}</td>'
        f'<td class="when">{_e(_fmt_time(u["start_time"]))}</td>'
        f'<td class="num">{u["start_s"]:.1f} – {u["end_s"]:.1f}</td>'
        f'<td class="num">{_e(_fmt_dur(u["end_s"] - u["start_s"]))}</td>'
        f'<td>{_e(u["reason"])}</td><td>{_e(u["message"])}</td>'
        f'<td class="src">{_e(u["source_uri"])}</td></tr>'
    )


def _error_row(r: dict[str, Any]) -> str:
    return (
        f'<tr data-error-source="{_e(r["source_uri"])}"><td class="src">'
        f'{_e(r["source_uri"])}</td><td>{_e(r["stage"])}</td><td>{_e(r["error_type"])}'
        f'</td><td>{_e(r["message"])}</td></tr>'
    )


def _scans(manifests: list[dict[str, Any]]) -> list[str]:
    """One row per scan manifest (none when the output has no manifest)."""
    if not manifests:
        return []
    h = [
        "<h2>Scans</h2><table class='scans'><tr><th>scan</th><th>model</th><th>finished</th>"
        "<th>sources ok / failed / skipped</th><th>windows</th><th>events</th>"
        "<th>footage</th><th>footage h per h</th></tr>"
    ]
    for m in sorted(manifests, key=lambda m: str(m.get("scan_id"))):
        ok, failed, skipped = (m.get(k, "?") for k in
                               ("sources_ok", "sources_failed", "sources_skipped"))
        footage = m.get("footage_s")
        speed = m.get("footage_hours_per_hour")
        h.append(
            f"<tr><td>{_e(m.get('scan_id'))}</td><td>{_e(m.get('model_id'))}</td>"
            f"<td>{_e(m.get('finished_at', ''))}</td>"
            f"<td class='num'>{_e(ok)} / {_e(failed)} / {_e(skipped)}</td>"
            f"<td class='num'>{_e(m.get('windows', ''))}</td>"
            f"<td class='num'>{_e(m.get('events', ''))}</td>"
            f"<td class='num'>{_e(_fmt_dur(footage) if footage is not None else '')}</td>"
            f"<td class='num'>{_e(f'{speed:.1f}' if speed is not None else '')}</td></tr>"
        )
    h.append("</table>")
    return h


__all__ = ["LABEL_COLOURS", "Report", "build_report", "label_colours"]
