"""Issue 8, point 4: repeated worker-node loss on a ray.cluster_utils.Cluster, during a scan
and during training; plus `avrl evaluate` refusing a pickle payload (point 6), which needs
the prepared data set made here.

Nodes are removed without grace (their processes are killed, as when a machine dies) and a
fresh node joins after each loss, as an autoscaler would bring one. The tests print the
figures for the README: runtime with and without failures, nodes killed, and what the runs
ended with (inputs = outputs ∪ errors, zero duplicates).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from badmedia import good_recording
from scanhelp import check_outputs, tiny_model

from avrl_batch.scan import ScanConfig, run_scan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the tests' local Ray; the next test that needs one starts it again
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _workers(c: object) -> list:
    return [n for n in c.list_all_nodes() if n is not c.head_node]  # type: ignore[attr-defined]


def _replace_a_worker(c: object, kills: list[str]) -> None:
    """Kill a worker node (no grace: as if the machine died) and let a fresh one join."""
    victim = _workers(c)[0]
    kills.append(victim.node_id)
    c.remove_node(victim, allow_graceful=False)  # type: ignore[attr-defined]
    c.add_node(num_cpus=2)  # type: ignore[attr-defined]


def test_scan_survives_repeated_worker_node_loss(cluster: object, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    paths = [str(good_recording(rec / f"cam{i}" / f"cam{i}_20260401T0{i}0000Z.mp4", 8.0,
                                seed=i)) for i in range(6)]
    model = tmp_path / "tiny.avrl"
    tiny_model(model)

    def scan(out: str, progress: object = None) -> tuple[object, float]:
        t0 = time.monotonic()
        s = run_scan(ScanConfig(source=str(rec), model=str(model), out=out, segment_s=4.0,
                                batch_size=4), progress=progress)  # type: ignore[arg-type]
        return s, time.monotonic() - t0

    base, base_s = scan(str(tmp_path / "out_base"))
    kills: list[str] = []

    def on_progress(p: dict) -> None:
        # lose a worker node after the 1st and after the 3rd finished source
        if p["sources_done"] >= 1 + 2 * len(kills) and len(kills) < 2:
            _replace_a_worker(cluster, kills)

    s, faulty_s = scan(str(tmp_path / "out_faulty"), on_progress)
    assert len(kills) == 2, "the nodes were not removed mid-scan"
    got = check_outputs(str(tmp_path / "out_faulty"), paths)  # inputs = outputs, no dups
    assert (s.sources_ok, s.sources_failed) == (6, 0) == (base.sources_ok, base.sources_failed)
    for p in paths:
        assert got[p]["windows"]["window_index"].to_pylist() == [0, 1, 2, 3]
    print(f"scan node loss: {len(paths)} sources, {len(kills)} worker nodes killed; "
          f"{base_s:.1f} s without failures, {faulty_s:.1f} s with; lost 0, duplicates 0")


def test_training_survives_repeated_worker_node_loss(
    cluster: object, prepared_small: str, tmp_path: Path
) -> None:
    """Two Ray Train workers; a node hosting one is killed in epoch 2 and again in epoch 3;
    FailureConfig restarts the group from the last checkpoint each time and training ends
    with every epoch in the history."""
    from avrl_batch.config import TrainConfig, preset
    from avrl_batch.train.trainer import train

    data = prepared_small
    from ray._private import state as ray_state

    # spare capacity up front: Cluster.add_node must run on the main thread, and the kills
    # below happen on the thread that relays epoch metrics
    cluster.add_node(num_cpus=2)  # type: ignore[attr-defined]
    cluster.wait_for_nodes()  # type: ignore[attr-defined]
    kills: list[str] = []
    epochs: list[dict] = []
    lock = threading.Lock()

    def kill_a_training_node() -> None:
        """Kill a worker node that hosts a Ray Train worker (so the group must recover)."""
        # the GCS actor table (the state API would need the dashboard, which is off)
        hosts = {a["Address"]["NodeID"] for a in ray_state.actors().values()
                 if a["State"] == "ALIVE" and "TrainWorker" in a["ActorClassName"]}
        victim = next(n for n in _workers(cluster) if n.node_id in hosts)
        kills.append(victim.node_id)
        cluster.remove_node(victim, allow_graceful=False)  # type: ignore[attr-defined]

    def on_epoch(row: dict) -> None:
        with lock:
            epochs.append(row)
            # epoch 1 done -> kill during epoch 2; epoch 2 done (after the restart) -> kill
            # during epoch 3
            if row["epoch"] in (1, 2) and len(kills) < row["epoch"]:
                kill_a_training_node()

    def run(name: str, hook: object) -> tuple[object, float]:
        t0 = time.monotonic()
        result = train(data, str(tmp_path / name), preset("tiny"),
                       TrainConfig(epochs=3, batch_size=6), workers=2, cpus_per_worker=1.0,
                       max_failures=4, on_epoch=hook)  # type: ignore[arg-type]
        return result, time.monotonic() - t0

    _, base_s = run("base", None)  # the same training without failures, for the figure
    result, faulty_s = run("faulty", on_epoch)
    assert len(kills) == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # type: ignore[attr-defined]
    # each epoch after a kill ran in a restarted worker group, from the last checkpoint
    resumed = [h["resumed_from_epoch"] for h in result.history]  # type: ignore[attr-defined]
    assert resumed[0] == 0 and resumed == sorted(resumed) and len(set(resumed) - {0}) == 2, (
        resumed
    )
    print(f"train node loss: {len(kills)} worker nodes (hosting Ray Train workers) killed "
          f"during epochs 2 and 3; 3 epochs in {base_s:.1f} s without failures, "
          f"{faulty_s:.1f} s with; resumed_from_epoch per epoch {resumed}")


def test_evaluate_and_scan_refuse_a_pickle_payload_model(
    prepared_small: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`avrl evaluate` and `avrl scan --model` load model files and checkpoints with
    weights_only=True: a payload that would run code when unpickled is refused with one
    line, and never runs."""
    import os
    import pickle

    from avrl_batch.cli import main

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.avrl"
    evil.write_bytes(pickle.dumps({"format": "avrl-model", "version": 1, "x": Payload()}))
    evil_pth = tmp_path / "evil.pth"
    evil_pth.write_bytes(pickle.dumps(Payload()))
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_0001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(pickle.dumps({"model": Payload()}))
    rec = tmp_path / "rec"
    good_recording(rec / "cam1" / "cam1_20260401T010000Z.mp4", 2.0)
    calls = [
        ["evaluate", str(evil), "--data", prepared_small],
        ["evaluate", str(ckpt), "--data", prepared_small],
        ["scan", str(rec), "--model", str(evil_pth), "--out", str(tmp_path / "out")],
        ["scan", str(rec), "--model", str(evil), "--out", str(tmp_path / "out")],
    ]
    for argv in calls:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2, (argv, err)
        assert err.startswith("error: ") and "\n" not in err, (argv, err)
        assert "refused" in err or "weights_only" in err or "not a" in err, (argv, err)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The `ci` synthetic clips cut to 2 train + 1 test clip per class, prepared for tiny."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avrl_batch.config import preset
    from avrl_batch.data.synth import generate
    from avrl_batch.schema import CLIPS
    from avrl_batch.train.prepare import prepare

    root = tmp_path_factory.mktemp("small")
    res = generate(root / "synth", preset="ci", seed=0, recordings=False)
    keep, seen = [], {}
    for r in pq.read_table(res.manifest_path).to_pylist():
        n = seen.get((r["label"], r["split"]), 0)
        if n < (2 if r["split"] == "train" else 1):
            keep.append(r)
            seen[(r["label"], r["split"])] = n + 1
    manifest = root / "synth" / "small.parquet"
    pq.write_table(pa.Table.from_pylist(keep, schema=CLIPS), manifest)
    prepare(str(manifest), str(root / "prepared"), preset("tiny"), log=lambda _: None)
    return str(root / "prepared")
