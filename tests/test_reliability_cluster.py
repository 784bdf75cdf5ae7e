"""The scan and training on a ray.cluster_utils.Cluster (one per module, shared by the tests):
inference actors on the node that declares a GPU and decoding on the others, repeated
worker-node loss during a scan and during training (with runtimes with and without
failures); plus `avrl evaluate` and `avrl scan --model` refusing a pickle payload, which needs
the prepared data set made here.

Nodes are removed without grace (their processes are killed, as when a machine dies); in the
scan a fresh node joins after each loss, as an autoscaler would bring one. The tests record
their figures for the README (conftest ``figures``: printed, and JSON under
$AVRL_FIGURES_DIR): runtime with and without failures, kills, retries, inputs, outputs,
errors, duplicates.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from badmedia import Fault, decoder_faults_env
from conftest import FIGURES_ENV
from scanhelp import check_outputs, recording, tiny_model

from avrl_batch.scan import ScanConfig, ScanSummary, run_scan

pytestmark = pytest.mark.slow

# Counting decoder jobs: the workers' FaultyDecoder (badmedia) logs "<stage> <uri>" before
# each job on a source whose URI holds the marker; the fault "count" is neither abort nor
# hang, so the job then runs as usual. More lines than sources + segments = jobs Ray ran again.
COUNT_MARKER = "/nodeloss-rec/"
# The GCS declares a killed node dead after health_check_failure_threshold missed checks,
# health_check_period_ms apart (Ray's defaults: 5 x 3 s); a live but busy raylet still has
# the default 10 s per check to answer, so only the detection of a real loss gets faster.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class Nodes:
    cluster: Any  # ray.cluster_utils.Cluster
    head: Any
    gpu: Any  # declares num_gpus=1: the inference actors' node


@pytest.fixture(scope="module")
def decoder_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoder") / "jobs.log"


@pytest.fixture(scope="module")
def cluster(decoder_log: Path) -> Iterator[Nodes]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the tests' local Ray; the next test that needs one starts it again
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_NODE_DEATH})
    # the "GPU" is a declared resource: the actors must be placed there; torch sees no CUDA
    # and runs on the CPU, which is all these tests need
    gpu = c.add_node(num_cpus=1, num_gpus=1)
    for _ in range(2):
        c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False,
             runtime_env=decoder_faults_env((Fault("count", "*", COUNT_MARKER),), decoder_log))
    try:
        yield Nodes(c, c.head_node, gpu)
    finally:
        ray.shutdown()
        c.shutdown()


def _workers(nodes: Nodes) -> list:
    """The CPU worker nodes alive now (neither the head nor the GPU node)."""
    return [n for n in nodes.cluster.list_all_nodes() if n not in (nodes.head, nodes.gpu)]


def _kill_busiest_worker(nodes: Nodes, kills: list[str]) -> None:
    """Kill the busiest CPU worker node, without grace (as if the machine died)."""
    from ray._private import state as ray_state

    # fewest free CPUs = most decode tasks running there (a node with none free has no
    # "CPU" entry), so the loss takes work in flight with it
    free = ray_state.available_resources_per_node()
    victim = min(_workers(nodes), key=lambda n: free.get(n.node_id, {}).get("CPU", 0.0))
    kills.append(victim.node_id)
    nodes.cluster.remove_node(victim, allow_graceful=False)


def _decoder_jobs(log: Path) -> Counter[str]:
    """Decoder jobs started so far, by stage (probe / decode); the log is then emptied."""
    jobs = Counter(line.split(" ", 1)[0] for line in log.read_text().splitlines())
    log.write_text("")
    return jobs


def test_scan_places_actors_on_the_gpu_node_and_survives_repeated_node_loss(
    cluster: Nodes, tmp_path: Path, decoder_log: Path, figures: Callable[[dict], None]
) -> None:
    """The same scan twice: without failures (where the work ran: inference on the GPU node,
    decoding on the others), then with the busiest CPU worker node killed once the 2nd and
    again once the 6th segment decode has started, each replaced by a fresh one."""
    rec = tmp_path / COUNT_MARKER.strip("/")
    paths = [str(recording(rec / f"cam{i}" / f"cam{i}_20260301T0{i}0000Z.mp4", 12, seed=i))
             for i in range(5)]
    bad = rec / "cam9" / "cam9_20260301T090000Z.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 300)  # a Matroska magic and nothing else
    paths.append(str(bad))
    model = tmp_path / "tiny.avrl"
    tiny_model(model)

    def scan(out: str, progress: object = None) -> tuple[ScanSummary, float, Counter[str]]:
        decoder_log.write_text("")
        t0 = time.monotonic()
        s = run_scan(ScanConfig(source=str(rec), model=str(model), out=out, segment_s=6.0,
                                batch_size=4), progress=progress)  # type: ignore[arg-type]
        return s, time.monotonic() - t0, _decoder_jobs(decoder_log)

    def check(s: ScanSummary, out: str) -> None:
        # inputs = outputs ∪ errors, one object per key, no duplicate rows, nothing lost
        got = check_outputs(out, paths)
        assert (s.sources_ok, s.sources_failed) == (5, 1)
        assert got[str(bad)]["error"]["stage"][0].as_py() == "probe"
        for p in paths[:-1]:
            assert got[p]["windows"]["window_index"].to_pylist() == list(range(6))
        # placement: every window inferred on the GPU node; no decoding there
        assert set(s.infer_nodes) == {cluster.gpu.node_id}
        assert sum(s.infer_nodes.values()) == 5 * 6
        assert cluster.gpu.node_id not in s.decode_nodes
        assert sum(s.decode_nodes.values()) == s.segments == 5 * 2  # 12 s at 6 s segments

    base, base_s, base_jobs = scan(str(tmp_path / "out_base"))
    check(base, str(tmp_path / "out_base"))
    # decoding spread over the CPU nodes (the head included); every probe and every
    # segment's decode ran once, so the job count below is right
    assert len(base.decode_nodes) >= 2, base.decode_nodes
    assert set(base.decode_nodes) <= {cluster.head.node_id} | {n.node_id for n in _workers(cluster)}
    assert base_jobs == {"probe": len(paths), "decode": base.segments}, base_jobs

    kills: list[str] = []
    replaced = [0]
    lock = threading.Lock()  # the Cluster object is not made for two threads at once
    done = threading.Event()

    def killer() -> None:
        # lose a worker node once the 2nd and again once the 6th segment decode has started
        # (the decoder logs each job as it starts), so each loss takes decoding in flight
        while not done.is_set() and len(kills) < 2:
            started = sum(line.startswith("decode ")
                          for line in decoder_log.read_text().splitlines())
            if started >= (2, 6)[len(kills)]:
                with lock:
                    _kill_busiest_worker(cluster, kills)
            time.sleep(0.02)

    def replace_lost() -> None:
        # a fresh node joins after each loss, as an autoscaler would bring one
        # (Cluster.add_node must run on the main thread: the one that reports progress)
        with lock:
            while replaced[0] < len(kills):
                cluster.cluster.add_node(num_cpus=2)
                replaced[0] += 1

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        s, faulty_s, jobs = scan(str(tmp_path / "out_faulty"), lambda _: replace_lost())
    finally:
        done.set()
        thread.join(timeout=60)
        replace_lost()  # the next test starts with as many nodes as this one did
    assert len(kills) == 2, "the nodes were not removed mid-scan"
    check(s, str(tmp_path / "out_faulty"))
    assert jobs["probe"] >= len(paths) and jobs["decode"] >= s.segments
    figures({
        "inputs": len(paths), "segments": s.segments, "windows": s.windows,
        "without_failures": {"runtime_s": round(base_s, 1), "kills": 0,
                             "decoder_jobs": dict(base_jobs), "retries": 0},
        "with_failures": {
            "runtime_s": round(faulty_s, 1), "kills": len(kills),
            "decoder_jobs": dict(jobs),
            # jobs Ray ran again (lost with a node, or whose output was lost with one)
            "retries": sum(jobs.values()) - len(paths) - s.segments,
        },
        "outputs": s.sources_ok, "errors": s.sources_failed,
        "sources_lost": 0, "duplicates": 0,  # check_outputs: inputs = outputs ∪ errors
        "order": "without failures first (cold Ray workers), then with failures (workers "
                 "warm except on the replacement nodes)",
    })


def test_training_survives_repeated_worker_node_loss(
    cluster: Nodes, prepared_small: str, tmp_path: Path, figures: Callable[[dict], None]
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
    cluster.cluster.add_node(num_cpus=2)
    cluster.cluster.wait_for_nodes()
    kills: list[str] = []
    epochs: list[dict] = []
    lock = threading.Lock()
    t_start = [0.0]

    def kill_a_training_node() -> None:
        """Kill a worker node that hosts a Ray Train worker (so the group must recover)."""
        # the GCS actor table (the state API would need the dashboard, which is off)
        hosts = {a["Address"]["NodeID"] for a in ray_state.actors().values()
                 if a["State"] == "ALIVE" and "TrainWorker" in a["ActorClassName"]}
        # any node but the head (the driver's), the GPU node included: the scan is done
        victim = next(n for n in cluster.cluster.list_all_nodes()
                      if n is not cluster.head and n.node_id in hosts)
        kills.append(victim.node_id)
        cluster.cluster.remove_node(victim, allow_graceful=False)

    def on_epoch(row: dict) -> None:
        with lock:
            epochs.append({**row, "at_s": round(time.monotonic() - t_start[0], 1)})
            # epoch 1 done -> kill during epoch 2; epoch 2 done (after the restart) -> kill
            # during epoch 3
            if row["epoch"] in (1, 2) and len(kills) < row["epoch"]:
                kill_a_training_node()

    def run(name: str, hook: object) -> tuple[object, float]:
        t_start[0] = t0 = time.monotonic()
        result = train(data, str(tmp_path / name), preset("tiny"),
                       TrainConfig(epochs=3, batch_size=6), workers=2, cpus_per_worker=1.0,
                       max_failures=4, on_epoch=hook, log=lambda _: None)  # type: ignore[arg-type]
        return result, time.monotonic() - t0

    base_epochs: list[float] = []
    base_s: float | None = None
    if os.environ.get(FIGURES_ENV):
        # the same training without failures, only for the recorded figure: it asserts
        # nothing, and it is the suite's longest step
        _, base_s = run("base", lambda row: base_epochs.append(
            round(time.monotonic() - t_start[0], 1)))
    result, faulty_s = run("faulty", on_epoch)
    assert len(kills) == 2
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # type: ignore[attr-defined]
    # each epoch after a kill ran in a restarted worker group, from the last checkpoint
    resumed = [h["resumed_from_epoch"] for h in result.history]  # type: ignore[attr-defined]
    assert resumed[0] == 0 and resumed == sorted(resumed) and len(set(resumed) - {0}) == 2, (
        resumed
    )
    from avrl_batch.train.prepare import load_prepared

    figures({
        "inputs": {"train_clips": load_prepared(data).n_clips("train"), "epochs": 3,
                   "train_workers": 2},
        # measured only when $AVRL_FIGURES_DIR is set
        "without_failures": None if base_s is None else {
            "runtime_s": round(base_s, 1), "kills": 0, "restarts": 0,
            "epoch_ends_at_s": base_epochs},
        "with_failures": {
            "runtime_s": round(faulty_s, 1),
            "kills": len(kills),  # worker nodes hosting a Ray Train worker, no grace
            # worker-group restarts from a checkpoint (FailureConfig), one per kill
            "restarts": len(set(resumed) - {0}),
            "epoch_ends_at_s": [e["at_s"] for e in epochs],
            "resumed_from_epoch": resumed,
        },
        # every epoch once in the model's history, none lost, none counted twice
        "outputs": {"epochs_in_history": len(result.history)},  # type: ignore[attr-defined]
        "errors": 0, "epochs_lost": 0, "duplicates": 0,
    })


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
    recording(rec / "cam1" / "cam1_20260401T010000Z.mp4", 2.0)
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
    from avrl_batch.data.synth import clip_rows, get_preset, write_clip
    from avrl_batch.schema import CLIPS
    from avrl_batch.train.prepare import prepare

    root = tmp_path_factory.mktemp("small")
    ci = get_preset("ci")
    keep, seen = [], {}
    # only the clips kept are rendered (what synth.generate would write for them)
    for r in clip_rows(ci, seed=0):
        n = seen.get((r["label"], r["split"]), 0)
        if n < (2 if r["split"] == "train" else 1):
            write_clip(root / "synth" / r["uri"], r["label"], r["seed"], ci, r["dark"])
            keep.append(r)
            seen[(r["label"], r["split"])] = n + 1
    manifest = root / "synth" / "small.parquet"
    pq.write_table(pa.Table.from_pylist(keep, schema=CLIPS), manifest)
    prepare(str(manifest), str(root / "prepared"), preset("tiny"), log=lambda _: None)
    return str(root / "prepared")
