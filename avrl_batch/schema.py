"""Class names and the one Arrow schema per table (DESIGN.md §4).

Writers, readers and tests all use these objects; nothing else declares columns.
"""

from __future__ import annotations

import pyarrow as pa

# SHADE's nine classes, in the order of the model's outputs.
CLASS_NAMES: tuple[str, ...] = (
    "arrest",
    "chase",
    "fight",
    "knockdown",
    "run",
    "shoot",
    "scatter",
    "normal1",
    "normal2",
)
NORMAL_CLASSES: frozenset[str] = frozenset({"normal1", "normal2"})
ANOMALY_CLASSES: tuple[str, ...] = tuple(c for c in CLASS_NAMES if c not in NORMAL_CLASSES)


def is_anomaly(label: str) -> bool:
    return label not in NORMAL_CLASSES


_TS = pa.timestamp("us", tz="UTC")

WINDOWS = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("camera", pa.string()),
        pa.field("window_index", pa.int32(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_time", _TS),  # null when the recording start is unknown
        pa.field("end_time", _TS),
        pa.field("label", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # probability of `label`
        pa.field("probs", pa.list_(pa.float32()), nullable=False),  # in CLASS_NAMES order
        pa.field("is_anomaly", pa.bool_(), nullable=False),
        pa.field("has_audio", pa.bool_(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("scan_id", pa.string(), nullable=False),
    ]
)

EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("camera", pa.string()),
        pa.field("label", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("start_time", _TS),
        pa.field("end_time", _TS),
        pa.field("peak_score", pa.float32(), nullable=False),
        pa.field("mean_score", pa.float32(), nullable=False),
        pa.field("n_windows", pa.int32(), nullable=False),
        pa.field("thumbnail", pa.binary()),  # small JPEG of the peak window
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("scan_id", pa.string(), nullable=False),
    ]
)

ERRORS = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),  # list | probe | decode | infer | write
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("scan_id", pa.string(), nullable=False),
    ]
)

# A labelled clip manifest (what `avrl synth` writes and `avrl prepare` reads). Users may
# supply a CSV with at least uri and label; split defaults to "train", dark to false.
CLIPS = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | test (| val)
        pa.field("dark", pa.bool_(), nullable=False),
        pa.field("seed", pa.int64()),
    ]
)

# Ground truth of the synthetic long recordings: one row per embedded event.
GROUND_TRUTH = pa.schema(
    [
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("camera", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
    ]
)

TABLES: dict[str, pa.Schema] = {"windows": WINDOWS, "events": EVENTS, "errors": ERRORS}
