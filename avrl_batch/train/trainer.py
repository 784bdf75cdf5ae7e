"""``avrl train``: the Ray Train driver (TorchTrainer, Ray Train V2 API of Ray 2.60).

Output layout of ``OUT`` (local or S3)::

    OUT/checkpoints/epoch_NNNN/state.pt            one checkpoint per epoch (model, optimiser,
                                                   scheduler, metric history)
    OUT/checkpoints/checkpoint_manager_snapshot.json   Ray Train's record of the checkpoints
    OUT/model.avrl                                 the final self-describing model file
    OUT/run.json                                   the dataset, model and training settings
                                                   the run started with (--resume takes them)

Fault tolerance and resumption use Ray Train V2 (the default in Ray 2.60; ``TorchTrainer.restore``
is deprecated there): ``FailureConfig(max_failures)`` restarts the worker group from the latest
checkpoint after a worker error, and a new ``fit()`` with the same ``RunConfig(name,
storage_path)`` finds the run's checkpoint snapshot in storage and hands its latest checkpoint to
``ray.train.get_checkpoint()`` in the loop; that is what ``--resume`` does.
"""

from __future__ import annotations

import copy
import json
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from avrl_batch import storage
from avrl_batch.config import ModelConfig, TrainConfig
from avrl_batch.errors import AvrlError, ConfigError, DataError
from avrl_batch.train.prepare import TENSOR_COLUMNS, PreparedData, load_prepared

if TYPE_CHECKING:
    from avrl_batch.train.loop import EpochHook

RUN_NAME = "checkpoints"
MODEL_NAME = "model.avrl"
SNAPSHOT_NAME = "checkpoint_manager_snapshot.json"
RUN_FILE = "run.json"
# TrainConfig fields that are `avrl train` options: a refusal names them as the option
TRAIN_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "audio_dropout", "schedule", "seed",
                 "init", "freeze")


class TrainingFailed(AvrlError):
    """Training stopped after the allowed worker failures; the checkpoints stay for --resume."""


@dataclass(frozen=True)
class RunSettings:
    """What one ``avrl train`` trains: the dataset, the network and the optimisation."""

    data_uri: str
    cfg: ModelConfig
    tc: TrainConfig


@dataclass(frozen=True)
class TrainResult:
    model_uri: str
    model_id: str
    history: list[dict[str, Any]]
    checkpoint_uri: str


def train(
    data_uri: str,
    out_uri: str,
    cfg: ModelConfig,
    tc: TrainConfig,
    *,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float | None = None,
    resume: bool = False,
    max_failures: int = 1,
    address: str | None = None,
    endpoint_url: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] = print,
    epoch_hook: EpochHook | None = None,
) -> TrainResult:
    """Train AVRL on a prepared dataset with ``workers`` Ray Train workers (DDP).

    ``tc.init`` names a model file to start from (``train/finetune.py``); the model file
    written records its id as ``meta["parent"]``.

    ``on_epoch`` receives each epoch's metrics row on the driver as it is reported.
    ``epoch_hook(epoch, rank, world_size)`` runs on every worker as each epoch begins (after
    the previous epoch's checkpoint was reported); it must pickle, and an exception it raises
    is a worker failure (``max_failures``), which is how tests inject faults.
    """
    from avrl_batch.cluster import connect, quiet_ray_data

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if tc.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {tc.epochs}")
    ckpt_root = _check_out(out_uri, resume=resume, endpoint_url=endpoint_url)
    record = _read_run(out_uri, endpoint_url) if resume else None
    if record is not None:
        _check_resume(out_uri, record, data_uri, cfg, tc)
    prepared = _load_training_data(data_uri, cfg, endpoint_url)
    val_split = _val_split(prepared)
    if val_split == "test":
        log("note: no val split; the plateau schedule follows the test split's loss")
    _record_run(out_uri, data_uri, cfg, tc, record, resume=resume, endpoint_url=endpoint_url,
                log=log)

    connect(address)
    quiet_ray_data()
    parent = _read_parent(tc.init, endpoint_url) if tc.init else None
    datasets = _datasets(prepared, val_split, seed=tc.seed, endpoint_url=endpoint_url)
    loop_config: dict[str, Any] = {"model": cfg.to_dict(), "train": asdict(tc)}
    if parent is not None:
        import ray

        from avrl_batch.train.finetune import init_state

        # through the object store: the config is pickled to every worker and the controller
        loop_config["init_state"] = ray.put(init_state(cfg, parent))
    if epoch_hook is not None:
        loop_config["epoch_hook"] = epoch_hook
    progress = _ProgressRelay(on_epoch) if on_epoch is not None else None
    trainer = _torch_trainer(
        loop_config,
        datasets,
        out_uri,
        workers=workers,
        use_gpu=use_gpu,
        cpus=worker_cpus(workers, use_gpu, cpus_per_worker),
        max_failures=max_failures,
        progress=progress,
        endpoint_url=endpoint_url,
    )
    result = _fit(trainer, progress, ckpt_root)
    return _write_model_file(
        _select_checkpoint(result),
        result.checkpoint,
        out_uri,
        cfg,
        tc,
        data_uri,
        ckpt_root,
        endpoint_url,
        parent=parent,
    )


def _read_parent(uri: str, endpoint_url: str | None) -> Any:
    """The model file ``--init`` names (a modelfile.LoadedModel); one WeightsError line if it
    cannot be read."""
    from avrl_batch.modelfile import model_from_bytes

    return model_from_bytes(storage.read_bytes(uri, endpoint_url=endpoint_url), source=uri)


def run_settings(
    out_uri: str,
    *,
    resume: bool,
    data_uri: str | None = None,
    preset_name: str | None = None,
    fusion: str | None = None,
    modality: str | None = None,
    endpoint_url: str | None = None,
    **train_options: Any,
) -> RunSettings:
    """The settings of ``avrl train``; ``None`` is "not given". A new run takes the preset's
    defaults (``tiny`` when no preset is given), or with ``init`` (in ``train_options``) the
    parent model file's network, and the classes of the prepared data. ``--resume`` takes
    every setting the run was started with from OUT/run.json and puts the given ones in their
    place; :func:`train` then refuses any that differ from the record, except a longer
    ``--epochs``."""
    from dataclasses import fields, replace

    from avrl_batch.config import preset, train_config

    if resume:
        _check_out(out_uri, resume=True, endpoint_url=endpoint_url)  # there is a run
    record = _read_run(out_uri, endpoint_url) if resume else None
    if record is None:
        if data_uri is None:
            raise ConfigError(
                "give DATA, the prepared dataset to train on (the --out of avrl prepare)"
                + (f": {out_uri} has no {RUN_FILE} that records it" if resume else "")
            )
        init = train_options.get("init")
        if init is None:
            name = preset_name or "tiny"
            base = preset(name, fusion=fusion, modality=modality)
        else:
            base = _parent_network(init, preset_name, fusion, modality, endpoint_url)
            name = base.preset
        tc = train_config(name, **train_options)  # a wrong option is said before data is read
        classes = load_prepared(data_uri, endpoint_url=endpoint_url).classes
        return RunSettings(data_uri, base.with_classes(classes), tc)
    was_cfg = ModelConfig.from_dict(record["model_config"])
    cfg = (
        preset(preset_name, fusion=fusion, modality=modality).with_classes(was_cfg.classes)
        if preset_name is not None
        else replace(was_cfg, **{k: v for k, v in (("fusion", fusion), ("modality", modality))
                                 if v is not None})
    )
    given = {k: v for k, v in train_options.items() if v is not None}
    known = {f.name for f in fields(TrainConfig)}
    was_tc = TrainConfig(**{k: v for k, v in record["train_config"].items() if k in known})
    tc = replace(was_tc, **given)
    if data_uri is None and not record.get("data"):
        raise ConfigError(f"give DATA: {out_uri}/{RUN_FILE} does not record the run's dataset")
    return RunSettings(data_uri or record["data"], cfg, tc)


def _parent_network(
    init: str,
    preset_name: str | None,
    fusion: str | None,
    modality: str | None,
    endpoint_url: str | None,
) -> ModelConfig:
    """The network of the ``--init`` model file, with ``--fusion``/``--modality`` if given;
    another ``--preset`` than the parent's is refused (its trunks would not fit)."""
    from dataclasses import replace

    was = _read_parent(init, endpoint_url).cfg
    if preset_name is not None and preset_name != was.preset:
        raise ConfigError(
            f"--init {init} is a {was.preset!r} model: leave out --preset {preset_name} or "
            f"give --preset {was.preset}"
        )
    given = {k: v for k, v in (("fusion", fusion), ("modality", modality)) if v is not None}
    return replace(was, **given)


def _load_training_data(data_uri: str, cfg: ModelConfig, endpoint_url: str | None) -> PreparedData:
    """The prepared dataset, checked to fit ``cfg`` and to have clips to train on."""
    prepared = load_prepared(data_uri, endpoint_url=endpoint_url)
    prepared.check_fits(cfg)
    if prepared.n_clips("train") == 0:
        raise DataError(f"{data_uri} has no 'train' clips; rerun `avrl prepare` with some")
    return prepared


def _val_split(prepared: PreparedData) -> str:
    # the manifest's (or prepare's carved) val split; the test split only as a last resort so a
    # tiny manifest still trains, and the driver says so
    for split in ("val", "test"):
        if prepared.n_clips(split) > 0:
            return split
    raise DataError(
        f"{prepared.uri} has no 'val' or 'test' clips to validate on; add some to the manifest "
        "(split=val) and rerun `avrl prepare`"
    )


def _check_out(out_uri: str, *, resume: bool, endpoint_url: str | None) -> str:
    """OUT holds a run exactly when ``resume`` asks to continue one; returns its checkpoint
    root."""
    ckpt_root = storage.join(out_uri, RUN_NAME)
    has_run = storage.exists(storage.join(ckpt_root, SNAPSHOT_NAME), endpoint_url=endpoint_url)
    if has_run and not resume:
        raise ConfigError(
            f"{out_uri} already holds a training run; pass --resume to continue it or choose "
            "another --out"
        )
    if resume and not has_run:
        raise ConfigError(f"nothing to resume: no training run under {out_uri}")
    return ckpt_root


def worker_cpus(workers: int, use_gpu: bool, requested: float | None = None) -> float:
    """CPUs each training worker reserves. Ray Data's read tasks also need a CPU to stream shards
    to the workers; on a small machine whole-CPU workers would take every CPU and the reads
    would wait forever, so by default at least one CPU is left free for them."""
    import ray

    if requested is not None:
        return requested
    if use_gpu:
        return 1.0
    free = float(ray.cluster_resources().get("CPU", 1.0)) - 1.0
    return max(0.25, min(1.0, free / max(1, workers)))


def _datasets(
    prepared: PreparedData, val_split: str, *, seed: int, endpoint_url: str | None
) -> dict[str, Any]:
    """The "train" and "val" Ray datasets of the loop: ``val_split``'s clips validate."""
    import ray
    import ray.data

    data_fs, _ = storage.filesystem(prepared.uri, endpoint_url=endpoint_url)
    store = float(ray.available_resources().get("object_store_memory", 0.0))
    # --seed fixes the data order too: each epoch (each execution of the dataset) draws a new
    # shuffle from (seed, execution count), and rows leave in that order (preserve_order in
    # _torch_trainer), so two uninterrupted runs with the same seed and worker count see the
    # same batches (a restart or --resume shifts the count: README "--seed")
    shuffle_seed = ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True)
    return {
        split_name: _split_dataset(prepared, split, data_fs, store, shuffle_seed, endpoint_url)
        for split_name, split in (("train", "train"), ("val", val_split))
    }


def _split_dataset(
    prepared: PreparedData,
    split: str,
    data_fs: Any,
    store: float,
    shuffle_seed: Any,
    endpoint_url: str | None,
) -> Any:
    """One split's shards as a Ray dataset of TENSOR_COLUMNS, shuffled each epoch if "train";
    ``store``: the cluster's object store bytes."""
    import ray.data

    paths = [
        storage.filesystem(u, endpoint_url=endpoint_url)[1] for u in prepared.shard_uris(split)
    ]
    size = sum(i.size or 0 for i in data_fs.get_file_info(paths))
    # Shards that fit easily in the object store are read once, here, and kept there: each
    # epoch's streaming_split then hands out blocks instead of re-reading storage with new
    # read tasks (on a small machine their start-up dominated the epoch). Larger data sets
    # stream from storage every epoch with parallel read tasks, as memory needs.
    if 3 * size < 0.2 * store:  # x3: Parquet compression
        import pyarrow.parquet as pq

        cols = list(TENSOR_COLUMNS)
        ds = ray.data.from_arrow(
            [pq.read_table(p, filesystem=data_fs, columns=cols) for p in paths]
        )
        # a full reshuffle every epoch (each epoch re-executes the dataset): SGD needs
        # batches that mix classes, and prepared shards may be in any order
        return ds.random_shuffle(seed=shuffle_seed) if split == "train" else ds
    ds = ray.data.read_parquet(paths, filesystem=data_fs, partitioning=None)
    ds = ds.select_columns(list(TENSOR_COLUMNS))
    # streamed: shuffle the block order per epoch; the loop's local buffer mixes rows
    return ds.randomize_block_order(seed=shuffle_seed) if split == "train" else ds


def _torch_trainer(
    loop_config: dict[str, Any],
    datasets: dict[str, Any],
    out_uri: str,
    *,
    workers: int,
    use_gpu: bool,
    cpus: float,
    max_failures: int,
    progress: _ProgressRelay | None,
    endpoint_url: str | None,
) -> Any:
    """The TorchTrainer of the run: checkpoints under OUT/checkpoints, every one kept, the
    worker group restarted from the latest after up to ``max_failures`` failures."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from avrl_batch.train.loop import train_loop_per_worker

    fs, out_path = storage.filesystem(out_uri, endpoint_url=endpoint_url)
    # a seeded shuffle alone still hands rows out in task-completion order. Ray Train's
    # default ingest options are this context's; a copy of them, not
    # DataConfig.default_ingest_options(), which trips Ray 2.60's own deprecation warning
    # for exclude_resources
    ingest_options = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ingest_options.preserve_order = True
    run_config = ray.train.RunConfig(
        name=RUN_NAME,
        storage_path=out_path,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
        callbacks=[progress.callback()] if progress is not None else None,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
        ),
        run_config=run_config,
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ingest_options),
    )


def _fit(trainer: Any, progress: _ProgressRelay | None, ckpt_root: str) -> Any:
    """``trainer.fit()`` with the progress relay running; a run that used up its failures is
    TrainingFailed (the checkpoints stay for --resume)."""
    import ray.train

    if progress is not None:
        progress.start()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        first = str(exc).strip().splitlines()
        raise TrainingFailed(
            f"training failed ({first[0] if first else type(exc).__name__}); checkpoints are "
            f"under {ckpt_root}: fix the cause and rerun with --resume"
        ) from exc
    finally:
        if progress is not None:
            progress.stop()
    if result.checkpoint is None:
        raise TrainingFailed("training finished without a checkpoint")
    return result


def _record_run(
    out_uri: str,
    data_uri: str,
    cfg: ModelConfig,
    tc: TrainConfig,
    record: dict[str, Any] | None,
    *,
    resume: bool,
    endpoint_url: str | None,
    log: Callable[[str], None],
) -> None:
    """OUT/run.json: a new run's dataset and settings, or a resumed run's longer ``--epochs``
    (the loop re-plans the schedule, ``loop.fit_schedule``). A checkpoint folder without
    run.json resumes with the settings given and gets none."""
    if resume:
        if record is None or tc.epochs == record["train_config"].get("epochs"):
            return
        log(f"extending the run under {out_uri} to {tc.epochs} epochs")
    doc = {"data": _data_identity(data_uri), "model_config": cfg.to_dict(),
           "train_config": asdict(tc)}
    storage.write_atomic(
        storage.join(out_uri, RUN_FILE),
        json.dumps(doc, indent=2, sort_keys=True).encode(),
        endpoint_url=endpoint_url,
    )


def _read_run(out_uri: str, endpoint_url: str | None) -> dict[str, Any] | None:
    uri = storage.join(out_uri, RUN_FILE)
    if not storage.exists(uri, endpoint_url=endpoint_url):
        return None
    return json.loads(storage.read_bytes(uri, endpoint_url=endpoint_url))


def _data_identity(uri: str) -> str:
    """One spelling of a dataset's place: an absolute path, or ``s3://bucket/prefix``."""
    p = storage.parse_uri(uri)
    return p.path if p.scheme == "file" else f"s3://{p.bucket}/{p.key.rstrip('/')}"


def _check_resume(
    out_uri: str, record: dict[str, Any], data_uri: str, cfg: ModelConfig, tc: TrainConfig
) -> None:
    """``--resume`` continues the run as it was started: one line, before Ray starts, naming
    every setting that differs from the run's record (a checkpoint's state would not fit, or
    the run would silently become another one); only a longer ``--epochs`` is allowed."""
    then = ModelConfig.from_dict(record["model_config"])
    if then != cfg:
        now = cfg.to_dict()
        diff = [f"{k} {v!r} (now {now[k]!r})" for k, v in then.to_dict().items() if now[k] != v]
        raise ConfigError(
            f"--resume: the run under {out_uri} was started with another model ("
            + ", ".join(diff)
            + "): resume with its settings or train into a new --out"
        )
    was_epochs = record["train_config"].get("epochs")
    if was_epochs is not None and tc.epochs < was_epochs:
        raise ConfigError(
            f"--resume: the run under {out_uri} was started for {was_epochs} epochs; --epochs "
            f"can only extend it: give {was_epochs} or more (or leave it out)"
        )
    differ = []
    if record.get("data") and record["data"] != _data_identity(data_uri):
        differ.append((f"DATA {record['data']}", _data_identity(data_uri)))
    for name, was in record["train_config"].items():
        now = getattr(tc, name, was)
        if name != "epochs" and was != now:
            shown = f"--{name.replace('_', '-')}" if name in TRAIN_OPTIONS else name
            differ.append((f"{shown} {was}", now))
    if differ:
        raise ConfigError(
            f"--resume: the run under {out_uri} was started with "
            + ", ".join(f"{was}, not {now}" for was, now in differ)
            + ": leave them out to continue it as it was, or train into a new --out"
        )


def _select_checkpoint(result: Any) -> Any:
    """The epoch whose weights become the model file: the best on the validation split (mean
    per-class accuracy, then lower loss, then later), the latest when there is no validation.
    A small from-scratch model's validation accuracy moves by several points between epochs;
    the last epoch is whichever of them the schedule happened to end on."""
    import math

    def score(metrics: dict[str, Any]) -> tuple[float, float, int]:
        acc = metrics.get("val_mean_class_acc")
        loss = metrics.get("val_loss")
        return (
            acc if isinstance(acc, float) and math.isfinite(acc) else -1.0,
            -loss if isinstance(loss, float) and math.isfinite(loss) else -math.inf,
            int(metrics.get("epoch", 0)),
        )

    ranked = [(c, m) for c, m in (result.best_checkpoints or []) if m.get("val_clips")]
    if not ranked:
        return result.checkpoint
    return max(ranked, key=lambda cm: score(cm[1]))[0]


def _write_model_file(
    checkpoint: Any,
    latest: Any,
    out_uri: str,
    cfg: ModelConfig,
    tc: TrainConfig,
    data_uri: str,
    ckpt_root: str,
    endpoint_url: str | None,
    *,
    parent: Any = None,
) -> TrainResult:
    """The selected checkpoint's weights -> OUT/model.avrl with config and the whole run's
    metric history (from the latest checkpoint)."""
    from pathlib import Path

    import torch

    from avrl_batch.model import build_model
    from avrl_batch.modelfile import model_id_for, model_to_bytes
    from avrl_batch.train.loop import STATE_FILE

    with tempfile.TemporaryDirectory() as d:
        checkpoint.to_directory(d)
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    history = list(state["history"])
    if latest is not None and latest is not checkpoint:
        # the selected epoch's state holds the history up to it; the run went on after it
        with tempfile.TemporaryDirectory() as d:
            latest.to_directory(d)
            history = list(
                torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)["history"]
            )
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    meta = {
        "kind": "trained",
        "data": data_uri,
        "epochs": len(history),
        "selected_epoch": int(state["epoch"]),
        "train_config": asdict(tc),
        "history": history,
        "final": history[-1] if history else {},
    }
    if parent is not None:
        # lineage: the model this one was fine-tuned from, then that one's parents
        meta["parent"] = parent.model_id
        meta["lineage"] = [parent.model_id, *parent.meta.get("lineage", [])]
    data = model_to_bytes(model, cfg, meta)
    target = storage.join(out_uri, MODEL_NAME)
    storage.write_atomic(target, data, endpoint_url=endpoint_url)
    return TrainResult(
        model_uri=target,
        model_id=model_id_for(cfg, model.state_dict()),
        history=history,
        checkpoint_uri=ckpt_root,
    )


class _ProgressRelay:
    """Carries each epoch's metrics from Ray Train's controller (where callbacks run) to the
    driver: the callback puts rows on a Ray queue, a driver thread hands them to ``on_epoch``
    while ``fit()`` blocks the main thread (which keeps Ray's Ctrl-C handling)."""

    def __init__(self, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.on_epoch = on_epoch
        # on the driver's node: a queue actor on a worker node would die with that node and
        # take the controller (whose callback puts on it) down with it
        here = ray.get_runtime_context().get_node_id()
        self.queue = Queue(
            actor_options={
                "num_cpus": 0,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False),
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def callback(self) -> Any:
        from ray.train import UserCallback

        queue = self.queue

        class EpochMetrics(UserCallback):
            def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
                if metrics:
                    try:  # progress lines are best effort: never fail training over them
                        queue.put(metrics[0])  # every worker reports the same all-reduced row
                    except Exception:  # noqa: BLE001
                        pass

        return EpochMetrics()

    def start(self) -> None:
        self._thread.start()

    def _drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                row = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # noqa: BLE001 - the queue actor went away with Ray
                return
            self.on_epoch(row)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            import ray

            ray.kill(self.queue.actor)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass
