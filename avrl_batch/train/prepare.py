"""``avrl prepare``: decode every clip of a labelled manifest once into tensor shards.

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
from avrl_batch.config import ModelConfig
from avrl_batch.errors import AvrlError, DataError, StorageError

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
        if tuple(self.class_names) != tuple(cfg.class_names):
            raise DataError(
                f"{self.uri}: classes {list(self.class_names)} differ from the model's "
                f"{list(cfg.class_names)}"
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


def read_manifest(
    manifest_uri: str,
    class_names: tuple[str, ...],
    *,
    endpoint_url: str | None = None,
) -> list[dict[str, Any]]:
    """Rows {uri, source, label, label_index, split, dark} of a Parquet or CSV clip manifest.

    ``uri`` and ``label`` are required; ``split`` defaults to ``train`` and ``dark`` to false.
    An unknown label or split is a DataError naming the first offending row.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        raw = storage.read_bytes(manifest_uri, endpoint_url=endpoint_url)
    except StorageError as exc:
        raise DataError(
            f"manifest not found: {manifest_uri} ({exc}); make one with `avrl synth OUT` or "
            "write a CSV with columns uri,label[,split,dark]"
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
    missing = {"uri", "label"} - set(table.column_names)
    if missing:
        raise DataError(f"{manifest_uri}: missing column(s) {sorted(missing)}; need uri,label")
    rows = table.to_pylist()
    index = {name: i for i, name in enumerate(class_names)}
    out = []
    for n, row in enumerate(rows, start=1):
        label = str(row["label"]).strip()
        if label not in index:
            raise DataError(
                f"{manifest_uri}: unknown label {label!r} in row {n} ({row['uri']}); "
                f"known labels: {', '.join(class_names)}"
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
        out.append(
            {
                "uri": str(row["uri"]),
                "source": resolve_clip_uri(manifest_uri, str(row["uri"])),
                "label": label,
                "label_index": index[label],
                "split": split,
                "dark": bool(dark),
            }
        )
    if not out:
        raise DataError(f"{manifest_uri}: the manifest lists no clips")
    return out


def carve_val(rows: list[dict[str, Any]], fraction: float) -> int:
    """Move a deterministic, per-class ``fraction`` of train clips to ``val`` (in place) when the
    manifest has no val split: the plateau schedule needs a validation loss that is not the test
    set's. Chosen by a hash of the URI so reruns pick the same clips. Returns how many moved."""
    if fraction <= 0 or any(r["split"] == "val" for r in rows):
        return 0
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["split"] == "train":
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


def decode_clip(
    source: str,
    *,
    frames: int,
    size: int,
    audio_examples: int,
    endpoint_url: str | None = None,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """frames uint8 (T, size, size, 3) sampled over the whole clip, log-mel float16
    (E, 96, 64) of the whole clip's audio padded/trimmed to E examples, and has_audio."""
    from avrl_batch.media import iter_windows, probe
    from avrl_batch.media.errors import Truncated

    def src() -> Any:
        p = storage.parse_uri(source)
        return (
            p.path if p.scheme == "file" else storage.open_source(source, endpoint_url=endpoint_url)
        )

    duration = float(probe(src()).duration_s)
    # one window spanning the whole clip: frames and audio in a single decoding pass
    for w in iter_windows(
        src(),
        0.0,
        duration * 0.5,
        window_s=duration,
        stride_s=duration,
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
    row: dict[str, Any], *, frames: int, size: int, audio_examples: int, endpoint_url: str | None
) -> dict[str, Any]:
    error = ""
    try:
        video, logmel, has_audio = decode_clip(
            row["source"],
            frames=frames,
            size=size,
            audio_examples=audio_examples,
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
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> PreparedData:
    """Decode every clip of ``manifest_uri`` in parallel (Ray Data) into shards under ``out_uri``.

    Corrupt or unreadable clips are skipped and listed (``log`` and ``skipped`` in the JSON).
    """
    from avrl_batch.cluster import connect, quiet_ray_data

    rows, moved = _training_rows(manifest_uri, cfg, val_fraction, endpoint_url)
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
    manifest_uri: str, cfg: ModelConfig, val_fraction: float, endpoint_url: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The manifest's rows with a val split carved from train if it has none, in a fixed
    shuffled order; and how many clips moved to val."""
    rows = read_manifest(manifest_uri, cfg.class_names, endpoint_url=endpoint_url)
    if not any(r["split"] == "train" for r in rows):
        raise DataError(f"{manifest_uri}: no clips in the 'train' split; label some as split=train")
    moved = carve_val(rows, val_fraction)
    # manifests are usually grouped by class; shards in that order would feed SGD single-class
    # batches wherever the trainer can only shuffle locally (large, streamed data sets)
    random.Random(0).shuffle(rows)
    return rows, moved


def _decode(rows: list[dict[str, Any]], cfg: ModelConfig, endpoint_url: str | None) -> Any:
    """Every row decoded once (``_decode_row``) into a materialised Ray dataset, in row order."""
    import ray.data

    geometry = {"frames": cfg.frames, "size": cfg.size, "audio_examples": cfg.audio_examples}
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
