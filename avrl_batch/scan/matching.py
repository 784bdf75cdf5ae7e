"""Event quality: predicted events against ground truth by temporal IoU.

Matching rule: a predicted event and a true event can match only when they are in the
same source and have the same label (a "fight" found where a "chase" happened is both a
false positive and a false negative), and their temporal IoU
``|A ∩ B| / |A ∪ B|`` is at least the threshold (``>=``, with 1e-9 of tolerance so that
an IoU equal to the threshold on paper is equal in floating point too). Candidate pairs
are taken greedily from the highest IoU down, each event matched at most once, so two
predictions on one true event give one true positive and one false positive.

Sources are compared as written, except that ``file://`` is stripped, so a local path and
its file URI name the same recording.

Empty cases: precision is 1 when nothing was predicted and recall is 1 when there was
nothing to find (so no events and no truth score F1 = 1, and predictions with no truth
score precision 0).

:func:`match_scan` / :func:`match_output` score a scan's events (read from its output)
against a ground-truth table: the figures ``avrl scan --truth`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from avrl_batch.scan.pipeline import ScanSummary

_IOU_TOLERANCE = 1e-9
SCAN_IOU = 0.3  # the temporal IoU at which a scan's events are scored


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass(frozen=True)
class MatchResult(Counts):
    """Overall counts and scores, ``per_label`` counts, and the matched (pred, truth) index
    pairs (positions in the inputs)."""

    per_label: dict[str, Counts] = field(default_factory=dict)
    pairs: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Span:
    source: str
    label: str
    start_s: float
    end_s: float


def _source_key(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _spans(events: pa.Table | Iterable[Any]) -> list[_Span]:
    """Accepts a table with source_uri/label/start_s/end_s, dicts with those keys, or
    (source, label, start_s, end_s) tuples."""
    if isinstance(events, pa.Table):
        events = events.select(["source_uri", "label", "start_s", "end_s"]).to_pylist()
    out = []
    for e in events:
        if isinstance(e, Mapping):
            src = e["source_uri"] if "source_uri" in e else e["source"]
            out.append(_Span(_source_key(src), e["label"], float(e["start_s"]), float(e["end_s"])))
        else:
            src, label, s, t = e
            out.append(_Span(_source_key(src), label, float(s), float(t)))
    return out


def temporal_iou(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    inter = max(0.0, min(a_end, b_end) - max(a_start, b_start))
    union = max(a_end, b_end) - min(a_start, b_start)
    return inter / union if union > 0 else 0.0


def match_events(
    pred: pa.Table | Iterable[Any], truth: pa.Table | Iterable[Any], iou: float = 0.3
) -> MatchResult:
    """Greedy one-to-one matching of predicted to true events (see the module docstring)."""
    p, t = _spans(pred), _spans(truth)
    candidates: list[tuple[float, int, int]] = []
    by_key: dict[tuple[str, str], list[int]] = {}
    for j, ts in enumerate(t):
        by_key.setdefault((ts.source, ts.label), []).append(j)
    for i, ps in enumerate(p):
        for j in by_key.get((ps.source, ps.label), []):
            v = temporal_iou(ps.start_s, ps.end_s, t[j].start_s, t[j].end_s)
            if v > 0 and v >= iou - _IOU_TOLERANCE:
                candidates.append((v, i, j))
    # highest IoU first; ties broken by input order so the result is deterministic
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for _, i, j in candidates:
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            pairs.append((i, j))
    pairs.sort()

    per_label: dict[str, Counts] = {}
    for label in sorted({s.label for s in p} | {s.label for s in t}):
        tp = sum(1 for i, _ in pairs if p[i].label == label)
        per_label[label] = Counts(
            tp=tp,
            fp=sum(1 for s in p if s.label == label) - tp,
            fn=sum(1 for s in t if s.label == label) - tp,
        )
    tp = len(pairs)
    return MatchResult(tp=tp, fp=len(p) - tp, fn=len(t) - tp, per_label=per_label, pairs=pairs)


def match_scan(
    summary: ScanSummary,
    truth: str,
    *,
    endpoint_url: str | None = None,
    iou: float = SCAN_IOU,
) -> dict[str, Any]:
    """:func:`match_output` for the scan ``summary`` describes: its model's events on the
    sources it listed (scanned, failed or skipped as done before)."""
    listed = [u for outcome in ("ok", "failed", "skipped")
              for u in summary.sources.get(outcome, [])]
    return match_output(
        summary.out, truth, model_id=summary.model_id, sources=listed,
        endpoint_url=endpoint_url, iou=iou,
    )


def match_output(
    out: str,
    truth: str,
    *,
    model_id: str,
    sources: Sequence[str],
    endpoint_url: str | None = None,
    iou: float = SCAN_IOU,
) -> dict[str, Any]:
    """Precision, recall and F1 (and tp/fp/fn) of the events under the scan output ``out``
    against ``truth`` (Parquet or CSV with source_uri, label, start_s, end_s; local or s3://)
    at temporal IoU ``iou``.

    ``out`` may also hold other models' events (a rerun with a retrained model keeps both)
    and other archives' sources: only events of ``model_id`` on ``sources`` count, and only
    the truth of those sources."""
    pred = _scan_events(out, endpoint_url, model_id=model_id, sources=list(sources))
    gt = truth_events(truth, endpoint_url, sources=list(sources))
    res = match_events(pred, gt, iou=iou)
    return {
        "iou": iou,
        "precision": round(res.precision, 4),
        "recall": round(res.recall, 4),
        "f1": round(res.f1, 4),
        "tp": res.tp,
        "fp": res.fp,
        "fn": res.fn,
    }


def _scan_events(
    out: str, endpoint_url: str | None, *, model_id: str, sources: list[str]
) -> pa.Table:
    """Every events object under ``out`` (EVENTS schema), kept to ``model_id`` on ``sources``."""
    import pyarrow.compute as pc

    from avrl_batch.query import OutputTree, QueryFilters

    # per-source and compacted events objects alike (a compacted source's hidden rows left out)
    tree = OutputTree.open(out, endpoint_url=endpoint_url, require=False)
    pred = tree.read_table("events", QueryFilters())
    pred = pred.filter(pc.equal(pred["model_id"], model_id))
    return pred.filter(pc.is_in(pred["source_uri"], pa.array(sources, pa.string())))


def truth_events(truth: str, endpoint_url: str | None, *, sources: list[str]) -> pa.Table:
    """The ground-truth table with canonical source URIs, kept to ``sources``."""
    import io
    import os

    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from avrl_batch import storage
    from avrl_batch.data.synth import resolve_uri

    data = storage.read_bytes(truth, endpoint_url=endpoint_url)
    gt = (
        pacsv.read_csv(io.BytesIO(data))
        if truth.lower().endswith(".csv")
        else pq.read_table(io.BytesIO(data))
    )
    # `avrl synth` writes URIs relative to the truth table's folder; the scan writes the
    # canonical URIs that storage lists (absolute paths, s3://...)
    base = truth if "://" in truth else os.path.abspath(truth)
    uris = [resolve_uri(base, u) for u in gt.column("source_uri").to_pylist()]
    gt = gt.set_column(gt.schema.get_field_index("source_uri"), "source_uri", pa.array(uris))
    return gt.filter(pc.is_in(gt["source_uri"], pa.array(sources, pa.string())))
