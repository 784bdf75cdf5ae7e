"""The scan on a three-node Ray cluster (ray.cluster_utils.Cluster): inference actors on the
node that declares a GPU, decoding on the others, and a decode node removed mid-scan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scanhelp import check_outputs, recording, tiny_model

from avrl_batch.scan import ScanConfig, run_scan


@pytest.fixture
def cluster() -> Iterator[tuple]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the tests' local Ray; the next test that needs one starts it again
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    # the "GPU" is a declared resource: the actor must be placed there; torch sees no CUDA
    # and runs on the CPU, which is all this test needs
    gpu = c.add_node(num_cpus=1, num_gpus=1)
    worker = c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    try:
        yield c, c.head_node, gpu, worker
    finally:
        ray.shutdown()
        c.shutdown()


def test_scan_on_three_nodes_survives_losing_a_decode_node(
    cluster: tuple, tmp_path: Path
) -> None:
    c, head, gpu, worker = cluster
    rec = tmp_path / "rec"
    paths = [
        str(recording(rec / f"cam{i}" / f"cam{i}_20260301T0{i}0000Z.mp4", 18, seed=i))
        for i in range(5)
    ]
    bad = rec / "cam9" / "cam9_20260301T090000Z.mp4"
    bad.parent.mkdir()
    bad.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 300)  # a Matroska magic and nothing else
    paths.append(str(bad))
    model = tmp_path / "tiny.avrl"
    tiny_model(model)

    removed: list[int] = []

    def on_progress(p: dict) -> None:
        # once a source is written, take the CPU decode node away in the middle of the scan
        if not removed and p["sources_done"] >= 1:
            removed.append(p["sources_done"])
            c.remove_node(worker, allow_graceful=False)

    s = run_scan(
        ScanConfig(source=str(rec), model=str(model), out=str(tmp_path / "out"),
                   segment_s=6.0, batch_size=4),
        progress=on_progress,
    )
    assert removed and removed[0] < len(paths), "the node was not removed mid-scan"
    # inputs = outputs ∪ errors, zero duplicates, nothing lost
    got = check_outputs(str(tmp_path / "out"), paths)
    assert (s.sources_ok, s.sources_failed) == (5, 1)
    assert got[str(bad)]["error"]["stage"][0].as_py() == "probe"
    for p in paths[:-1]:
        assert got[p]["windows"]["window_index"].to_pylist() == list(range(9))
    # placement: every window inferred on the GPU node; no decoding there
    assert set(s.infer_nodes) == {gpu.node_id} and sum(s.infer_nodes.values()) == 5 * 9
    assert gpu.node_id not in s.decode_nodes
    assert set(s.decode_nodes) <= {head.node_id, worker.node_id}
    assert sum(s.decode_nodes.values()) == 5 * 3  # 18 s at 6 s segments
    assert s.decode_nodes.get(head.node_id, 0) > 0
