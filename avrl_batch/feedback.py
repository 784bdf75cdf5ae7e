"""Analyst verdicts (the report's ``verdicts.csv``) → labelled intervals to train on.

A confirmed event becomes an interval of its label (or of the label the analyst gave), a
false alarm an interval of a normal class (``normal_label``): exactly what the model must
learn to leave alone. The rows have the columns of the ground-truth table
(``source_uri,label,start_s,end_s``), which ``avrl prepare`` reads as an interval manifest.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from avrl_batch import storage
from avrl_batch.errors import DataError

VERDICTS = ("confirmed", "false_alarm", "other")
COLUMNS = ("source_uri", "label", "start_s", "end_s")


@dataclass(frozen=True)
class Verdict:
    event_id: str
    verdict: str
    label: str


@dataclass(frozen=True)
class Interval:
    source_uri: str
    label: str
    start_s: float
    end_s: float


def read_verdicts(text: str, *, name: str = "verdicts.csv") -> list[Verdict]:
    """Rows of ``event_id,verdict,label``; a malformed file is one line naming what is wrong."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"event_id", "verdict"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(f"{name} needs the columns event_id,verdict,label (missing: "
                        f"{', '.join(sorted(missing))})")
    out, seen = [], set()
    for n, row in enumerate(reader, start=2):
        event_id = (row.get("event_id") or "").strip()
        verdict = (row.get("verdict") or "").strip()
        label = (row.get("label") or "").strip()
        if verdict not in VERDICTS:
            raise DataError(f"{name} line {n}: verdict must be one of {', '.join(VERDICTS)}, "
                            f"got {verdict!r}")
        if verdict == "other" and not label:
            raise DataError(f"{name} line {n}: an 'other' verdict needs the label it should "
                            f"have (event {event_id})")
        if event_id in seen:
            raise DataError(f"{name} line {n}: event {event_id} has a second verdict")
        seen.add(event_id)
        out.append(Verdict(event_id, verdict, label))
    return out


def intervals_from_verdicts(
    out: str,
    verdicts: list[Verdict],
    *,
    normal_label: str | None,
    endpoint_url: str | None = None,
) -> list[Interval]:
    """The labelled interval of each verdict's event in the scan output ``out``."""
    from avrl_batch.query import run_query

    events = run_query(out, table="events", endpoint_url=endpoint_url)
    by_id = {
        e["event_id"]: e
        for e in events.select(["event_id", "source_uri", "label", "start_s", "end_s"])
        .to_pylist()
    }
    unknown = [v.event_id for v in verdicts if v.event_id not in by_id]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5
                                           else "")
        raise DataError(f"{len(unknown)} verdict(s) name events that are not in {out}: {shown} "
                        "(a report of another scan output, or events replaced by a rescan)")
    if normal_label is None and any(v.verdict == "false_alarm" for v in verdicts):
        raise DataError("false alarms become intervals of a normal class: name it with "
                        "--normal-label (e.g. normal1 for a SHADE model, or your own)")
    rows = []
    for v in verdicts:
        e = by_id[v.event_id]
        if v.verdict == "false_alarm":
            label = str(normal_label)
        elif v.verdict == "other":
            label = v.label
        else:
            label = v.label or e["label"]
        rows.append(Interval(e["source_uri"], label, float(e["start_s"]), float(e["end_s"])))
    return sorted(rows, key=lambda r: (r.source_uri, r.start_s, r.label))


def intervals_csv(rows: list[Interval]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.source_uri, r.label, f"{r.start_s:.3f}", f"{r.end_s:.3f}"])
    return buf.getvalue().encode()


def feedback(
    out: str,
    verdicts_uri: str,
    dest: str,
    *,
    normal_label: str | None,
    endpoint_url: str | None = None,
) -> list[Interval]:
    """Read ``verdicts_uri``, write the interval manifest to ``dest`` (CSV), return its rows."""
    text = storage.read_bytes(verdicts_uri, endpoint_url=endpoint_url).decode("utf-8-sig")
    rows = intervals_from_verdicts(
        out, read_verdicts(text, name=verdicts_uri), normal_label=normal_label,
        endpoint_url=endpoint_url,
    )
    storage.write_atomic(dest, intervals_csv(rows), endpoint_url=endpoint_url)
    return rows
