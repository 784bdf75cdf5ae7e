"""Training and evaluation on real synthetic clips, a real local Ray and a real moto S3 server.

A session-scoped fixture generates the `ci` synthetic clips (plus two corrupt files) and
prepares them once; the tests then train the `tiny` preset for 2-3 epochs with two Ray Train
workers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avrl_batch.cli import main
from avrl_batch.config import TrainConfig, preset
from avrl_batch.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prepared_ci(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`ci` clips + a random-bytes file and a truncated clip, prepared once for the tiny preset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avrl_batch.data.synth import generate
    from avrl_batch.schema import CLIPS
    from avrl_batch.train.prepare import prepare

    root = tmp_path_factory.mktemp("ci")
    res = generate(root / "synth", preset="ci", seed=0, recordings=False)
    manifest = pq.read_table(res.manifest_path).to_pylist()
    first = root / "synth" / manifest[0]["uri"]
    (root / "synth" / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = first.read_bytes()
    (root / "synth" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    manifest += [
        {"uri": "random.mp4", "label": "run", "split": "train", "dark": False, "seed": 0},
        {"uri": "truncated.mp4", "label": "fight", "split": "test", "dark": False, "seed": 0},
    ]
    path = root / "synth" / "with_corrupt.parquet"
    pq.write_table(pa.Table.from_pylist(manifest, schema=CLIPS), path)
    lines: list[str] = []
    out = root / "prepared"
    prepared = prepare(str(path), str(out), preset("tiny"), log=lines.append)
    return {
        "uri": str(out),
        "prepared": prepared,
        "log": lines,
        "n_manifest": len(manifest),
        "manifest": str(path),
    }


def test_prepare_lists_and_skips_corrupt_clips(prepared_ci: dict) -> None:
    from avrl_batch.train.prepare import load_prepared, read_split

    prepared = load_prepared(prepared_ci["uri"])
    skipped = {s["uri"]: s["reason"] for s in prepared.skipped}
    assert set(skipped) == {"random.mp4", "truncated.mp4"}
    assert "NotMedia" in skipped["random.mp4"]
    assert skipped["truncated.mp4"]  # a reason, whatever stage caught it
    assert any("random.mp4" in line for line in prepared_ci["log"])
    assert any("truncated.mp4" in line for line in prepared_ci["log"])
    # every good clip made it: ci has 6 train + 3 test clips per class
    assert sum(prepared.n_clips(s) for s in prepared.counts) == prepared_ci["n_manifest"] - 2
    assert prepared.n_clips("val") == 9  # one per class carved from train (no val in ci)
    test = read_split(prepared, "test")
    assert test["frames"].shape == (27, 8, 48, 48, 3) and test["frames"].dtype == np.uint8
    assert test["logmel"].shape == (27, 2, 96, 64) and test["logmel"].dtype == np.float16
    assert test["has_audio"].all() and test["dark"].any() and test["frames"].std() > 0


def test_cli_train_two_workers_then_evaluate(
    prepared_ci: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prepare -> `avrl train --preset tiny --workers 2` -> `avrl evaluate`, then --resume."""
    from avrl_batch.modelfile import load_model

    out = tmp_path / "run"
    data = prepared_ci["uri"]
    main(["train", data, "--out", str(out), "--preset", "tiny", "--workers", "2",
          "--epochs", "2", "--batch-size", "8"])  # fmt: skip
    loaded = load_model(out / "model.avrl")
    history = loaded.meta["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["world_size"] == 2 for h in history)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*")) == [
        "epoch_0001",
        "epoch_0002",
    ]
    err = capsys.readouterr().err
    assert "epoch   1" in err and "epoch   2" in err  # the per-epoch progress lines

    png = tmp_path / "confusion.png"
    main(["evaluate", str(out / "model.avrl"), "--data", data, "--plot", str(png)])
    table = capsys.readouterr().out
    for name in loaded.cfg.class_names:
        assert name in table
    assert "mean" in table and "overall" in table and "27 clips" in table
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"

    # --resume continues the finished run to a third epoch from the epoch-2 checkpoint
    main(["train", data, "--out", str(out), "--preset", "tiny", "--workers", "2",
          "--epochs", "3", "--batch-size", "8", "--resume"])  # fmt: skip
    history = load_model(out / "model.avrl").meta["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[2]["resumed_from_epoch"] == 2
    # the model file holds the epoch best on validation (mean per-class acc, then lower loss)
    best = max(history, key=lambda h: (h["val_mean_class_acc"], -h["val_loss"], h["epoch"]))
    assert load_model(out / "model.avrl").meta["selected_epoch"] == best["epoch"]

    capsys.readouterr()
    main(["evaluate", str(out / "model.avrl"), "--data", data, "--subset", "dark",
          "--patch", "temporal", "--ratio", "0.5", "--json"])  # fmt: skip
    (res,) = json.loads(capsys.readouterr().out)
    assert res["subset"] == "dark" and res["patch"] == "temporal"
    assert 0 < res["n"] < 27 and sum(res["per_class_n"].values()) == res["n"]


def test_same_seed_same_model(prepared_ci: dict, tmp_path: Path) -> None:
    """One manifest prepared twice gives the same shards, and `--seed` fixes the data order as
    well as the initial weights: a run on each ends with the same weights and the same metrics
    every epoch."""
    from avrl_batch.modelfile import load_model
    from avrl_batch.train.prepare import load_prepared, prepare, read_split

    again = tmp_path / "prepared_again"
    prepare(prepared_ci["manifest"], str(again), preset("tiny"), log=lambda _: None)
    for split in ("train", "val"):
        first = read_split(load_prepared(prepared_ci["uri"]), split)
        second = read_split(load_prepared(str(again)), split)
        assert first.keys() == second.keys()
        for k in first:
            assert np.array_equal(first[k], second[k]), (split, k)

    runs = []
    for name, data in (("a", prepared_ci["uri"]), ("b", str(again))):
        out = tmp_path / name
        main(["train", data, "--out", str(out), "--preset", "tiny",
              "--workers", "1", "--epochs", "2", "--batch-size", "8", "--seed", "3"])  # fmt: skip
        runs.append(load_model(out / "model.avrl"))
    a, b = runs
    assert a.model_id == b.model_id
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    metrics = ("train_loss", "train_acc", "val_loss", "val_acc")
    assert [[h[m] for m in metrics] for h in a.meta["history"]] == [
        [h[m] for m in metrics] for h in b.meta["history"]
    ]


class FailOnce:
    """An epoch hook for ``train(epoch_hook=...)``: the highest-rank worker raises as epoch
    ``at_epoch`` begins, once: it leaves ``marker``, and the restarted worker group finds it
    and trains on.

    It first waits until Ray Train has registered the previous epoch's checkpoint (listed in
    the run's checkpoint snapshot under ``out_uri``): Ray Train V2's controller handles a
    worker error before reports still queued from the same poll, so a failure within a poll
    interval (2 s) of a report can drop that report and resume one epoch earlier. A real
    crash mid-epoch is far from the report; the wait makes the test see that case."""

    def __init__(self, at_epoch: int, marker: str, out_uri: str, endpoint_url: str | None) -> None:
        self.at_epoch = at_epoch
        self.marker = marker
        self.out_uri = out_uri
        self.endpoint_url = endpoint_url

    def __call__(self, epoch: int, rank: int, world: int) -> None:
        if epoch != self.at_epoch or rank != world - 1 or Path(self.marker).exists():
            return
        if epoch > 1:
            self._wait_for_checkpoint(f"epoch_{epoch - 1:04d}")
        Path(self.marker).write_text(f"failed at epoch {epoch} on rank {rank}\n")
        raise RuntimeError(f"injected failure at epoch {epoch} (FailOnce epoch hook)")

    def _wait_for_checkpoint(self, name: str) -> None:
        import time

        from avrl_batch import storage
        from avrl_batch.train.trainer import RUN_NAME, SNAPSHOT_NAME

        snapshot = storage.join(self.out_uri, RUN_NAME, SNAPSHOT_NAME)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if storage.exists(snapshot, endpoint_url=self.endpoint_url):
                listed = storage.read_bytes(snapshot, endpoint_url=self.endpoint_url)
                if name in listed.decode("utf-8", "replace"):
                    return
            time.sleep(0.5)


def test_fault_injection_resumes_from_checkpoint_on_s3(
    prepared_ci: dict,
    tmp_path: Path,
    s3_endpoint: str,
    s3_bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Checkpoints and model on S3 (moto); a worker raises once at epoch 2 (``FailOnce``),
    FailureConfig(max_failures=1) restarts the group from the epoch-1 checkpoint; evaluate
    loads the S3 model file and the S3 checkpoint back."""
    import boto3
    import ray

    from avrl_batch.train.trainer import train

    out = f"s3://{s3_bucket}/runs/av"
    marker = tmp_path / "failed-once"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FailOnce, to the workers
    rows: list[dict] = []
    result = train(
        prepared_ci["uri"],
        out,
        preset("tiny"),
        TrainConfig(epochs=3, batch_size=8),
        workers=2,
        max_failures=1,
        endpoint_url=s3_endpoint,
        on_epoch=rows.append,
        epoch_hook=FailOnce(2, str(marker), out, s3_endpoint),
    )
    assert marker.read_text().startswith("failed at epoch 2 on rank 1")
    # attempt 1 reported epoch 1 and died at the start of epoch 2; attempt 2 resumed there
    assert [(r["epoch"], r["resumed_from_epoch"]) for r in rows] == [(1, 0), (2, 1), (3, 1)]
    assert [h["resumed_from_epoch"] for h in result.history] == [0, 1, 1]

    keys = {
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint)
        .list_objects_v2(Bucket=s3_bucket)
        .get("Contents", [])
    }
    for e in (1, 2, 3):
        assert f"runs/av/checkpoints/epoch_{e:04d}/state.pt" in keys
    assert "runs/av/model.avrl" in keys

    from avrl_batch import storage
    from avrl_batch.modelfile import model_from_bytes

    # the model file holds the epoch best on validation; its checkpoint has the same weights
    meta = model_from_bytes(
        storage.read_bytes(f"{out}/model.avrl", endpoint_url=s3_endpoint)
    ).meta
    best = max(
        result.history, key=lambda h: (h["val_mean_class_acc"], -h["val_loss"], h["epoch"])
    )
    assert meta["selected_epoch"] == best["epoch"]
    capsys.readouterr()
    main(["evaluate", f"{out}/model.avrl", "--data", prepared_ci["uri"], "--json",
          "--endpoint-url", s3_endpoint, "--compare",
          f"{out}/checkpoints/epoch_{best['epoch']:04d}"])  # fmt: skip
    from_file, from_ckpt = json.loads(capsys.readouterr().out)
    assert from_file["model_id"] == result.model_id
    assert from_ckpt["model_id"] == from_file["model_id"]
    assert from_ckpt["per_class_acc"] == from_file["per_class_acc"] and from_file["n"] == 27
    # --resume with a schedule the checkpoints were not made with: one clear line, no Ray run
    with pytest.raises(ConfigError, match="started with --schedule plateau, not cosine"):
        train(prepared_ci["uri"], out, preset("tiny"),
              TrainConfig(epochs=4, batch_size=8, schedule="cosine"), resume=True,
              endpoint_url=s3_endpoint)  # fmt: skip
    with pytest.raises(ConfigError, match="another model .*fusion 'concat' \\(now 'add'\\)"):
        train(prepared_ci["uri"], out, preset("tiny", fusion="add"),
              TrainConfig(epochs=4, batch_size=8), resume=True, endpoint_url=s3_endpoint)


def _cosine_epochs(tc: TrainConfig, epochs: range, state: dict | None = None) -> tuple[list, dict]:
    """Train-loop bookkeeping on a real optimiser: the rate of each epoch in ``epochs`` (a
    resumed run restores ``state`` and fits its schedule first), and the state after them."""
    from avrl_batch.model import build_model
    from avrl_batch.train.loop import fit_schedule, make_optimizer

    torch.manual_seed(0)
    model = build_model(preset("tiny"))
    opt, sched = make_optimizer(model, tc)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched = fit_schedule(opt, sched, tc, epochs.start - 1)
    rates = []
    for _ in epochs:
        rates.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: the step only orders the calls as training does
        sched.step()
    return rates, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}


def test_resumed_cosine_schedule_never_raises_the_rate() -> None:
    """Resumed on its own horizon, a cosine run is the uninterrupted one; extended with
    --epochs, it anneals from the current rate to min_lr over the epochs left, and a crash
    during the extension resumes on the extended curve."""
    tc4 = TrainConfig(epochs=4, lr=1e-3, optimizer="adam", schedule="cosine")
    tc8 = TrainConfig(epochs=8, lr=1e-3, optimizer="adam", schedule="cosine")
    whole, _ = _cosine_epochs(tc4, range(1, 5))
    first, after2 = _cosine_epochs(tc4, range(1, 3))
    rest, _ = _cosine_epochs(tc4, range(3, 5), after2)
    assert first + rest == whole
    extended, end = _cosine_epochs(tc8, range(3, 9), after2)
    assert extended[0] == whole[2]  # the rate epoch 3 had in the 4-epoch plan
    rates = first + extended
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False)), rates
    assert extended[-1] > tc8.min_lr and end["optimizer"]["param_groups"][0]["lr"] == tc8.min_lr
    # re-planning the whole run to 8 epochs would have put epoch 3 back up
    assert _cosine_epochs(tc8, range(1, 9))[0][2] > whole[2]
    part, after5 = _cosine_epochs(tc8, range(3, 6), after2)
    again, _ = _cosine_epochs(tc8, range(6, 9), after5)
    assert part + again == extended


def test_resume_continues_the_run_as_it_was_started(
    prepared_ci: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cosine run that crashed after epoch 1 resumes with its own epochs, lr, batch, seed and
    data (no DATA, no options); a differing one is refused in one line before Ray starts;
    `--resume --epochs 3` extends it and the rate never rises."""
    import ray

    from avrl_batch.modelfile import load_model
    from avrl_batch.train.trainer import TrainingFailed, run_settings, train

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # FailOnce, to the workers
    out = tmp_path / "run"
    data = prepared_ci["uri"]
    started = TrainConfig(epochs=2, batch_size=16, lr=2e-3, seed=5, optimizer="adam",
                          schedule="cosine")  # fmt: skip
    with pytest.raises(TrainingFailed):
        train(data, str(out), preset("tiny"), started, max_failures=0,
              epoch_hook=FailOnce(2, str(tmp_path / "crashed"), str(out), None))  # fmt: skip
    assert sorted(p.name for p in (out / "checkpoints").glob("epoch_*")) == ["epoch_0001"]
    # nothing given: the run's settings, not the defaults (80 epochs, batch 12, seed 0)
    run = run_settings(str(out), resume=True)
    assert (run.data_uri, run.cfg, run.tc) == (data, preset("tiny"), started)

    capsys.readouterr()
    for argv, needle in (
        (["--lr", "0.01"], "--lr 0.002, not 0.01"),
        (["--batch-size", "8", "--seed", "1"], "--batch-size 16, not 8, --seed 5, not 1"),
        ([str(tmp_path)], f"DATA {data}, not {tmp_path}"),
        (["--epochs", "1"], "started for 2 epochs; --epochs can only extend it"),
        (["--preset", "tiny96"], "another model (preset 'tiny' (now 'tiny96')"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--out", str(out), "--resume", *argv])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert needle in err, err

    main(["train", "--out", str(out), "--resume", "--epochs", "3"])
    meta = load_model(out / "model.avrl").meta
    history = meta["history"]
    assert [(h["epoch"], h["resumed_from_epoch"]) for h in history] == [(1, 0), (2, 1), (3, 1)]
    rates = [h["lr"] for h in history]
    assert rates[0] == 2e-3 and rates[0] > rates[1] > rates[2] > started.min_lr, rates
    assert meta["train_config"] == {**json.loads(json.dumps(vars(started))), "epochs": 3}
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["train_config"]["epochs"] == 3 and recorded["data"] == data


# ---------------------------------------------------------------------------------------------
# DDP correctness


def _ddp_one_step(config: dict) -> None:
    """One forward/backward of a DDP-wrapped model on this worker's slice of a fixed batch."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from avrl_batch.config import ModelConfig
    from avrl_batch.model import build_model
    from avrl_batch.train.loop import batch_inputs, forward_loss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = ModelConfig.from_dict(config["model"])
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(build_model(cfg))
    model.eval()  # BatchNorm on running statistics: see test_ddp_step_equals_single_process
    batch = torch.load(config["batch_file"], weights_only=True)
    b = batch["label"].shape[0] // world
    local = {k: v[rank * b : (rank + 1) * b] for k, v in batch.items()}
    video, audio, has_audio, labels = batch_inputs(local, cfg, torch.device("cpu"))
    loss, _ = forward_loss(model, video, audio, has_audio, labels)
    loss.backward()  # DDP all-reduces (averages) the gradients here
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    grads = {n: p.grad.detach().clone() for n, p in model.module.named_parameters()}
    torch.save({"loss": mean_loss, "grads": grads}, f"{config['out_prefix']}{rank}.pt")
    ray.train.report({"loss": float(mean_loss)})


def test_ddp_step_equals_single_process(tmp_path: Path, ray_local: None) -> None:
    """One step on 2 DDP workers with global batch B (B/2 each) gives the loss and
    gradients of 1 process with batch B.

    BatchNorm is why the check runs the model in eval mode: in training mode each worker
    normalises with the statistics of its own B/2 clips, so the 2-worker loss is a different
    function from the 1-worker one (that is what DDP without SyncBatchNorm does, not a bug).
    With running statistics every sample's output depends on that sample alone; the mean of
    the two half-batch mean losses is then the full-batch mean loss, and DDP's averaged
    gradient must equal the full-batch gradient. That is the property DDP has to get right.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from avrl_batch.model import build_model
    from avrl_batch.train.loop import batch_inputs, forward_loss

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = preset("tiny")
    gen = torch.Generator().manual_seed(1)
    b = 8
    batch = {
        "frames": torch.randint(0, 256, (b, cfg.frames, cfg.size, cfg.size, 3), generator=gen).to(
            torch.uint8
        ),
        "logmel": torch.randn(b, cfg.audio_examples, 96, 64, generator=gen).to(torch.float16),
        "label": torch.arange(b) % cfg.num_classes,
        "has_audio": torch.tensor([True, False] * (b // 2)),
    }
    torch.save(batch, tmp_path / "batch.pt")

    TorchTrainer(
        _ddp_one_step,
        train_loop_config={
            "model": cfg.to_dict(),
            "batch_file": str(tmp_path / "batch.pt"),
            "out_prefix": str(tmp_path / "rank"),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path / "ray")),
    ).fit()

    torch.manual_seed(0)
    single = build_model(cfg).eval()
    video, audio, has_audio, labels = batch_inputs(batch, cfg, torch.device("cpu"))
    loss, _ = forward_loss(single, video, audio, has_audio, labels)
    loss.backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        assert set(got["grads"]) == {n for n, _ in single.named_parameters()}
        for name, p in single.named_parameters():
            torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6)
    shutil.rmtree(tmp_path / "ray", ignore_errors=True)
