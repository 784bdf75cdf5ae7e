"""The one Arrow schema per table (docs/design.md §6).

Writers, readers and tests all use these objects; nothing else declares columns.
"""

from __future__ import annotations

import pyarrow as pa

_TS = pa.timestamp("us", tz="UTC")


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


# Where a window or event lies: seconds from the file start, and wall-clock times that are
# null when the recording start is unknown.
_SPAN = [
    _required("start_s", pa.float64()),
    _required("end_s", pa.float64()),
    pa.field("start_time", _TS),
    pa.field("end_time", _TS),
]
# Which model and which scan wrote a row of the scan output.
_WRITTEN_BY = [_required("model_id", pa.string()), _required("scan_id", pa.string())]

WINDOWS = pa.schema(
    [
        _required("source_uri", pa.string()),
        pa.field("camera", pa.string()),
        _required("window_index", pa.int32()),
        *_SPAN,
        _required("label", pa.string()),
        _required("score", pa.float32()),  # probability of `label`
        _required("probs", pa.list_(pa.float32())),  # in the model's class order
        _required("is_anomaly", pa.bool_()),
        _required("has_audio", pa.bool_()),
        *_WRITTEN_BY,
        # false: a cascade scan's screen passed the window over (label = the model's first
        # normal class, score 0, probs all 0); the full model never saw it
        _required("inferred", pa.bool_()),
        pa.field("screen_score", pa.float32()),  # the cascade's screen score; null: no screen
    ]
)

EVENTS = pa.schema(
    [
        _required("event_id", pa.string()),
        _required("source_uri", pa.string()),
        pa.field("camera", pa.string()),
        _required("label", pa.string()),
        *_SPAN,
        _required("peak_score", pa.float32()),
        _required("mean_score", pa.float32()),
        _required("n_windows", pa.int32()),
        pa.field("thumbnail", pa.binary()),  # small JPEG of the peak window
        *_WRITTEN_BY,
    ]
)

ERRORS = pa.schema(
    [
        _required("source_uri", pa.string()),
        _required("stage", pa.string()),  # list | probe | decode | infer | write
        _required("error_type", pa.string()),
        _required("message", pa.string()),
        _required("scan_id", pa.string()),
    ]
)

# Stretches of a scanned source that could not be decoded (corrupt data, a cut-off end, a
# segment whose decoder crashed): no window lies in one. Only sources with windows have them;
# a source with nothing readable is an error row instead.
UNREADABLE = pa.schema(
    [
        _required("source_uri", pa.string()),
        pa.field("camera", pa.string()),
        *_SPAN,
        _required("reason", pa.string()),  # an error type: DecodeFailed | Truncated | ...
        _required("message", pa.string()),
        *_WRITTEN_BY,
    ]
)

# A labelled clip manifest (what `avrl synth` writes and `avrl prepare` reads). Users may
# supply a CSV with at least uri and label; split defaults to "train", dark to false.
CLIPS = pa.schema(
    [
        _required("uri", pa.string()),
        _required("label", pa.string()),
        _required("split", pa.string()),  # train | test (| val)
        _required("dark", pa.bool_()),
        pa.field("seed", pa.int64()),
    ]
)

# Ground truth of the synthetic long recordings: one row per embedded event.
GROUND_TRUTH = pa.schema(
    [
        _required("source_uri", pa.string()),
        _required("camera", pa.string()),
        _required("label", pa.string()),
        _required("start_s", pa.float64()),
        _required("end_s", pa.float64()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "windows": WINDOWS, "events": EVENTS, "errors": ERRORS, "unreadable": UNREADABLE,
}
