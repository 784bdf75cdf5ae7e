"""Security checks that need no Ray: where our code starts Ray and with what
binding, and output names built from hostile camera ids. The scan-level checks (hostile S3
keys, credentials in outputs and logs) are in tests/test_reliability_scan.py, pickle
payloads through `avrl evaluate` / `avrl scan --model` in tests/test_reliability_cluster.py,
the listening sockets of a started Ray in tests/test_jobs.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from avrl_batch import storage
from avrl_batch.scan import sink
from avrl_batch.scan.plan import SourceTask

ROOT = Path(__file__).resolve().parents[1]


def _ray_init_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in [*(ROOT / "avrl_batch").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "init"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "ray"
            ):
                calls.append((str(path.relative_to(ROOT)), node))
    return calls


def test_ray_is_started_in_one_place_with_the_dashboard_on_loopback() -> None:
    """Every command (scan, prepare, train, jobs) reaches Ray through cluster.connect; the
    only ray.init that *starts* a Ray (address="local") turns the dashboard off by default
    and binds it to 127.0.0.1 when asked for; the others join an existing cluster."""
    from avrl_batch import cluster

    calls = _ray_init_calls()
    assert calls and {f for f, _ in calls} == {"avrl_batch/cluster.py"}, calls
    starting = []
    for _, call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        address = kw.get("address")
        if isinstance(address, ast.Constant) and address.value == "local":
            starting.append(kw)
        else:  # joins the cluster named by the user / RAY_ADDRESS: binds nothing itself
            assert "include_dashboard" not in kw and "dashboard_host" not in kw
    assert len(starting) == 1
    kw = starting[0]
    assert isinstance(kw["dashboard_host"], ast.Name) and kw["dashboard_host"].id == "LOCAL_HOST"
    assert cluster.LOCAL_HOST == "127.0.0.1"
    assert isinstance(kw["include_dashboard"], ast.Name)
    import inspect

    assert inspect.signature(cluster.connect).parameters["dashboard"].default is False
    # no code path names an all-interfaces address
    for path in [*(ROOT / "avrl_batch").rglob("*.py"), *(ROOT / "jobs").rglob("*")]:
        if path.is_file():
            assert "0.0.0.0" not in path.read_text(errors="replace"), path


HOSTILE_CAMERAS = ["../../../../etc", "..", "/abs/path", "..\\..\\win", "%2e%2e/%2e%2e",
                   "a/../../b", "\x00nul", "cam/../../..", "." * 300]


@pytest.mark.parametrize("out", ["/data/out", "s3://bucket/scans/out"])
def test_output_names_from_hostile_cameras_stay_under_out(out: str) -> None:
    for cam in HOSTILE_CAMERAS:
        task = SourceTask(uri=f"s3://b/{cam}/x.mp4", version="v", size=1, key="k" * 16,
                          camera=cam, start_time=None, duration_s=1.0, has_audio=False,
                          segments=())
        for uri in (sink.windows_uri(out, task), sink.events_uri(out, task),
                    sink.error_uri(out, task.key)):
            rel = uri[len(out):]
            assert uri.startswith(out + "/"), uri
            parts = rel.strip("/").split("/")
            assert ".." not in parts and "." not in parts and "" not in parts, uri
            assert "\\" not in rel and "\x00" not in rel, uri
    # and storage.join refuses to climb out of a root when asked directly
    for bad in ("..", "../x", "/etc/passwd", "a\\..\\..\\b", "%2e%2e"):
        try:
            joined = storage.join(out, bad)
        except Exception as exc:  # noqa: BLE001 - refusing is the other correct outcome
            assert "AvrlError" in {c.__name__ for c in type(exc).__mro__}, exc
        else:
            assert joined.startswith(out + "/") and "/../" not in joined + "/", joined
