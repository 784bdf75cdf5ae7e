"""Shared fixtures: a real moto S3 server on loopback, a real local Ray, small media files."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Fake credentials for the moto server, set before anything (Ray workers included) starts, so
# no test can ever reach a real account.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
# Ray: no usage-stats prompt, no dashboard unless a test asks for it
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, shared by the tests that need one (a test that needs a
    different cluster shuts it down; the next user starts it again)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            # a private Ray: without an address, ray.init() joins the cluster the last
            # `ray start` on this machine recorded in /tmp/ray (and then refuses num_cpus)
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield
    # left running for later tests; pytest's exit shuts it down


@pytest.fixture
def tmp_out(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


FIGURES_ENV = "AVRL_FIGURES_DIR"


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[dict], None]:
    """Records a test's figures for the README: always printed (seen with -s), and
    written as JSON to $AVRL_FIGURES_DIR/<test name>.json when that is set."""

    def record(data: dict) -> None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        text = json.dumps(data, indent=1, sort_keys=True, default=str)
        print(f"figures {name}: {text}")
        folder = os.environ.get(FIGURES_ENV)
        if folder:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, name + ".json"), "w") as f:
                f.write(text + "\n")

    return record
