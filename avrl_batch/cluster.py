"""Connecting to Ray: the one module outside train/ and scan/ that starts or joins Ray.

* ``connect``: how to reach Ray. With no address and no cluster in the environment it starts
  a private local Ray that listens on loopback only (GCS, raylet, object manager, workers,
  dashboard agent and its HTTP server, runtime-env agent; the dashboard off or on 127.0.0.1),
  so nothing we start is reachable from the network.
* ``quiet_ray_data``: Ray Data's own progress bars and per-execution log lines are turned
  off; the CLI prints its own progress.

Ray is imported inside the functions: ``avrl --help`` must not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from avrl_batch.errors import ConfigError

# The address of a Ray job server (dashboard) looks like http://HEAD:8265; ray.init cannot
# connect to it, so it is refused with a hint instead of failing deep inside Ray.
_JOB_SERVER_SCHEMES = ("http://", "https://")

# What we bind to when we start Ray ourselves: loopback only (docs/design.md, security).
LOCAL_HOST = "127.0.0.1"

# Ray's switch for "this node may be part of a multi-node cluster". While it is on, Ray turns
# a loopback node address into the machine's routable one (services.resolve_ip_for_localhost)
# and its gRPC servers bind every interface; off, every process of the node binds the node
# address. Ray reads it as an environment variable in each process it starts (GCS, raylet,
# agents, workers inherit the environment at spawn) and as a constant in the driver.
_CLUSTER_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _single_node_mode() -> Iterator[None]:
    """Ray's single-node mode for the duration of a ``ray.init`` that starts a node: the
    processes started meanwhile keep it for their lifetime; this process gets its own
    environment and Ray's constant back afterwards (a later join of a real cluster must not
    inherit it)."""
    from ray._private import ray_constants

    saved_env = os.environ.get(_CLUSTER_MODE_ENV)
    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_MODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(_CLUSTER_MODE_ENV, None)
        else:
            os.environ[_CLUSTER_MODE_ENV] = saved_env


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    dashboard: bool = False,
    log_to_driver: bool = False,
) -> None:
    """Connect this process to Ray, or start a private local Ray. Idempotent.

    - ``address=None`` and ``RAY_ADDRESS`` unset: start a private local Ray (``num_cpus``
      CPUs, or all), never joining another cluster on this machine, every process of it
      listening on 127.0.0.1 only; the dashboard is off unless ``dashboard=True``, and then
      bound to 127.0.0.1.
    - ``address=None`` and ``RAY_ADDRESS`` set (inside ``ray job submit``): join that cluster.
    - ``"auto"``: join the cluster started on this machine by ``ray start``.
    - ``"HOST:PORT"`` (GCS) or ``"ray://HOST:10001"`` (Ray Client): join that cluster.
    - ``"http://HEAD:8265"`` is a job-server address: use ``avrl submit`` for it.

    Worker output stays in Ray's logs unless ``log_to_driver``: the CLI prints its own
    progress, and a worker's exception reaches the driver anyway.
    """
    if address and address.startswith(_JOB_SERVER_SCHEMES):
        raise ConfigError(
            f"{address} is a Ray job-server (dashboard) address; submit with "
            f"`avrl submit scan --address {address} -- ...`, or connect to the cluster with "
            "ray://HEAD:10001 or HEAD:6379"
        )
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common: dict[str, Any] = {"log_to_driver": log_to_driver, "configure_logging": False}
    if address is None:
        # "local", not None: ray.init() without an address joins whatever cluster the last
        # `ray start` on this machine announced in /tmp/ray (someone else's, in a shared CI
        # box); a local run must get a private Ray of its own.
        # Ray turns token authentication on for a cluster it starts and logs a banner on how
        # to opt out; for this private Ray token auth is what we want, so the banner says
        # nothing a user should act on. RAY_AUTH_MODE (set explicitly, no banner) cannot be
        # used: Ray reads it once, when it is imported.
        auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth_log.level
        auth_log.setLevel(logging.ERROR)
        try:
            with _single_node_mode():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    include_dashboard=dashboard,
                    dashboard_host=LOCAL_HOST,
                    _node_ip_address=LOCAL_HOST,
                    **common,
                )
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception on a start timeout
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"could not start a local Ray ({first}); the machine may be overloaded or out "
                "of memory: retry, or join a running cluster with --address"
            ) from None
        finally:
            auth_log.setLevel(level)
        return
    try:
        ray.init(address=address, **common)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one "
            "with `ray start --head --dashboard-host=127.0.0.1` or leave the address out"
        ) from None


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-execution start/end lines drown the CLI's own
    progress and summary; real warnings stay."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray.data", "ray.train", "ray.util"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its only warning is that the bars are off, which is the point
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
