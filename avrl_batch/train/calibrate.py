"""``avrl calibrate``: train the cascade's screen (scan/screen.py) on labelled intervals of
recordings and write it into a copy of a model file.

The data is an interval table as ``avrl prepare`` reads it (``uri``/``source_uri``, ``label``,
``start_s``, ``end_s``; the ground-truth table ``avrl synth`` writes is one): every window of
each listed recording is a training row, positive where it overlaps an interval of one of the
model's anomaly classes (``screen.POSITIVE_OVERLAP``). The threshold of each head is set on
out-of-fold scores (``screen.train_head``) for the target recall.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avrl_batch import storage
from avrl_batch.errors import DataError
from avrl_batch.scan import screen as scr


def calibrate(
    model_uri: str,
    data_uri: str,
    out_uri: str,
    *,
    recall: float = scr.DEFAULT_RECALL,
    margin_windows: int = scr.DEFAULT_MARGIN_WINDOWS,
    endpoint_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> scr.Screen:
    """Train and calibrate the screen of ``model_uri`` on ``data_uri``; write the model file
    with it to ``out_uri``; return the screen."""
    from avrl_batch.modelfile import model_from_bytes, with_screen
    from avrl_batch.train.intervals import intervals_of
    from avrl_batch.train.prepare import clip_duration, read_table, resolve_clip_uri

    if not 0 < recall <= 1:
        raise DataError(f"--recall must lie in (0, 1], got {recall}")
    if margin_windows < 0:
        raise DataError(f"--margin must be >= 0 windows, got {margin_windows}")
    data = storage.read_bytes(model_uri, endpoint_url=endpoint_url)
    loaded = model_from_bytes(data, source=model_uri)
    classes = loaded.cfg.classes
    window_s = float(loaded.cfg.window_s)
    intervals = intervals_of(read_table(data_uri, endpoint_url=endpoint_url), data_uri,
                             resolve_clip_uri)
    by_source: dict[str, list[tuple[float, float]]] = {}
    for iv in intervals:
        spans = by_source.setdefault(iv.source, [])
        if iv.label in classes.names and classes.is_anomaly(iv.label):
            spans.append((iv.start_s, iv.end_s))
    video_x, video_y, av_x, av_y = [], [], [], []
    for k, (source, spans) in enumerate(sorted(by_source.items()), start=1):
        duration = clip_duration(source, endpoint_url)
        feats = _features(source, duration, window_s, endpoint_url)
        y = scr.window_labels(feats.start_s, feats.end_s, spans)
        assert feats.video is not None  # keyframes=True
        video_x.append(feats.video)
        video_y.append(y)
        if feats.av is not None:
            av_x.append(feats.av)
            av_y.append(y)
        if progress is not None:
            progress(f"{k}/{len(by_source)} {source}: {len(y)} windows, {int(y.sum())} positive")
    positives = int(sum(y.sum() for y in video_y))
    if positives == 0:
        raise DataError(
            f"{data_uri}: no window overlaps an interval of the model's anomaly classes "
            f"({', '.join(classes.anomaly)}); the screen needs some to learn from"
        )
    screen = scr.Screen(
        format=scr.SCREEN_FORMAT,
        window_s=window_s,
        target_recall=float(recall),
        margin_windows=int(margin_windows),
        positive_overlap=scr.POSITIVE_OVERLAP,
        video=scr.train_head(video_x, video_y, scr.VIDEO_FEATURES, recall, margin_windows),
        av=(
            scr.train_head(av_x, av_y, scr.AV_FEATURES, recall, margin_windows)
            if av_y and sum(y.sum() for y in av_y) > 0
            else None
        ),
        trained_on=data_uri,
        recordings=len(by_source),
        windows=int(sum(len(y) for y in video_y)),
        positives=positives,
    )
    storage.write_atomic(
        out_uri, with_screen(data, screen.to_dict(), source=model_uri), endpoint_url=endpoint_url
    )
    return screen


def _features(source: str, duration: float, window_s: float, endpoint_url: str | None) -> Any:
    from avrl_batch.media import open_media

    with open_media(source, endpoint_url=endpoint_url) as src:
        return scr.window_features(src, duration, window_s, window_s, keyframes=True)


def summary(screen: scr.Screen) -> dict[str, Any]:
    """What ``avrl calibrate`` prints: per head the threshold and its held-out figures."""
    heads = {"video": screen.video, "av": screen.av}
    return {
        "target_recall": screen.target_recall,
        "margin_windows": screen.margin_windows,
        "recordings": screen.recordings,
        "windows": screen.windows,
        "positives": screen.positives,
        "heads": {
            name: None if h is None else {
                "threshold": round(h.threshold, 6),
                "val_windows": h.val_windows,
                "val_positives": h.val_positives,
                "val_recall": round(h.val_recall, 4),
                "val_pass_share": round(h.val_pass_share, 4),
            }
            for name, h in heads.items()
        },
    }
