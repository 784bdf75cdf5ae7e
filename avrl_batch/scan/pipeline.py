"""``run_scan``: the archive scan on Ray (the only scan module besides predictor.py that
knows about Ray).

    list sources ─ skip finished keys ─ probe (Ray tasks) ─ plan segments
      └ Ray Data: from_items(segments) → flat_map(decode, CPU tasks)
                  → map_batches(Predictor, actor pool, num_gpus when the cluster has GPUs)
                  → iter_batches on the driver → assemble.SourceAssembler → timeline → sink

The driver finalises a source as soon as all of its segments have reported, so memory on
the driver is bounded by the sources in flight, not by the archive.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from avrl_batch import storage
from avrl_batch.classes import ClassSet
from avrl_batch.cluster import quiet_ray_data
from avrl_batch.errors import ConfigError
from avrl_batch.memory import peak_rss_mb
from avrl_batch.redaction import redact
from avrl_batch.scan import sink
from avrl_batch.scan.assemble import FinishedSource, SourceAssembler
from avrl_batch.scan.naming import scan_id_now
from avrl_batch.scan.plan import (
    TRANSIENT_ERRORS,
    ScanConfig,
    ScanPlan,
    SkippedSource,
    SourceError,
    SourceTask,
    check_same_settings,
    error_of,
    keyed_sources,
    split_done,
    split_misnamed,
    window_settings,
    window_spec,
)
from avrl_batch.scan.timeline import events_from_windows

ProgressFn = Callable[[dict[str, Any]], None]
PROBE_PACK = 32  # most sources one probe task opens


@dataclass
class ScanSummary:
    """What a scan did (also the body of the manifest and of ``avrl scan --json``)."""

    scan_id: str
    model_id: str
    out: str
    dry_run: bool
    sources_listed: int
    sources_ok: int = 0
    sources_failed: int = 0
    sources_skipped: int = 0
    segments: int = 0
    windows: int = 0
    events: int = 0
    # sources written with unreadable spans (counted in sources_ok), the spans, their seconds
    sources_partial: int = 0
    unreadable_spans: int = 0
    unreadable_s: float = 0.0
    events_by_label: dict[str, int] = field(default_factory=dict)
    footage_s: float = 0.0  # duration of the sources scanned (ok or failed after probing)
    wall_s: float = 0.0
    errors: list[dict[str, str]] = field(default_factory=list)
    infer_nodes: dict[str, int] = field(default_factory=dict)  # node id -> windows inferred
    decode_nodes: dict[str, int] = field(default_factory=dict)  # node id -> segments decoded
    # peak resident memory (MiB) of any decode worker / inference actor / the driver
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    # older versions of changed files whose outputs this scan removed (source_uri, version)
    superseded: list[dict[str, str]] = field(default_factory=list)
    # source URIs by outcome: ok / failed / skipped (the manifest's record of the scan)
    sources: dict[str, list[str]] = field(default_factory=dict)
    # every write (or old-version removal) that failed: what, uri, error_type, message. The
    # scan goes on; nothing failed is marked done, so the next run redoes it
    write_failures: list[dict[str, str]] = field(default_factory=list)
    # --cascade: windows screened / inferred, screening CPU time, the screen's thresholds
    cascade: dict[str, Any] = field(default_factory=dict)
    manifest: str | None = None
    manifest_error: str | None = None  # why the manifest could not be written (then None)

    @property
    def footage_hours_per_hour(self) -> float:
        return self.footage_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["footage_hours_per_hour"] = round(self.footage_hours_per_hour, 3)
        return d


def _ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS, or start a private local Ray bound to
    loopback); True if this call started the connection (and so must end it)."""
    import ray

    from avrl_batch.cluster import connect

    if ray.is_initialized():
        return False
    connect(address)
    return True


@contextlib.contextmanager
def private_local_ray(num_cpus: int) -> Iterator[None]:
    """A fresh private local Ray of ``num_cpus`` CPUs for the block (one this process had is
    shut down first), shut down after it: a scan measured from a clean start."""
    import ray

    from avrl_batch.cluster import connect

    if ray.is_initialized():
        ray.shutdown()
    connect(None, num_cpus=num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


def _decode_rows(
    row: dict[str, Any], spec: Any, endpoint_url: str | None, timeout_s: float
) -> Any:
    """flat_map UDF: one pack of segments (``row["segments"]``, JSON) -> each segment's window
    rows + trailer, in order, tagged with the decode node.

    Decoding runs in this worker's decoder process (scan/isolate.py): a file that crashes
    or hangs FFmpeg becomes the segment's error trailer instead of killing the worker, which
    Ray Data would retry without end. A retried pack yields its rows again; the assembler
    counts each once."""
    import json

    import ray

    from avrl_batch.scan.decode import decode_segment_isolated
    from avrl_batch.scan.isolate import Isolation

    node = ray.get_runtime_context().get_node_id()
    for seg in json.loads(row["segments"]):
        for out in decode_segment_isolated(
            seg, spec, endpoint_url=endpoint_url, isolation=Isolation(timeout_s=timeout_s)
        ):
            out["decode_node"] = node
            # peak RSS so far (the decoder process's, or this worker's if larger), on the
            # trailer: memory per task must not grow with the file, and the summary shows it
            decoder_rss = out.pop("decoder_rss_mb", 0.0)
            out["rss_mb"] = max(peak_rss_mb(), decoder_rss) if out["kind"] != "window" else 0.0
            yield out


def pack_segments(segments: list[Any], target_s: float, max_segments: int = 64) -> list[list[Any]]:
    """Consecutive segments in packs of at most ``target_s`` footage seconds (and
    ``max_segments``): one decode task each, so that many short sources share a task's fixed
    cost, while a segment of a long recording (``--segment`` s) stays a task of its own."""
    packs: list[list[Any]] = []
    seconds = 0.0
    for seg in segments:
        length = seg.end_s - seg.start_s if math.isfinite(seg.end_s) else target_s
        if packs and seconds + length <= target_s and len(packs[-1]) < max_segments:
            packs[-1].append(seg)
            seconds += length
        else:
            packs.append([seg])
            seconds = length
    return packs


def _pack_target_s(cfg: ScanConfig, footage_s: float) -> float:
    """Footage seconds a decode pack holds: up to ``--segment``, but small enough that every
    decode CPU of the cluster gets about four packs."""
    per_node, nodes = _cpu_per_node()
    return max(1e-9, min(cfg.segment_s, footage_s / (4 * per_node * nodes)))


def _submit_probes(todo: list[tuple[Any, str]], cfg: ScanConfig, stride_s: float) -> list[Any]:
    """Probe tasks for ``todo``, of up to PROBE_PACK sources each (about four tasks a CPU of
    the cluster): their refs, in the order of ``todo``."""
    import ray

    from avrl_batch.scan.isolate import Isolation
    from avrl_batch.scan.plan import probe_sources_isolated

    # probing opens the file with FFmpeg too: in the decoder process, under the time limit
    task = ray.remote(num_cpus=1, max_retries=cfg.probe_retries)(probe_sources_isolated)
    per_node, nodes = _cpu_per_node()
    size = max(1, min(PROBE_PACK, math.ceil(len(todo) / (4 * per_node * nodes))))
    items = [(src.uri, src.version, src.size, key) for src, key in todo]
    return [
        task.remote(
            items[i:i + size],
            isolation=Isolation(timeout_s=cfg.decode_timeout_s),
            stride_s=stride_s,
            segment_s=cfg.segment_s,
            camera_pattern=cfg.camera_pattern,
            timezone=cfg.timezone,
            endpoint_url=cfg.endpoint_url,
        )
        for i in range(0, len(items), size)
    ]


@dataclass
class _Wave:
    todo: list[SourceTask]
    failed: list[SourceError]


class _Waves:
    """The sources to scan, probed ``cfg.wave`` at a time: iterating yields each wave's
    probed plan (tasks, probe failures), and submits the next wave's probes before yielding,
    so that they run while this wave decodes. The driver holds two waves' SourceTasks."""

    def __init__(self, todo: list[tuple[Any, str]], cfg: ScanConfig, stride_s: float,
                 t0: float) -> None:
        self.chunks = [todo[i:i + cfg.wave] for i in range(0, len(todo), cfg.wave)]
        self.cfg, self.stride_s, self.t0 = cfg, stride_s, t0
        self.probes_done_s = 0.0

    def __iter__(self) -> Iterator[_Wave]:
        if not self.chunks:  # nothing to probe (only misnamed sources, to be error rows)
            yield _Wave([], [])
            return
        pending = _submit_probes(self.chunks[0], self.cfg, self.stride_s)
        for i in range(len(self.chunks)):
            import ray

            probed = [p for pack in ray.get(pending) for p in pack]
            self.probes_done_s = time.monotonic() - self.t0
            if i + 1 < len(self.chunks):
                pending = _submit_probes(self.chunks[i + 1], self.cfg, self.stride_s)
            yield _Wave([p for p in probed if isinstance(p, SourceTask)],
                        [p for p in probed if isinstance(p, SourceError)])

    def summary(self) -> dict[str, Any]:
        return {"waves": len(self.chunks), "probes_done_s": round(self.probes_done_s, 3)}


def _cpu_per_node() -> tuple[int, int]:
    """(CPUs of the smallest alive node that has any, number of such nodes)."""
    import ray

    cpus = [
        int(n["Resources"].get("CPU", 0))
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1
    ]
    return (min(cpus), len(cpus)) if cpus else (1, 1)


def _pool(cfg: ScanConfig) -> tuple[int, dict[str, float], int | None]:
    """Actor pool size, per-actor resources and torch threads per actor (None: leave
    torch's default, i.e. on GPU nodes).

    On CPU the model is the scan's bottleneck for every preset but tiny (PERF_NOTES), and an
    actor with one torch thread left the other cores idle once decoding was fast (measured:
    2 workers ran at 0.95x of 1). So the actor's torch threads are the CPUs free on a node
    at the start less a quarter (at least one) for decode tasks; the predictor caps them
    at the cores its process may run on. It still reserves one CPU from Ray: reserving all
    of them would let concurrent scans on one cluster take every CPU with their actors and
    leave none for the decode tasks that feed them (a deadlock); when the model waits on
    decoding, its threads idle and the decode tasks get the cores.
    """
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus > 0:
        n = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        return n, {"num_gpus": cfg.gpus_per_actor, "num_cpus": 1}, None
    per_node, nodes = _cpu_per_node()
    n = cfg.actors or 1
    free = int(ray.available_resources().get("CPU", 1))
    return n, {"num_cpus": 1}, cpu_threads_per_actor(per_node, free, n, nodes)


def cpu_threads_per_actor(per_node: int, free: int, actors: int, nodes: int) -> int:
    """Torch threads for each CPU inference actor: the CPUs free on a node (``per_node``
    at most) less a quarter of the node (at least one) for decode tasks, split between the
    actors that share a node."""
    for_model = max(1, min(per_node, free) - max(1, per_node // 4))
    return max(1, for_model // -(-actors // max(nodes, 1)))


def run_scan(cfg: ScanConfig, *, progress: ProgressFn | None = None) -> ScanSummary:
    """Scan ``cfg.source`` with the model ``cfg.model`` into ``cfg.out`` (DESIGN.md §4).

    ``progress`` is called with a dict (sources_done, sources_total, windows, footage_s,
    elapsed_s) each time a source is finalised. Returns the summary (also written as the
    manifest, last). ``cfg.dry_run`` plans (lists, probes, segments) and writes nothing.
    """
    t0 = time.monotonic()
    started = datetime.now(timezone.utc)
    model = _ScanModel.read(cfg)
    spec = window_spec(cfg, model.cfg.window_s, model.cfg.frames, model.cfg.size)
    settings = window_settings(cfg, spec, model.model_id)
    recorded = sink.read_settings(cfg.out, model.model_id, endpoint_url=cfg.endpoint_url)
    if not cfg.rescan:  # never a silent skip of results made with other windows
        check_same_settings(cfg.out, recorded, settings)
    elif not cfg.dry_run:  # a rescan rewrites objects a compaction may be moving
        from avrl_batch.scan.compact import check_not_compacting

        check_not_compacting(cfg.out, "avrl scan --rescan", endpoint_url=cfg.endpoint_url)
    sources = _list_sources(cfg)
    keyed, todo, skipped, stale, replaces = _split_finished(cfg, sources, model.model_id)
    todo, misnamed = split_misnamed(todo)

    # nothing left to do (a rerun of a finished scan): no Ray to start, only the summary
    started_ray = _ensure_ray(cfg.address) if todo else False
    try:
        quiet_ray_data()
        base = ScanPlan(
            todo=[],
            failed=list(misnamed),
            skipped=skipped,
            spec=spec,
            model_id=model.model_id,
            versions={key: src.version for src, key in keyed},
            replaces=replaces,
            spans_listed=_spans_listed(cfg) if todo and not cfg.dry_run else None,
        )
        summary = ScanSummary(
            scan_id=cfg.scan_id or scan_id_now(started),
            model_id=model.model_id,
            out=cfg.out,
            dry_run=cfg.dry_run,
            sources_listed=len(sources),
            sources_skipped=len(skipped),
        )
        waves = _Waves(todo, cfg, spec.stride_s, t0)
        if cfg.dry_run:
            plan = replace(base, todo=[], failed=list(base.failed))
            for wave in waves:
                plan.todo += wave.todo
                plan.failed += wave.failed
            summary.segments = len(plan.segments)
            summary.plan = plan.summary() | waves.summary() | _dry_run_plan(plan, stale)
            summary.wall_s = time.monotonic() - t0
            return summary
        if recorded is None or cfg.rescan:  # before any output: what the results are made of
            _record_settings(cfg, settings | {"rescanning": cfg.rescan}, summary)
        ledger = _Ledger(summary, len(todo) + len(misnamed), t0, progress)
        planned: Counter[str] = Counter()  # the plan's figures, wave by wave
        footage_s = 0.0
        with _Writers(cfg.writers) as writers:
            for i, wave in enumerate(waves):
                plan = replace(base, todo=wave.todo,
                               failed=wave.failed + (base.failed if i == 0 else []))
                planned.update(sources_todo=len(plan.todo), segments=len(plan.segments),
                               sources_failed_probe=len(plan.failed))
                footage_s += plan.footage_s
                screened: dict[str, Any] = {}
                if cfg.cascade:
                    plan, screened = _screen_plan(cfg, plan, model, summary)
                summary.segments += len(plan.segments)
                _execute(cfg, plan, summary, model, ledger, writers, screened)
        summary.plan = base.summary() | dict(planned) | waves.summary() | {
            "footage_hours": round(footage_s / 3600.0, 4),
            "first_source_s": ledger.first_source_s,
        }
        ledger.close()
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    if cfg.rescan and not any(_not_rewritten(e) for e in summary.errors):
        _record_settings(cfg, settings | {"rescanning": False}, summary)  # the rescan is whole
    if stale:  # after the new versions are written: a source never has no outputs
        summary.superseded = _remove_superseded(cfg, stale, summary)
    summary.wall_s = time.monotonic() - t0
    summary.sources["skipped"] = [s.uri for s in skipped]
    try:
        summary.manifest = _write_manifest(cfg, summary, started, model, spec, settings)
    except Exception as exc:  # noqa: BLE001 - the outputs are written; say what is missing
        kind, msg = error_of(exc)
        summary.manifest_error = f"{kind}: {msg}"
    return summary


@dataclass(frozen=True)
class _ScanModel:
    """The model file of a scan: its bytes (for the actors), config and id (for the driver)."""

    data: bytes
    cfg: Any  # config.ModelConfig
    model_id: str
    screen: Any = None  # scan/screen.Screen of the file (avrl calibrate), or None
    audio_net: Any = None  # scan/screen.AudioNet: the audio trunk the screen reads, or None

    @classmethod
    def read(cls, cfg: ScanConfig) -> _ScanModel:
        from avrl_batch.modelfile import model_from_bytes

        data = storage.read_bytes(cfg.model, endpoint_url=cfg.endpoint_url)
        loaded = model_from_bytes(data, source=cfg.model)
        if cfg.cascade and loaded.screen is None:
            raise ConfigError(
                f"{cfg.model} has no screen for --cascade (or one an older version "
                "calibrated, or one calibrated for another network): make one with "
                "`avrl calibrate MODEL INTERVALS --out MODEL_WITH_SCREEN`"
            )
        audio_net = None
        if cfg.cascade and loaded.screen.needs_audio_net:
            from avrl_batch.scan.screen import AudioNet

            audio_net = AudioNet.from_model(loaded.model, loaded.cfg)
        # the driver keeps the id and config (and the screen's audio trunk) only; actors build
        # their own copy of the model
        return cls(data, loaded.cfg, loaded.model_id, loaded.screen, audio_net)


def _list_sources(cfg: ScanConfig) -> list[Any]:
    """The recordings under ``cfg.source`` (storage.Source); ConfigError when none match."""
    include = cfg.include or storage.DEFAULT_VIDEO_GLOBS
    sources = storage.list_sources(
        cfg.source, include=include, exclude=cfg.exclude, endpoint_url=cfg.endpoint_url
    )
    if not sources:
        raise ConfigError(
            f"no recordings under {cfg.source} match {', '.join(include)}: "
            "check the path or pass --include"
        )
    return sources


def _split_finished(cfg: ScanConfig, sources: list[Any], model_id: str) -> tuple[
    list[tuple[Any, str]], list[tuple[Any, str]], list[SkippedSource], list[Any],
    dict[str, list[str]],
]:
    """(every source with its key, those still to scan, those skipped as finished, the
    outputs of older versions of these files: changed since an earlier scan with this model,
    and with ``--rescan`` the objects of each key to remove once it is rewritten)."""
    done, failed = sink.finished_objects(cfg.out, endpoint_url=cfg.endpoint_url)
    keyed = keyed_sources(sources, model_id)
    sink.adopt_legacy(keyed, done, failed, model_id)
    if cfg.rescan:  # nothing is done: every source is scanned again and its objects replaced
        todo, skipped = list(keyed), []
        replaces = {
            key: sink.previous_objects(cfg.out, key, done, failed)
            for _, key in keyed
            if key in done or key in failed
        }
    else:
        todo, skipped = split_done(keyed, set(done), set(failed))
        replaces = {}
    stale = sink.find_superseded(
        cfg.out, keyed, done, failed, model_id, endpoint_url=cfg.endpoint_url
    )
    return keyed, todo, skipped, stale, replaces


def _spans_listed(cfg: ScanConfig) -> frozenset[str] | None:
    """The unreadable-spans objects under OUT (None when the listing fails: then every
    source written without spans removes a possible leftover itself)."""
    try:
        return sink.unreadable_objects(cfg.out, endpoint_url=cfg.endpoint_url)
    except Exception:  # noqa: BLE001 - only an optimisation is lost
        return None


def _not_rewritten(error: dict[str, str]) -> bool:
    """A failure after which the source keeps its earlier objects (nothing new written)."""
    kind = error["error_type"]
    return error["stage"] == "write" or kind in TRANSIENT_ERRORS or kind == "Incomplete"


def _record_settings(cfg: ScanConfig, settings: dict[str, Any], summary: ScanSummary) -> None:
    try:
        sink.write_settings(cfg.out, settings, endpoint_url=cfg.endpoint_url)
    except Exception as exc:  # noqa: BLE001 - the scan goes on; the manifest has them too
        _write_failed(summary, "settings", sink.settings_uri(cfg.out, settings["model_id"]), exc)


def _remove_replaced(
    cfg: ScanConfig, plan: ScanPlan, summary: ScanSummary, key: str, written: set[str]
) -> None:
    """After ``--rescan`` wrote a key's new outcome: remove that key's earlier objects the new
    ones did not replace (another partition after a --timezone or --camera-pattern change,
    windows + events of a source that now fails, the error object of one that now works)."""
    for uri in plan.replaces.get(key, []):
        if uri in written:
            continue
        try:
            storage.delete(uri, endpoint_url=cfg.endpoint_url)
        except Exception as exc:  # noqa: BLE001 - one object, not the scan
            _write_failed(summary, "old results", uri, exc)


def _dry_run_plan(plan: ScanPlan, stale: list[Any]) -> dict[str, Any]:
    """What ``--dry-run`` adds to the plan summary: each source to scan, skipped, failed to
    probe or superseded."""
    return {
        "sources": [
            {
                "uri": t.uri,
                "key": t.key,
                "camera": t.camera,
                "start_time": t.start_time.isoformat() if t.start_time else None,
                "duration_s": t.duration_s,
                "has_audio": t.has_audio,
                "segments": len(t.segments),
            }
            for t in plan.todo
        ],
        "skipped": [asdict(s) for s in plan.skipped],
        "probe_errors": [asdict(e) for e in plan.failed],
        "superseded": [asdict(s) for s in stale],
    }


def _remove_superseded(
    cfg: ScanConfig, stale: list[Any], summary: ScanSummary
) -> list[dict[str, str]]:
    """Delete the older versions whose current version is now finished; those removed. A
    removal that fails is a write failure: the old version stays (the next run finds it
    again), the other removals go on."""
    try:
        now_done, now_failed = sink.finished_keys(cfg.out, endpoint_url=cfg.endpoint_url)
    except Exception as exc:  # noqa: BLE001 - removal waits for the next run
        _write_failed(summary, "old versions", cfg.out, exc)
        return []
    removed = []
    for s in stale:
        try:
            removed += sink.remove_superseded(
                [s], now_done, now_failed, endpoint_url=cfg.endpoint_url
            )
        except Exception as exc:  # noqa: BLE001 - one old version, not the scan
            _write_failed(summary, "old version", s.source_uri, exc)
    return [{"source_uri": s.source_uri, "version": s.version} for s in removed]


def _write_failed(summary: ScanSummary, what: str, uri: str, exc: BaseException) -> SourceError:
    """Record a failed write in the summary; the failure as a ``write`` SourceError. Safe in
    a writer thread: it only appends to a list (atomic under the GIL)."""
    kind, msg = error_of(exc)
    summary.write_failures.append(
        {"what": what, "uri": uri, "error_type": kind, "message": msg}
    )
    return SourceError(uri, "", "write", kind, msg)


def _write_manifest(
    cfg: ScanConfig,
    summary: ScanSummary,
    started: datetime,
    model: _ScanModel,
    spec: Any,
    settings: dict[str, Any],
) -> str:
    manifest = summary.to_dict()
    manifest.update(
        started_at=started.isoformat(),
        finished_at=datetime.now(timezone.utc).isoformat(),
        config=_public_config(cfg),
        class_names=list(model.cfg.class_names),
        normal_classes=list(model.cfg.normal_classes),
        window_s=spec.window_s,
        stride_s=spec.stride_s,
        timezone=cfg.timezone,  # of start times in names without an offset
        window_settings=settings,  # what the results' windows depend on (plan.WINDOW_SETTINGS)
    )
    return sink.write_manifest(cfg.out, summary.scan_id, manifest, endpoint_url=cfg.endpoint_url)


def _public_config(cfg: ScanConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    for name in ("endpoint_url", "address"):
        if d.get(name):
            d[name] = redact(str(d[name]))  # never a credential in a manifest
    return d


class _Ledger:
    """The running account of a scan's sources: the summary's counts and error list, and the
    progress callback's figures."""

    def __init__(
        self, summary: ScanSummary, total: int, t0: float, progress: ProgressFn | None
    ) -> None:
        self.summary = summary
        self.total = total
        self.t0 = t0
        self.first_source_s: float | None = None  # when the first source was accounted for
        self.progress = progress
        self.finished = 0  # sources done, ok or not
        self.by_label: Counter[str] = Counter()
        self.ok_uris: list[str] = []

    def report(self) -> None:
        if self.progress is not None:
            self.progress(
                {
                    "sources_done": self.finished,
                    "sources_total": self.total,
                    "windows": self.summary.windows,
                    "footage_s": self.summary.footage_s,
                    "elapsed_s": time.monotonic() - self.t0,
                }
            )

    def failed(self, err: SourceError) -> None:
        self.summary.sources_failed += 1
        self.summary.errors.append(
            {
                "source_uri": err.uri,
                "stage": err.stage,
                "error_type": err.error_type,
                "message": err.message,
            }
        )

    def ok(self, uri: str, windows: Any, events: Any, unreadable: Any = None) -> None:
        self.summary.sources_ok += 1
        self.summary.windows += windows.num_rows
        self.summary.events += events.num_rows
        if unreadable is not None and unreadable.num_rows:
            self.summary.sources_partial += 1
            self.summary.unreadable_spans += unreadable.num_rows
            lost = sum(e - s for s, e in zip(unreadable["start_s"].to_pylist(),
                                              unreadable["end_s"].to_pylist(), strict=True))
            self.summary.unreadable_s = round(self.summary.unreadable_s + lost, 3)
        self.by_label.update(events["label"].to_pylist())
        self.ok_uris.append(uri)

    def account(self, written: _Written, footage_s: float) -> None:
        """One source written (or failed), in the driver thread."""
        if self.first_source_s is None:
            self.first_source_s = round(time.monotonic() - self.t0, 3)
        self.finished += 1
        self.summary.footage_s += footage_s
        if written.error is not None:
            self.failed(written.error)
        else:
            self.ok(written.uri, written.windows, written.events, written.unreadable)
        self.report()

    def close(self) -> None:
        """The summary's totals, once every source is accounted for."""
        s = self.summary
        s.peak_rss_mb["driver"] = round(peak_rss_mb(), 1)
        s.events_by_label = dict(sorted(self.by_label.items()))
        s.sources["ok"] = self.ok_uris
        s.sources["failed"] = [e["source_uri"] for e in s.errors]
        self.report()


def _persist_error(
    cfg: ScanConfig, plan: ScanPlan, summary: ScanSummary, err: SourceError
) -> SourceError:
    """Save a failed source's error object unless the failure was of storage or the machine:
    then a rerun retries the source. Returns the failure to report: ``err``, or, when its
    error object cannot be written, a write failure with both reasons (the source, having no
    error object, is tried again by the next run). Safe in a writer thread."""
    if err.transient:
        return err
    try:
        sink.write_error(
            cfg.out,
            err,
            summary.scan_id,
            version=plan.versions.get(err.key, ""),
            model_id=plan.model_id,
            endpoint_url=cfg.endpoint_url,
            replace=cfg.rescan,
        )
        _remove_replaced(cfg, plan, summary, err.key, {sink.error_uri(cfg.out, err.key)})
    except Exception as exc:  # noqa: BLE001 - one error row, not the whole scan
        failed = _write_failed(summary, "error row", err.uri, exc)
        return SourceError(
            err.uri, err.key, "write", failed.error_type,
            f"its error row ({err.stage}: {err.error_type}: {err.message}) could not be "
            f"written: {failed.message}",
        )
    return err


def _screen_plan(
    cfg: ScanConfig, plan: ScanPlan, model: _ScanModel, summary: ScanSummary
) -> tuple[ScanPlan, dict[str, Any]]:
    """--cascade: screen every source (one Ray task each, in the decoder process) and keep of
    each only the segments of its candidate windows; a source that fails screening is a
    failed source. Returns the new plan and the screen's verdicts by key."""
    import ray

    from avrl_batch.scan import cascade
    from avrl_batch.scan.isolate import Isolation

    task_fn = ray.remote(num_cpus=1, max_retries=cfg.probe_retries)(
        cascade.screen_source_isolated
    )
    todo = [t for t in plan.todo if cascade.screenable(t)]
    # the audio trunk goes to the object store once, not pickled into every task
    net = ray.put(model.audio_net) if model.audio_net is not None and todo else None
    refs = [
        task_fn.remote(
            t, isolation=Isolation(timeout_s=cfg.decode_timeout_s), screen=model.screen,
            window_s=plan.spec.window_s, stride_s=plan.spec.stride_s,
            endpoint_url=cfg.endpoint_url, audio_net=net,
        )
        for t in todo
    ]
    screened: dict[str, Any] = {}
    tasks, failed = [], list(plan.failed)
    for task, got in zip(todo, ray.get(refs), strict=True):
        if isinstance(got, SourceError):
            failed.append(got)
            continue
        screened[task.key] = got
        tasks.append(cascade.replan(task, got, plan.spec.stride_s, cfg.segment_s))
    # a source of unknown duration has no window grid to screen: the full model sees it all
    tasks += [t for t in plan.todo if not cascade.screenable(t)]
    new = replace(plan, todo=tasks, failed=failed)
    summary.cascade = _add_cascade(summary.cascade, cascade.summary(screened, model.screen))
    return new, screened


def _add_cascade(total: dict[str, Any], wave: dict[str, Any]) -> dict[str, Any]:
    """The cascade summary of the waves so far and one more wave's."""
    if not total:
        return wave
    out = dict(wave)
    for name in ("windows_screened", "windows_inferred"):
        out[name] = total[name] + wave[name]
    out["screen_cpu_s"] = round(total["screen_cpu_s"] + wave["screen_cpu_s"], 3)
    out["sources_by_head"] = {h: total["sources_by_head"][h] + wave["sources_by_head"][h]
                              for h in wave["sources_by_head"]}
    screened = out["windows_screened"]
    out["inferred_share"] = round(out["windows_inferred"] / screened, 4) if screened else 0.0
    return out


def _execute(
    cfg: ScanConfig, plan: ScanPlan, summary: ScanSummary, model: _ScanModel, ledger: _Ledger,
    writers: _Writers, screened: dict[str, Any] | None = None,
) -> None:
    """Run one wave's planned sources through Ray Data; each finished source is written by
    the writer pool while the stream goes on."""
    for err in plan.failed:
        writers.submit(
            lambda err=err: _Written(error=_persist_error(cfg, plan, summary, err)),
            lambda w: ledger.account(w, 0.0),
        )
    ledger.report()
    screened = screened or {}
    classes = model.cfg.classes
    for task in plan.todo:
        if not task.segments and task.key in screened:  # the screen passed every window over
            fin = _nothing_inferred(task, plan, summary, classes)
            _write_finished(cfg, plan, ledger, fin, classes, screened, writers)
    if any(t.segments for t in plan.todo):
        todo = [t for t in plan.todo if t.segments or t.key not in screened]
        assembler = SourceAssembler(
            todo, classes=classes, model_id=plan.model_id, scan_id=summary.scan_id
        )
        ds = _inference_dataset(cfg, replace(plan, todo=todo), model.data, classes)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for fin in assembler.add_batch(batch):
                _write_finished(cfg, plan, ledger, fin, classes, screened, writers)
            writers.collect()
        writers.drain()
        # The stream ended without some trailers (should not happen): report those
        # sources, but write no error object, so that a rerun scans them instead of
        # skipping them.
        for task in assembler.unfinished():
            incomplete = SourceError(
                task.uri,
                task.key,
                "decode",
                "Incomplete",
                "the pipeline ended before every segment reported; rerun the scan",
            )
            ledger.account(_Written(error=incomplete), 0.0)
        for node, n in assembler.node_windows.items():
            summary.infer_nodes[node] = summary.infer_nodes.get(node, 0) + n
        for node, n in assembler.node_segments.items():
            summary.decode_nodes[node] = summary.decode_nodes.get(node, 0) + n
        for part in ("decode", "infer"):
            summary.peak_rss_mb[part] = max(summary.peak_rss_mb.get(part, 0.0),
                                            round(assembler.peak_rss[part], 1))


@dataclass(frozen=True)
class _Written:
    """What writing one source came to: its tables (written), or the failure to report."""

    uri: str = ""
    windows: Any = None
    events: Any = None
    unreadable: Any = None
    error: SourceError | None = None


class _Writers:
    """Writes finished sources off the driver's critical path: ``threads`` writer threads
    (0: the driver writes each source itself), at most ``2 × threads`` sources in flight, so
    the driver holds a bounded number of finished sources. Each source's objects are written
    in order by one thread (the exactly-once protocol of sink.write_source is per source); the
    result of each is accounted for in the driver thread (``collect``), in completion order."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="avrl-writer")
            if threads > 0 else None
        )
        self.limit = 2 * threads
        self.pending: dict[Any, Callable[[Any], None]] = {}

    def submit(self, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``work`` in a writer thread; ``then(result)`` in this thread once it is done."""
        if self.pool is None:
            then(work())
            return
        while len(self.pending) >= self.limit:
            self.collect(block=True)
        self.pending[self.pool.submit(work)] = then
        self.collect()

    def collect(self, *, block: bool = False) -> None:
        """Account for the writes that are done (``block``: wait for at least one)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self.pending:
            return
        done, _ = wait(self.pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for fut in done:
            self.pending.pop(fut)(fut.result())

    def drain(self) -> None:
        while self.pending:
            self.collect(block=True)

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        # on an error the writes in flight still end (each object is written atomically),
        # but are not accounted for: the run is failing, and a rerun redoes what is unmarked
        if exc[0] is None:
            self.drain()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _nothing_inferred(
    task: SourceTask, plan: ScanPlan, summary: ScanSummary, classes: ClassSet
) -> FinishedSource:
    """A screened source with no candidate window: finished with no inferred window."""
    import numpy as np

    from avrl_batch.scan.sink import windows_table

    empty = np.zeros(0)
    table = windows_table(
        task, empty.astype(np.int64), empty, empty, empty.astype(bool),
        np.zeros((0, len(classes)), np.float32), classes=classes, model_id=plan.model_id,
        scan_id=summary.scan_id,
    )
    return FinishedSource(task, windows=table)


def _write_finished(
    cfg: ScanConfig, plan: ScanPlan, ledger: _Ledger, fin: FinishedSource, classes: ClassSet,
    screened: dict[str, Any], writers: _Writers,
) -> None:
    """Hand one finished source to the writers; it is accounted for when written."""
    writers.submit(
        lambda: _finalise(cfg, plan, ledger.summary, fin, classes, screened),
        lambda written: ledger.account(written, fin.task.duration_s or 0.0),
    )


def _finalise(
    cfg: ScanConfig, plan: ScanPlan, summary: ScanSummary, fin: FinishedSource,
    classes: ClassSet, screened: dict[str, Any],
) -> _Written:
    """One finished source (in a writer thread): its error row, or its timeline and outputs
    (a cascade's windows completed with the screened-out ones)."""
    if fin.error is not None:
        return _Written(error=_persist_error(cfg, plan, summary, fin.error))
    windows = fin.windows
    assert windows is not None
    try:
        if fin.task.key in screened:
            from avrl_batch.scan.cascade import complete_windows

            windows = complete_windows(
                windows, fin.task, screened[fin.task.key], classes=classes,
                model_id=plan.model_id, scan_id=summary.scan_id,
                unreadable=fin.unreadable,
            )
        events = events_from_windows(
            windows, cfg.timeline, classes=classes, thumbnails=fin.thumbnails,
            version=fin.task.version,
        )
        sink.write_source(
            cfg.out, fin.task, windows, events, model_id=plan.model_id,
            endpoint_url=cfg.endpoint_url, replace=cfg.rescan, unreadable=fin.unreadable,
            spans_listed=plan.spans_listed,
        )
    except Exception as exc:  # noqa: BLE001 - one source, not the whole scan
        # Reported, but no error object: a failed write (storage down, denied) is not a
        # property of the recording, so a rerun should try it again.
        failed = _write_failed(summary, "outputs", fin.task.uri, exc)
        return _Written(error=SourceError(
            fin.task.uri, fin.task.key, "write", failed.error_type, failed.message
        ))
    written = {
        sink.windows_uri(cfg.out, fin.task),
        sink.events_uri(cfg.out, fin.task),
        sink.unreadable_uri(cfg.out, fin.task),  # written, or a leftover removed
    }
    _remove_replaced(cfg, plan, summary, fin.task.key, written)
    return _Written(fin.task.uri, windows, events, fin.unreadable)


def _inference_dataset(
    cfg: ScanConfig, plan: ScanPlan, model_bytes: bytes, classes: ClassSet
) -> Any:
    """packs of segments -> flat_map(decode, CPU tasks) -> map_batches(Predictor, actor
    pool)."""
    import json

    import ray
    import ray.data

    from avrl_batch.scan.predictor import Predictor

    anomaly_index = classes.anomaly_index
    n_actors, actor_resources, threads = _pool(cfg)
    packs = pack_segments(plan.segments, _pack_target_s(cfg, plan.footage_s))
    items = [{"segments": json.dumps([s.to_row() for s in p])} for p in packs]
    model_ref = ray.put(model_bytes)
    return (
        # one block per pack: each decode task owns one pack of segments (bounded memory)
        ray.data.from_items(items, override_num_blocks=len(items))
        .flat_map(
            _decode_rows,
            fn_kwargs={
                "spec": plan.spec,
                "endpoint_url": cfg.endpoint_url,
                "timeout_s": cfg.decode_timeout_s,
            },
            # Ray Data retries a task whose worker or node died (max_retries=-1 by
            # default, and passing it is deprecated), so node loss costs time, not data
            num_cpus=1,
        )
        .map_batches(
            Predictor,
            fn_constructor_kwargs={
                "model_ref": [model_ref],
                "anomaly_index": anomaly_index,
                "thumb_threshold": min(cfg.timeline.enter, cfg.timeline.exit),
                "timeline_mode": cfg.timeline.mode,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            batch_size=cfg.batch_size,
            batch_format="numpy",
            **actor_resources,
        )
    )
