"""``avrl calibrate``: train the cascade's screen (scan/screen.py) on labelled intervals of
recordings and write it into a copy of a model file.

The data is one or more interval tables as ``avrl prepare`` reads them (``uri``/``source_uri``,
``label``, ``start_s``, ``end_s``; the ground-truth table ``avrl synth`` writes is one): every
window of each listed recording is a training row, positive where it overlaps an interval of
one of the model's anomaly classes (``screen.POSITIVE_OVERLAP``), and labelled with that
class. The threshold of each head is set on out-of-fold scores (``screen.train_head``) for the
target recall — by default of the events (``recall_of``: one is seen when any of its
positive windows is a candidate) of each anomaly class on its own (``per_class``): pooled, a
class with few events or little motion and sound could be missed whole while the loud
classes keep the pooled recall up. The audio-visual head reads the model's own audio branch
(``screen.AudioNet``), so a screen belongs to the network it was calibrated with (its
``model_id``). The video-only head is fitted twice, with and without the keyframe
features, and keeps them only where the held-out windows they spare the full model outweigh
decoding them (:func:`_video_head`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from avrl_batch import storage
from avrl_batch.errors import DataError
from avrl_batch.scan import screen as scr


def calibrate(
    model_uri: str,
    data_uri: str | Sequence[str],
    out_uri: str,
    *,
    recall: float = scr.DEFAULT_RECALL,
    margin_windows: int = scr.DEFAULT_MARGIN_WINDOWS,
    per_class: bool = True,
    recall_of: str = "events",
    endpoint_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> scr.Screen:
    """Train and calibrate the screen of ``model_uri`` on the interval table(s) ``data_uri``;
    write the model file with it to ``out_uri``; return the screen."""
    from avrl_batch.modelfile import model_from_bytes, with_screen
    from avrl_batch.train.prepare import clip_duration

    if not 0 < recall <= 1:
        raise DataError(f"--recall must lie in (0, 1], got {recall}")
    if margin_windows < 0:
        raise DataError(f"--margin must be >= 0 windows, got {margin_windows}")
    if recall_of not in scr.RECALL_OF:
        raise DataError(f"--recall-of must be one of {', '.join(scr.RECALL_OF)}, got "
                        f"{recall_of!r}")
    tables = [data_uri] if isinstance(data_uri, str) else list(data_uri)
    if not tables:
        raise DataError("calibrate needs at least one interval table")
    data = storage.read_bytes(model_uri, endpoint_url=endpoint_url)
    loaded = model_from_bytes(data, source=model_uri)
    classes = loaded.cfg.classes
    anomaly = tuple(sorted(c for c in classes.names if classes.is_anomaly(c)))
    window_s = float(loaded.cfg.window_s)
    audio_net = scr.AudioNet.from_model(loaded.model, loaded.cfg)
    by_source = _spans_by_source(tables, anomaly, endpoint_url)
    video_x, video_y, video_e, av_x, av_y, av_e = [], [], [], [], [], []
    keyframes = 0
    events_by_class: dict[str, int] = {}
    for k, (source, spans) in enumerate(sorted(by_source.items()), start=1):
        duration = clip_duration(source, endpoint_url)
        feats = _features(source, duration, window_s, audio_net, endpoint_url)
        y = scr.window_classes(feats.start_s, feats.end_s, spans)  # (N,) 0 or class k
        ev = scr.window_events(feats.start_s, feats.end_s, [(a, b) for a, b, _ in spans])
        for e in np.unique(ev[ev > 0]):
            name = anomaly[spans[e - 1][2] - 1]
            events_by_class[name] = events_by_class.get(name, 0) + 1
        keyframes += feats.keyframes
        video_x.append(feats.video)
        video_y.append(y)
        video_e.append(ev)
        if feats.av is not None:
            av_x.append(feats.av)
            av_y.append(y)
            av_e.append(ev)
        if progress is not None:
            progress(f"{k}/{len(by_source)} {source}: {len(y)} windows, "
                     f"{int((y > 0).sum())} positive")
    y_all = np.concatenate(video_y)
    positives = int((y_all > 0).sum())
    if positives == 0:
        raise DataError(
            f"{', '.join(tables)}: no window overlaps an interval of the model's anomaly "
            f"classes ({', '.join(classes.anomaly)}); the screen needs some to learn from"
        )
    head = dict(recall=recall, margin=margin_windows, class_names=anomaly, per_class=per_class,
                recall_of_events=recall_of == "events")
    video, use_keyframes = _video_head(video_x, video_y, video_e, head,
                                       keyframes_per_window=keyframes / len(y_all))
    audio_net_dim = audio_net.dim if audio_net is not None else 0
    screen = scr.Screen(
        format=scr.SCREEN_FORMAT,
        model_id=loaded.model_id,
        window_s=window_s,
        target_recall=float(recall),
        per_class=bool(per_class),
        recall_of=recall_of,
        margin_windows=int(margin_windows),
        positive_overlap=scr.POSITIVE_OVERLAP,
        audio_net_dim=audio_net_dim,
        video_keyframes=use_keyframes,
        video=video,
        av=(
            scr.train_head(av_x, av_y, scr.av_features(audio_net_dim), events=av_e, **head)
            if av_y and any((y > 0).any() for y in av_y)
            else None
        ),
        trained_on=", ".join(tables),
        recordings=len(by_source),
        windows=len(y_all),
        positives=positives,
        positives_by_class={
            name: int((y_all == k).sum()) for k, name in enumerate(anomaly, start=1)
            if (y_all == k).any()
        },
        events_by_class=dict(sorted(events_by_class.items())),
    )
    storage.write_atomic(
        out_uri, with_screen(data, screen.to_dict(), source=model_uri), endpoint_url=endpoint_url
    )
    return screen


def _video_head(
    xs: list[np.ndarray], ys: list[np.ndarray], events: list[np.ndarray], head: dict[str, Any],
    keyframes_per_window: float = 1.0,
) -> tuple[scr.ScreenHead, bool]:
    """The video-only head, and whether it uses the keyframe features: fitted with them and
    without (packets alone, no picture decoded), the keyframes are kept when the share of
    held-out windows they spare is larger than what decoding them costs, in windows
    inferred (``screen.KEYFRAME_COST`` per keyframe, ``keyframes_per_window`` of them)."""
    with_keys = scr.train_head(xs, ys, scr.VIDEO_FEATURES, events=events, **head)
    packets = scr.train_head([scr.packet_columns(x) for x in xs], ys, scr.PACKET_FEATURES,
                             events=events, **head)
    spared = packets.val_pass_share - with_keys.val_pass_share
    if spared > scr.KEYFRAME_COST * keyframes_per_window:
        return with_keys, True
    return packets, False


def _spans_by_source(
    tables: list[str], anomaly: tuple[str, ...], endpoint_url: str | None
) -> dict[str, list[tuple[float, float, int]]]:
    """Each recording of the tables -> its anomaly intervals (start, end, class: 1 + the
    class's index in ``anomaly``), each once; a recording listed only with other labels has
    none."""
    from avrl_batch.train.intervals import intervals_of
    from avrl_batch.train.prepare import read_table, resolve_clip_uri

    by_source: dict[str, list[tuple[float, float, int]]] = {}
    for table in tables:
        rows = read_table(table, endpoint_url=endpoint_url)
        for iv in intervals_of(rows, table, resolve_clip_uri):
            spans = by_source.setdefault(iv.source, [])
            span = (iv.start_s, iv.end_s, anomaly.index(iv.label) + 1) if iv.label in anomaly \
                else None
            if span is not None and span not in spans:  # one event listed in two tables
                spans.append(span)
    return by_source


def _features(
    source: str, duration: float, window_s: float, audio_net: scr.AudioNet | None,
    endpoint_url: str | None,
) -> scr.WindowFeatures:
    from avrl_batch.media import open_media

    with open_media(source, endpoint_url=endpoint_url) as src:
        return scr.window_features(src, duration, window_s, window_s, keyframes=True,
                                   audio_net=audio_net)


def summary(screen: scr.Screen) -> dict[str, Any]:
    """What ``avrl calibrate`` prints: what it was calibrated on, and per head the threshold
    and its held-out figures (pooled and per class)."""
    heads = {"video": screen.video, "av": screen.av}
    return {
        "model_id": screen.model_id,
        "target_recall": screen.target_recall,
        "per_class": screen.per_class,
        "recall_of": screen.recall_of,
        "margin_windows": screen.margin_windows,
        "audio_net_dim": screen.audio_net_dim,
        "video_keyframes": screen.video_keyframes,
        "trained_on": screen.trained_on,
        "recordings": screen.recordings,
        "windows": screen.windows,
        "positives": screen.positives,
        "positives_by_class": screen.positives_by_class,
        "events_by_class": screen.events_by_class,
        "heads": {
            name: None if h is None else {
                "threshold": round(h.threshold, 6),
                "val_windows": h.val_windows,
                "val_positives": h.val_positives,
                "val_recall": round(h.val_recall, 4),
                "val_pass_share": round(h.val_pass_share, 4),
                "val_events": h.val_events,
                "val_event_recall": round(h.val_event_recall, 4),
                "val_recall_by_class": {k: round(v, 4) for k, v in
                                        h.val_recall_by_class.items()},
            }
            for name, h in heads.items()
        },
    }
