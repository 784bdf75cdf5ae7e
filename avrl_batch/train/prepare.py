"""``avrl prepare``: decode every clip of a labelled manifest once into tensor shards.

The manifest lists pre-cut clips (``uri, label[, split, dark]``) or labelled intervals of long
recordings (``uri|source_uri, label, start_s, end_s[, split, dark]``), which
``train/intervals.py`` cuts into one-window clips. The classes come from the manifest's labels
(``--classes`` fixes their order, ``--normal`` names the normal ones; labels that are all
SHADE's give SHADE's nine classes, ``classes.SHADE``).

Training reads the shards for every epoch, so 80 epochs decode each clip once, not 80 times.

Layout of a prepared dataset ``OUT``::

    OUT/prepared.json                               geometry, classes, counts, shards, skipped
    OUT/shards/<prepare_id>/split=<split>/*.parquet one row per clip (SHARD_COLUMNS)

A shard row holds ``frames`` uint8 (T, H, W, 3) and ``logmel`` float16 (E, 96, 64) as Ray Data's
fixed-shape tensor extension type (stored as a large_list with the shape in the field metadata,
so plain pyarrow reads them too: :func:`read_split`), ``label`` (class index), ``has_audio``,
``dark`` and ``uri``. ``prepared.json`` is written last: a crashed prepare leaves no dataset that
looks complete, and a rerun writes a fresh ``prepare_id`` instead of mixing shards.

Clip sampling follows the paper: T frames at a fixed step over the *whole* clip, and the audio of
the whole clip padded or trimmed to E log-mel examples (E = the preset window's count).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from avrl_batch import storage
from avrl_batch.classes import SHADE, ClassSet
from avrl_batch.config import ModelConfig
from avrl_batch.errors import AvrlError, DataError, StorageError
from avrl_batch.train.intervals import IntervalOptions, cut_clips, intervals_of, is_interval_table

PREPARED_NAME = "prepared.json"
FORMAT = "avrl-prepared"
VERSION = 1
SPLITS = ("train", "val", "test")
# the columns a training worker streams (uri and split stay in the shard for evaluation)
TENSOR_COLUMNS = ("frames", "logmel", "label", "has_audio")


@dataclass(frozen=True)
class PreparedData:
    """What ``prepared.json`` says about a prepared dataset (paths relative to ``uri``)."""

    uri: str
    prepare_id: str
    preset: str
    frames: int
    size: int
    window_s: float
    audio_examples: int
    class_names: tuple[str, ...]
    manifest: str
    counts: dict[str, dict[str, int]]  # split -> label -> clips
    shards: dict[str, list[str]]  # split -> shard files relative to uri
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"uri", "reason"}
    val_from_train: int = 0  # clips moved from train to val because the manifest had no val
    created: str = ""
    normal_classes: tuple[str, ...] = ()  # empty in a dataset of SHADE's classes made earlier

    @property
    def classes(self) -> ClassSet:
        return ClassSet.of(self.class_names, self.normal_classes or None)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("uri")
        return json.dumps({"format": FORMAT, "version": VERSION, **data}, indent=2)

    def shard_uris(self, split: str) -> list[str]:
        return [storage.join(self.uri, rel) for rel in self.shards.get(split, [])]

    def n_clips(self, split: str) -> int:
        return sum(self.counts.get(split, {}).values())

    def check_fits(self, cfg: ModelConfig) -> None:
        """Raise DataError unless the shards have the geometry and classes ``cfg`` expects."""
        have = (self.frames, self.size, self.audio_examples)
        need = (cfg.frames, cfg.size, cfg.audio_examples)
        if have != need:
            raise DataError(
                f"{self.uri} was prepared with T={have[0]} frames of {have[1]}x{have[1]} and "
                f"E={have[2]} audio examples, but preset {cfg.preset!r} needs T={need[0]}, "
                f"{need[1]}x{need[1]}, E={need[2]}; rerun `avrl prepare --preset {cfg.preset}`"
            )
        if self.classes != cfg.classes:
            raise DataError(
                f"{self.uri}: classes {list(self.class_names)} (normal: "
                f"{', '.join(sorted(self.classes.normal))}) differ from the model's "
                f"{list(cfg.class_names)} (normal: {', '.join(sorted(cfg.classes.normal))})"
            )


def load_prepared(uri: str, *, endpoint_url: str | None = None) -> PreparedData:
    """Read ``URI/prepared.json``; a missing or foreign file is one DataError line."""
    target = storage.join(uri, PREPARED_NAME)
    try:
        raw = storage.read_bytes(target, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise DataError(
            f"no prepared dataset at {uri} ({exc}); "
            f"make one with `avrl prepare MANIFEST --out {uri}`"
        ) from exc
    try:
        data = json.loads(raw)
        if data.pop("format") != FORMAT or data.pop("version") != VERSION:
            raise ValueError("wrong format or version")
        data["class_names"] = tuple(data["class_names"])
        data["normal_classes"] = tuple(data.get("normal_classes") or ())
        return PreparedData(uri=uri, **data)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{target} is not an avrl prepared-data manifest ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# the clip manifest


def resolve_clip_uri(manifest_uri: str, uri: str) -> str:
    """A clip URI as given (absolute path, file:// or s3://), else relative to the manifest's
    folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    if "://" in base:
        # an s3 key or file URI: join textually (storage.join refuses '..' on purpose)
        return f"{base}/{posixpath.normpath(uri)}"
    return posixpath.normpath(posixpath.join(base, uri))


def read_table(manifest_uri: str, *, endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """The rows of a Parquet or CSV manifest; a missing or unreadable one is one DataError."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        raw = storage.read_bytes(manifest_uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise DataError(
            f"manifest not found: {manifest_uri} ({exc}); make one with `avrl synth OUT` or "
            "write a CSV with columns uri,label[,split,dark] (or uri,label,start_s,end_s)"
        ) from exc
    try:
        if manifest_uri.lower().endswith(".csv"):
            table = pacsv.read_csv(io.BytesIO(raw))
        else:
            table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
        raise DataError(
            f"{manifest_uri}: not a readable Parquet or CSV manifest ({str(exc).splitlines()[0]})"
        ) from exc
    if "label" not in table.column_names or not (
        {"uri", "source_uri"} & set(table.column_names)
    ):
        raise DataError(
            f"{manifest_uri}: missing column(s); need uri,label (clips) or "
            "uri,label,start_s,end_s (intervals of recordings)"
        )
    return table.to_pylist()


def manifest_classes(
    labels: list[str], classes: tuple[str, ...] | None, normal: tuple[str, ...] | None
) -> ClassSet:
    """The class set of a manifest's ``labels``: ``classes`` in that order if given, else
    SHADE's nine when every label is SHADE's and no ``normal`` is given, else the labels
    sorted; ``normal`` names the normal ones (needed unless the classes are SHADE's)."""
    if classes is None and normal is None and set(labels) <= set(SHADE.names):
        return SHADE
    names = tuple(classes) if classes else tuple(sorted(set(labels)))
    return ClassSet.of(names, normal)


def read_manifest(
    manifest_uri: str,
    classes: ClassSet | None = None,
    *,
    intervals: IntervalOptions | None = None,
    normal: tuple[str, ...] | None = None,
    order: tuple[str, ...] | None = None,
    endpoint_url: str | None = None,
) -> tuple[list[dict[str, Any]], ClassSet]:
    """Clip rows {uri, source, start_s, label, label_index, split, dark[, recording]} of a
    clip or interval manifest and its class set (``classes``, or from the labels with
    ``order``/``normal``: :func:`manifest_classes`).

    Clips: ``uri`` and ``label`` required, ``split`` defaults to ``train``, ``dark`` to false,
    ``start_s`` is None (the whole clip). Intervals: cut by ``intervals`` (default: the
    defaults of IntervalOptions at a 2-s window). An unknown label or split is a DataError
    naming the first offending row.
    """
    table = read_table(manifest_uri, endpoint_url=endpoint_url)
    if not (table and is_interval_table(list(table[0]))):
        if intervals is not None and intervals.background:
            raise DataError(
                f"{manifest_uri}: --background samples the unannotated stretches of recordings; "
                "it needs an interval manifest (columns start_s, end_s)"
            )
        rows = [
            {"uri": str(r.get("uri") or r.get("source_uri")), "start_s": None,
             "label": r["label"], "split": r.get("split"), "dark": r.get("dark")}
            for r in table
        ]
        for r in rows:
            r["source"] = resolve_clip_uri(manifest_uri, r["uri"])
        if classes is None:
            classes = manifest_classes([str(r["label"]).strip() for r in rows], order, normal)
    else:
        opts = intervals or IntervalOptions(window_s=2.0)
        ivs = intervals_of(table, manifest_uri, resolve_clip_uri)
        if classes is None:
            labels = [iv.label for iv in ivs] + ([opts.background] if opts.background else [])
            classes = manifest_classes(labels, order, normal)
        if opts.background and opts.background not in classes.normal:
            raise DataError(
                f"--background {opts.background!r} must be a normal class: add --normal "
                f"{opts.background}"
            )
        for n, iv in enumerate(ivs, start=1):  # the user's row numbers, before any decoding
            _checked_row(manifest_uri, n, {"uri": iv.recording, "label": iv.label,
                                           "split": iv.split, "dark": iv.dark}, classes)
        rows = cut_clips(ivs, opts, lambda src: clip_duration(src, endpoint_url))
    out = [_checked_row(manifest_uri, n, r, classes) for n, r in enumerate(rows, start=1)]
    if not out:
        raise DataError(f"{manifest_uri}: the manifest lists no clips")
    return out, classes


def _checked_row(manifest_uri: str, n: int, row: dict[str, Any], classes: ClassSet) -> dict:
    label = str(row["label"]).strip()
    if label not in classes.names:
        raise DataError(
            f"{manifest_uri}: unknown label {label!r} in row {n} ({row['uri']}); "
            f"known labels: {', '.join(classes.names)}"
        )
    split = str(row.get("split") or "train").strip()
    if split not in SPLITS:
        raise DataError(
            f"{manifest_uri}: unknown split {split!r} in row {n} ({row['uri']}); "
            f"use one of {', '.join(SPLITS)}"
        )
    dark = row.get("dark")
    if isinstance(dark, str):
        dark = dark.strip().lower() in ("1", "true", "yes")
    return {**row, "label": label, "label_index": classes.index_of(label), "split": split,
            "dark": bool(dark)}


def carve_val(rows: list[dict[str, Any]], fraction: float) -> int:
    """Move a deterministic, per-class ``fraction`` of train clips to ``val`` (in place) when the
    manifest has no val split: the plateau schedule needs a validation loss that is not the test
    set's. Chosen by a hash of the URI so reruns pick the same clips. Returns how many moved."""
    if fraction <= 0 or any(r["split"] == "val" for r in rows):
        return 0
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        # clips cut from recordings were split by recording: never move one of them alone
        if r["split"] == "train" and "recording" not in r:
            by_label.setdefault(r["label"], []).append(r)
    moved = 0
    for clips in by_label.values():
        if len(clips) < 3:  # keep at least two training clips of a class
            continue
        clips.sort(key=lambda r: hashlib.sha1(r["uri"].encode()).hexdigest())
        for r in clips[: max(1, round(len(clips) * fraction))]:
            r["split"] = "val"
            moved += 1
    return moved


# ---------------------------------------------------------------------------------------------
# decoding one clip (runs in Ray Data tasks; pure media calls)


def _open(source: str, endpoint_url: str | None) -> Any:
    p = storage.parse_uri(source)
    return p.path if p.scheme == "file" else storage.open_source(source, endpoint_url=endpoint_url)


def clip_duration(source: str, endpoint_url: str | None = None) -> float:
    """A media file's duration in seconds (probe)."""
    from avrl_batch.media import probe

    return float(probe(_open(source, endpoint_url)).duration_s)


def decode_clip(
    source: str,
    *,
    frames: int,
    size: int,
    audio_examples: int,
    start_s: float | None = None,
    window_s: float = 2.0,
    endpoint_url: str | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """frames uint8 (T, size, size, 3) sampled over the whole clip, log-mel float16
    (E, 96, 64) of the whole clip's audio padded/trimmed to E examples, and has_audio.
    With ``start_s``: the clip is the ``window_s`` window of a recording starting there,
    decoded exactly as a scan decodes that window."""
    from avrl_batch.media import iter_windows
    from avrl_batch.media.errors import Truncated

    if start_s is None:
        # one window spanning the whole clip: frames and audio in a single decoding pass
        start_s = 0.0
        window_s = clip_duration(source, endpoint_url)
    for w in iter_windows(
        _open(source, endpoint_url),
        start_s,
        start_s + window_s * 0.5,
        window_s=window_s,
        stride_s=window_s,
        frames=frames,
        size=size,
        audio=True,
        n_examples=audio_examples,
    ):
        video = np.ascontiguousarray(w.frames, dtype=np.uint8)  # (T, size, size, 3)
        if w.logmel is None or not w.has_audio:
            logmel = np.zeros((audio_examples, 96, 64), np.float16)  # ignored: has_audio False
            return video, logmel, False
        return video, w.logmel.astype(np.float16), True  # (E, 96, 64)
    raise Truncated(source, "no frames in the clip")


def _decode_row(
    row: dict[str, Any],
    *,
    frames: int,
    size: int,
    audio_examples: int,
    window_s: float,
    endpoint_url: str | None,
) -> dict[str, Any]:
    error = ""
    try:
        video, logmel, has_audio = decode_clip(
            row["source"],
            frames=frames,
            size=size,
            audio_examples=audio_examples,
            start_s=row["start_s"],
            window_s=window_s,
            endpoint_url=endpoint_url,
        )
    except AvrlError as exc:  # MediaError, StorageError: the reason a user can act on
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - anything else is still listed, never silent
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if error:
        video = np.zeros((frames, size, size, 3), np.uint8)
        logmel = np.zeros((audio_examples, 96, 64), np.float16)
        has_audio = False
    return {
        "frames": video,
        "logmel": logmel,
        "label": np.int64(row["label_index"]),
        "has_audio": bool(has_audio),
        "dark": bool(row["dark"]),
        "split": row["split"],
        "uri": row["uri"],
        "error": error[:500],
    }


# ---------------------------------------------------------------------------------------------
# the job


def prepare(
    manifest_uri: str,
    out_uri: str,
    cfg: ModelConfig,
    *,
    endpoint_url: str | None = None,
    val_fraction: float = 0.1,
    classes: tuple[str, ...] | None = None,
    normal: tuple[str, ...] | None = None,
    intervals: IntervalOptions | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> PreparedData:
    """Decode every clip of ``manifest_uri`` in parallel (Ray Data) into shards under ``out_uri``.

    ``classes`` fixes the class order and ``normal`` names the normal classes
    (:func:`manifest_classes`); ``intervals`` says how an interval manifest is cut (default:
    ``cfg``'s window, half-window stride, no background, ``val_fraction`` of the recordings
    to val). Corrupt or unreadable clips are skipped and listed (``log`` and ``skipped`` in
    the JSON).
    """
    from avrl_batch.cluster import connect, quiet_ray_data

    opts = intervals or IntervalOptions(window_s=cfg.window_s, val_fraction=val_fraction)
    rows, found, moved = _training_rows(
        manifest_uri, opts, val_fraction, classes, normal, endpoint_url
    )
    cfg = cfg.with_classes(found)
    connect(address)
    quiet_ray_data()
    ds = _decode(rows, cfg, endpoint_url)
    meta = ds.select_columns(["uri", "label", "split", "error"]).take_all()
    skipped = [{"uri": m["uri"], "reason": m["error"]} for m in meta if m["error"]]
    for s in skipped:
        log(f"skipped corrupt clip {s['uri']}: {s['reason']}")
    good = [m for m in meta if not m["error"]]
    counts = _counts(good, cfg.class_names)
    if not counts.get("train"):
        raise DataError(
            f"{manifest_uri}: no usable 'train' clips ({len(skipped)} skipped as unreadable)"
        )
    prepare_id = uuid.uuid4().hex[:12]
    shards = _write_shards(ds, out_uri, prepare_id, list(counts), len(good), endpoint_url)
    prepared = PreparedData(
        uri=out_uri,
        prepare_id=prepare_id,
        preset=cfg.preset,
        frames=cfg.frames,
        size=cfg.size,
        window_s=cfg.window_s,
        audio_examples=cfg.audio_examples,
        class_names=tuple(cfg.class_names),
        normal_classes=tuple(cfg.normal_classes),
        manifest=manifest_uri,
        counts=counts,
        shards=shards,
        skipped=skipped,
        val_from_train=moved,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    storage.write_atomic(
        storage.join(out_uri, PREPARED_NAME), prepared.to_json().encode(), endpoint_url=endpoint_url
    )
    return prepared


def _training_rows(
    manifest_uri: str,
    opts: IntervalOptions,
    val_fraction: float,
    order: tuple[str, ...] | None,
    normal: tuple[str, ...] | None,
    endpoint_url: str | None,
) -> tuple[list[dict[str, Any]], ClassSet, int]:
    """The manifest's clip rows with a val split carved from train if it has none, in a fixed
    shuffled order; their class set; and how many clips moved to val."""
    rows, classes = read_manifest(
        manifest_uri, intervals=opts, order=order, normal=normal, endpoint_url=endpoint_url
    )
    if not any(r["split"] == "train" for r in rows):
        raise DataError(f"{manifest_uri}: no clips in the 'train' split; label some as split=train")
    moved = carve_val(rows, val_fraction)
    # manifests are usually grouped by class; shards in that order would feed SGD single-class
    # batches wherever the trainer can only shuffle locally (large, streamed data sets)
    random.Random(0).shuffle(rows)
    return rows, classes, moved


def _decode(rows: list[dict[str, Any]], cfg: ModelConfig, endpoint_url: str | None) -> Any:
    """Every row decoded once (``_decode_row``) into a materialised Ray dataset, in row order."""
    import ray.data

    geometry = {"frames": cfg.frames, "size": cfg.size, "audio_examples": cfg.audio_examples,
                "window_s": cfg.window_s}
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 64))
    # shards keep the shuffled manifest order rather than task-completion order, so preparing
    # one manifest twice gives the same shards and `avrl train --seed` the same model; the
    # setting is this dataset's (and its descendants'), not the process's
    ds.context.execution_options.preserve_order = True
    ds = ds.map(_decode_row, fn_kwargs={**geometry, "endpoint_url": endpoint_url})
    return ds.materialize()  # decoded once; metadata and shards are both read from it


def _counts(good: list[dict[str, Any]], class_names: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """split -> label -> clips of the decoded rows, in sorted (split, label index) order."""
    counts: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(Counter((m["split"], int(m["label"])) for m in good).items()):
        counts.setdefault(split, {})[class_names[label]] = n
    return counts


def _write_shards(
    ds: Any,
    out_uri: str,
    prepare_id: str,
    splits: list[str],
    n_good: int,
    endpoint_url: str | None,
) -> dict[str, list[str]]:
    """The readable clips as Parquet shards under OUT/shards/<prepare_id>/split=<split>/;
    returns split -> shard files relative to ``out_uri``."""
    from ray.data.expressions import col

    shard_root = storage.join(out_uri, "shards", prepare_id)
    fs, fs_path = storage.filesystem(shard_root, endpoint_url=endpoint_url)
    (
        ds.filter(expr=col("error") == "")
        .drop_columns(["error"])
        .repartition(max(1, n_good // 256))  # ~256 clips a shard, not one file per task
        .write_parquet(fs_path, filesystem=fs, partition_cols=["split"])
    )
    prefix = out_uri.rstrip("/") + "/"
    shards: dict[str, list[str]] = {}
    for split in splits:
        files = storage.list_files(
            storage.join(shard_root, f"split={split}"), suffix=".parquet", endpoint_url=endpoint_url
        )
        shards[split] = [_relative(f, prefix, out_uri) for f in files]
    return shards


def _relative(file_uri: str, prefix: str, out_uri: str) -> str:
    # list_files gives absolute paths for local roots: compare in the same form
    p_out = storage.parse_uri(out_uri)
    p_file = storage.parse_uri(file_uri)
    if p_out.scheme == "file":
        return posixpath.relpath(p_file.path, p_out.path)
    return file_uri[len(prefix) :]


# ---------------------------------------------------------------------------------------------
# reading shards without Ray (evaluation, tests)


def read_split(
    prepared: PreparedData, split: str, *, endpoint_url: str | None = None
) -> dict[str, np.ndarray]:
    """All rows of one split as arrays: frames (N,T,H,W,3) u8, logmel (N,E,96,64) f16,
    label (N,), has_audio (N,), dark (N,), uri (N,). Raises DataError if the split is empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = prepared.shard_uris(split)
    if not files:
        have = ", ".join(f"{s} ({prepared.n_clips(s)})" for s in prepared.counts) or "none"
        raise DataError(f"{prepared.uri} has no '{split}' clips; splits present: {have}")
    tables = []
    for f in files:
        fs, path = storage.filesystem(f, endpoint_url=endpoint_url)
        cols = ["frames", "logmel", "label", "has_audio", "dark", "uri"]
        tables.append(pq.read_table(path, filesystem=fs, columns=cols))
    table = pa.concat_tables(tables, promote_options="permissive")
    n = table.num_rows
    t, s, e = prepared.frames, prepared.size, prepared.audio_examples

    def tensor(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        col = table.column(name).combine_chunks()
        if isinstance(col.type, pa.ExtensionType):  # Ray registered its tensor type
            col = col.storage
        values = col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        if not values.flags.writeable:  # Arrow buffers are read-only; torch wants writable
            values = values.copy()
        return values.reshape((n, *shape))

    return {
        "frames": tensor("frames", (t, s, s, 3), np.uint8),  # (N, T, H, W, 3)
        "logmel": tensor("logmel", (e, 96, 64), np.float16),  # (N, E, 96, 64)
        "label": table.column("label").to_numpy().astype(np.int64),
        "has_audio": table.column("has_audio").to_numpy(zero_copy_only=False).astype(bool),
        "dark": table.column("dark").to_numpy(zero_copy_only=False).astype(bool),
        "uri": np.asarray(table.column("uri").to_pylist(), dtype=object),
    }
