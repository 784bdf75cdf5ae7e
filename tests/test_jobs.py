"""Jobs on a real Ray cluster: submitted scans match a local scan, and carry no credentials.

A Ray head is started with ``ray start --head`` on 127.0.0.1 (free ports, token
authentication on, a private --temp-dir); ``jobs/scan.py`` is submitted through the
``ray job submit`` CLI and through ``avrl submit``; both must end SUCCEEDED with the same
windows/events/errors as a local ``avrl scan`` (scan_id aside); the submitted jobs must not
carry the submitter's AWS credentials.

Why the cluster is stopped by process group and not with ``ray stop``: ``ray stop`` kills
every Ray process of this user on the machine: the pytest process's own local Ray
(``ray_local``) and any other test run's. So ``ray start`` runs in a new process
session (``start_new_session=True``); its daemons (GCS, raylet, dashboard, monitor) inherit that
process group and are signalled with ``killpg`` - SIGTERM, then SIGKILL after a grace period.
Job drivers, which Ray starts in sessions of their own, are found by the private temp dir on
their command lines. Every client call runs in a subprocess with this cluster's token in its
environment, so this process's Ray state (its own token, RAY_ADDRESS) never mixes in.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Fake credentials that only the submitting processes see: none may reach the job server.
FAKE_KEY_ID = "AKIAAVRLJOBTEST12345"
FAKE_SECRET = "avrl-job-test-secret-" + secrets.token_hex(8)

_JOB_INFO = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
info = client.get_job_info(sys.argv[2])
print(json.dumps({"info": json.loads(info.json()), "logs": client.get_job_logs(sys.argv[2])}))
"""


@dataclass
class Head:
    address: str  # job server, http://127.0.0.1:PORT
    dashboard_port: int
    gcs_port: int
    env: dict[str, str]  # what a client of this cluster needs (its token, no RAY_ADDRESS)
    temp_dir: str  # BASE/ray: with RAY_TMPDIR=BASE a plain ray.init() finds this cluster


def _cluster_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        # the job runner starts `python`: the venv's, with this package and its dependencies
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def _stop(pgid: int, temp_dir: str) -> None:
    import psutil

    def members() -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if os.getpgid(p.pid) == pgid or temp_dir in " ".join(p.info["cmdline"] or []):
                    found.append(p)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        procs = members()
        if not procs:
            return
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=grace)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    # 4 logical CPUs on 2 cores: two tiny scan jobs run at once (an actor + decode tasks each)
    # a short private path: Ray's unix sockets live under it (108-byte limit)
    base = tempfile.mkdtemp(prefix="avrlray-", dir="/tmp")
    temp_dir = os.path.join(base, "ray")
    gcs, dash, agent, client = (free_port() for _ in range(4))
    env = _cluster_env(secrets.token_hex(16))
    proc = subprocess.Popen(
        [
            str(BIN / "ray"), "start", "--head",
            "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
            f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
            "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"ray start failed:\n{out[-3000:]}"
        yield Head(f"http://127.0.0.1:{dash}", dash, gcs, env, temp_dir)
    finally:
        _stop(proc.pid, base)
        shutil.rmtree(base, ignore_errors=True)


def _job_info(head: Head, job_id: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", _JOB_INFO, head.address, job_id],
        env=head.env, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> dict[str, Path]:
    """Two short recordings under camera folders and an (untrained) tiny model file."""
    import torch

    from avrl_batch.config import preset
    from avrl_batch.media.encode import encode_av
    from avrl_batch.model.fusion import build_model
    from avrl_batch.modelfile import save_model

    root = tmp_path_factory.mktemp("jobs")
    torch.manual_seed(0)
    cfg = preset("tiny")
    save_model(root / "model.pt", build_model(cfg), cfg)
    rng = np.random.default_rng(0)
    for cam, stamp, seconds in [("cam01", "20260301T080000Z", 6), ("cam02", "20260302T120000Z", 4)]:
        fps, sr = 8, 16_000
        frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(seconds * fps)]
        t = np.arange(seconds * sr) / sr
        audio = (0.3 * np.sin(2 * np.pi * (300 + 200 * rng.random()) * t)).astype(np.float32)
        folder = root / "src" / cam
        folder.mkdir(parents=True)
        encode_av(folder / f"{cam}_{stamp}.mp4", frames, fps=fps, audio=audio, sample_rate=sr)
    return {"src": root / "src", "model": root / "model.pt", "root": root}


def _read_outputs(out: Path) -> dict[str, pa.Table]:
    """Every Parquet object under windows/, events/, errors/ by relative path, scan_id
    dropped (it names the run, not the result) and rows in a canonical order."""
    tables = {}
    for path in sorted(out.rglob("*.parquet")):
        rel = str(path.relative_to(out))
        assert rel.split("/")[0] in ("windows", "events", "errors"), rel
        t = pq.read_table(path).drop_columns(["scan_id"])
        order = ("source_uri", "window_index", "start_s", "label")
        keys = [c for c in order if c in t.column_names]
        tables[rel] = t.sort_by([(k, "ascending") for k in keys])
    return tables


def _assert_same_outputs(got: Path, want: Path) -> None:
    a, b = _read_outputs(got), _read_outputs(want)
    assert sorted(a) == sorted(b), "different objects written"
    assert any(k.startswith("windows/") for k in b), "the reference scan wrote no windows"
    for rel in b:
        ta, tb = a[rel], b[rel]
        assert ta.schema == tb.schema, rel
        for name in tb.column_names:
            ca, cb = ta[name].to_pylist(), tb[name].to_pylist()
            if name in ("score", "probs", "peak_score", "mean_score"):
                # same model and inputs; a different batch composition may move the last bits
                np.testing.assert_allclose(
                    np.asarray(ca, dtype=np.float64), np.asarray(cb, dtype=np.float64),
                    atol=1e-5, err_msg=f"{rel}:{name}",
                )
            else:
                assert ca == cb, f"{rel}:{name}"


def _scan_args(footage: dict[str, Path], out: Path) -> list[str]:
    return [str(footage["src"]), "--model", str(footage["model"]), "--out", str(out)]


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_scan_job_via_ray_job_submit_and_avrl_submit_matches_local_scan(
    ray_head: Head, footage: dict[str, Path], ray_local: None
) -> None:
    from avrl_batch.cli import main

    root = footage["root"]
    # 1. the plain Ray CLI, as the README shows it
    cli_id = f"avrl-test-cli-{uuid.uuid4().hex[:8]}"
    excludes = json.dumps({"excludes": [".venv", ".git", "__pycache__", ".pytest_cache"]})
    ray_cli = subprocess.Popen(
        [
            str(BIN / "ray"), "job", "submit", "--address", ray_head.address,
            "--submission-id", cli_id, "--working-dir", ".", "--runtime-env-json", excludes,
            "--", "python", "jobs/scan.py", "--config", "jobs/configs/scan.yaml",
            *_scan_args(footage, root / "out_ray_cli"),
        ],
        cwd=ROOT, env=ray_head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # 2. avrl submit, from a shell that holds AWS credentials: they must stay here
    submit_env = {**ray_head.env, "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
                  "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_SESSION_TOKEN": FAKE_SECRET + "-s"}
    avrl_id = f"avrl-test-submit-{uuid.uuid4().hex[:8]}"
    avrl_submit = subprocess.Popen(
        [
            str(BIN / "avrl"), "submit", "scan", "--address", ray_head.address,
            "--submission-id", avrl_id, "--timeout", "400",
            "--runtime-env", "deploy/runtime_env.yaml",  # the shipped one must be accepted
            "--", *_scan_args(footage, root / "out_avrl_submit"),
        ],
        cwd=ROOT, env=submit_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # the reference, while both jobs run: a local `avrl scan` on this process's local Ray
    main(["scan", *_scan_args(footage, root / "out_local"), "--json"])
    assert list((root / "out_local" / "_scans").glob("*.json"))

    cli_out, cli_err = ray_cli.communicate(timeout=420)
    cli = _job_info(ray_head, cli_id)
    assert cli["info"]["status"] == "SUCCEEDED", (cli_out[-3000:], cli_err[-3000:])
    _assert_same_outputs(root / "out_ray_cli", root / "out_local")

    out, err = avrl_submit.communicate(timeout=420)
    assert avrl_submit.returncode == 0, (out[-3000:], err[-3000:])
    assert out.splitlines()[0] == avrl_id  # the job id comes first on stdout
    assert f"job {avrl_id} SUCCEEDED" in err
    sub = _job_info(ray_head, avrl_id)
    assert sub["info"]["status"] == "SUCCEEDED"
    _assert_same_outputs(root / "out_avrl_submit", root / "out_local")
    # the job's log streamed to the submitter ends with the scan's JSON summary
    assert '"sources_ok"' in out
    for name, job in (("ray job submit", cli), ("avrl submit", sub)):
        info = job["info"]
        print(f"{name}: job ran {(info['end_time'] - info['start_time']) / 1000:.1f} s")

    # no credential in job metadata, runtime env, entrypoint, message or logs
    stored = json.dumps(sub) + json.dumps(cli)
    for secret in (FAKE_KEY_ID, FAKE_SECRET):
        assert secret not in stored
        assert secret not in out + err + cli_out + cli_err
    runtime_env = sub["info"]["runtime_env"]
    assert runtime_env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert {".venv", ".git", "tests/"} <= set(runtime_env["excludes"])
    assert sub["info"]["metadata"]["avrl_command"] == "scan"
    assert sub["info"]["entrypoint"].startswith("python jobs/scan.py --config jobs/configs/scan")


def test_avrl_submit_refuses_credentials_and_unknown_options(ray_head: Head, tmp_path) -> None:
    env = {**ray_head.env, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET}
    res = subprocess.run(
        [str(BIN / "avrl"), "submit", "scan", "--address", ray_head.address, "--no-wait",
         "--", "s3://b/", "--model", "m.pt", "--out", f"s3://{FAKE_SECRET}@b/"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2 and "refusing to submit" in res.stderr, res.stderr
    assert FAKE_SECRET not in res.stderr
    runtime_env = tmp_path / "env.yaml"
    runtime_env.write_text(f"env_vars:\n  AWS_SECRET_ACCESS_KEY: {FAKE_SECRET}\n")
    res = subprocess.run(
        [str(BIN / "avrl"), "submit", "scan", "--address", ray_head.address, "--no-wait",
         "--runtime-env", str(runtime_env), "--", "s3://b/", "--model", "m", "--out", "o"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2 and "refusing to send AWS_SECRET_ACCESS_KEY" in res.stderr
    res = subprocess.run(
        [str(BIN / "avrl"), "submit", "scan", "--address", ray_head.address, "--no-wait",
         "--", "s3://b/", "--model", "m", "--out", "o", "--no-such-option", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert res.returncode != 0 and "no-such-option" in res.stderr
    # a wrong token: one line that says how to give the right one
    res = subprocess.run(
        [str(BIN / "avrl"), "submit", "scan", "--address", ray_head.address, "--no-wait",
         "--", "s3://b/", "--model", "m", "--out", "o"],
        cwd=ROOT, env={**ray_head.env, "RAY_AUTH_TOKEN": "not-the-token"},
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2 and "wants the cluster's token" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: the job server")


def test_head_binds_dashboard_to_loopback_and_requires_the_token(ray_head: Head) -> None:
    import urllib.error
    import urllib.request

    import psutil

    listen = {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == ray_head.dashboard_port
    }
    assert listen == {"127.0.0.1"}
    # token auth is on: the job API refuses a request without the token
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{ray_head.address}/api/jobs/", timeout=10)
    assert err.value.code == 401


def test_connect_starts_a_private_local_ray_with_the_dashboard_on_loopback(
    ray_head: Head,
) -> None:
    """connect(None) must not join a cluster someone else started on this machine (a plain
    ray.init() does: it reads $RAY_TMPDIR/ray/ray_current_cluster, written by `ray start`),
    and the dashboard it starts listens on 127.0.0.1 only."""
    code = """
import json, time
import psutil, ray
ray.init(configure_logging=False)
joined = ray.get_runtime_context().gcs_address
ray.shutdown()
from avrl_batch.cluster import connect
connect(None, num_cpus=1, dashboard=True)
own = ray.get_runtime_context().gcs_address
port = int(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
deadline, addrs = time.time() + 30, set()
while not addrs and time.time() < deadline:
    addrs = {c.laddr.ip for c in psutil.net_connections("inet")
             if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    time.sleep(0.5)
print(json.dumps({"joined": joined, "own": own, "dashboard": sorted(addrs)}))
ray.shutdown()
"""
    env = {**ray_head.env, "RAY_TMPDIR": str(Path(ray_head.temp_dir).parent)}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stderr[-3000:]
    # token auth is on for the private Ray, and its opt-out banner is not shown
    assert "Token authentication" not in res.stderr, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["joined"].endswith(f":{ray_head.gcs_port}")  # the hazard is real here
    assert not got["own"].endswith(f":{ray_head.gcs_port}")
    assert got["dashboard"] == ["127.0.0.1"]
