"""``avrl submit train|scan``: run a job on a Ray cluster through its job server.

The job is ``python jobs/<kind>.py --config <yaml> ARGS...`` with the working directory
uploaded by Ray. Credentials never travel with a job: the cluster reads S3 through its own
AWS chain (IAM instance profile, IRSA), so a runtime env or argument carrying the caller's
AWS keys is refused.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import typer

from avrl_batch.cli import app
from avrl_batch.errors import ConfigError
from avrl_batch.redaction import CREDENTIAL_ENV, findings, secret_fields

submit_app = typer.Typer(
    help=(
        "Submit a training or scan job to a Ray cluster's job server.\n\n"
        "Example: avrl submit scan --address http://127.0.0.1:8265 -- "
        "--out s3://bucket/events   (after `ray dashboard ray_cluster.yaml`)"
    ),
    no_args_is_help=True,
)
app.add_typer(submit_app, name="submit")

# Not uploaded with the working directory: environments, caches, VCS data (Ray also skips
# what .gitignore lists).
DEFAULT_EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
]

_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _runtime_env(working_dir: Path, runtime_env_file: Path | None, excludes: list[str]) -> dict:
    runtime_env: dict[str, Any] = {}
    if runtime_env_file is not None:
        import yaml

        try:
            loaded = yaml.safe_load(runtime_env_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read runtime env {runtime_env_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"runtime env {runtime_env_file} must be a YAML mapping")
        runtime_env.update(loaded)
    runtime_env["working_dir"] = str(working_dir)
    runtime_env["excludes"] = list(runtime_env.get("excludes", [])) + DEFAULT_EXCLUDES + excludes
    return runtime_env


def check_no_credentials(
    entrypoint: str,
    runtime_env: dict,
    metadata: dict[str, str],
    job_config: tuple[str, str] | None = None,
) -> None:
    """Refuse a job that would carry credentials, in one line naming where (never the value):
    an env var of the runtime env whose name says secret (``*SECRET*``, ``*PASSWORD*``,
    ``*TOKEN*``, ``AWS_ACCESS_KEY_ID``…) or whose value looks like one; the value of one of
    this process's credential variables anywhere in the job; and any credential-looking value
    (``redaction.findings``: ``user:pass@`` URLs, ``AKIA``/``ASIA`` key ids, presigned
    signatures, tokens in pip URLs, secret NAME=value) in an argument, the runtime env, the
    metadata, or ``job_config`` = (its path, its text): the YAML uploaded with the job."""
    env_vars = runtime_env.get("env_vars") or {}
    named = sorted(secret_fields((str(k), str(v)) for k, v in env_vars.items()))
    if named:
        raise ConfigError(
            f"refusing to send {', '.join(named)} with the job; the cluster reads S3 through "
            "its own AWS chain (IAM instance profile or IRSA), remove them from the runtime env"
        )
    text = repr((entrypoint, runtime_env, metadata, job_config))
    for name in CREDENTIAL_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 8 and value in text:
            raise ConfigError(
                f"refusing to submit: the value of ${name} appears in the job's arguments or "
                "runtime env; the cluster must use its own credentials (IAM role, IRSA)"
            )
    for where, value in _job_fields(entrypoint, runtime_env, metadata, job_config):
        found = findings(value)
        if found:
            raise ConfigError(
                f"refusing to submit: {where} holds {found[0]}; the cluster must use its own "
                "credentials (IAM role, IRSA, a Kubernetes Secret): remove it from the job"
            )


def _job_fields(
    entrypoint: str, runtime_env: dict, metadata: dict[str, str],
    job_config: tuple[str, str] | None,
) -> list[tuple[str, str]]:
    """(where, text) of every value a job carries, named for a one-line refusal. A value is
    given as ``NAME=value`` where it has a name, so a secret-looking name counts too."""
    import yaml

    words = shlex.split(entrypoint)
    fields = []
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        option = before if before.startswith("--") and "=" not in before else ""
        named = f"{option.lstrip('-')}={word}" if option else word
        fields.append((f"argument {i}" + (f" (the value of {option})" if option else ""), named))
    fields += [(f"the runtime env's {k}", f"{k}={v}") for k, v in _flatten(runtime_env)]
    fields += [(f"the job metadata's {k}", f"{k}={v}") for k, v in _flatten(metadata)]
    if job_config is not None:
        path, body = job_config
        try:
            loaded = yaml.safe_load(body)
        except yaml.YAMLError:
            loaded = None  # job_argv has refused it already; the raw text is still checked
        fields += [(f"{path}: {k}", f"{k}={v}") for k, v in _flatten(loaded)]
        fields.append((path, body))  # comments included: the file itself is uploaded
    return fields


def _flatten(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, text) of every scalar in a YAML/JSON-like value: ``env_vars.X``, ``pip[0]``."""
    if isinstance(value, dict):
        return [
            item for k, v in value.items()
            for item in _flatten(v, f"{path}.{k}" if path else str(k))
        ]
    if isinstance(value, list | tuple):
        return [item for i, v in enumerate(value) for item in _flatten(v, f"{path}[{i}]")]
    return [] if value is None or not path else [(path, str(value))]


def _client(address: str) -> Any:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)  # checks the connection and the token
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot reach the Ray job server at {address} ({str(exc).splitlines()[0]}); "
            "forward it first with `ray dashboard ray_cluster.yaml` or check --address"
        ) from None
    except AuthenticationError:
        raise ConfigError(
            f"the job server at {address} wants the cluster's token; export RAY_AUTH_MODE=token "
            "and put the token in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH)"
        ) from None


def _wait(client: Any, job_id: str, timeout_s: float) -> str:
    """Stream the job's log to stdout until it ends (Ray's websocket tail, as `ray job submit`
    does); returns its final status name."""
    import asyncio

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(follow(), timeout_s if timeout_s > 0 else None))
    except RuntimeError as exc:  # the stream broke off (network); the job itself goes on
        typer.echo(f"log stream of {job_id} ended early ({exc}); waiting for its status", err=True)
    except asyncio.TimeoutError:
        raise ConfigError(
            f"job {job_id} still running after {timeout_s:g} s; it keeps running: follow it "
            f"with `ray job logs -f {job_id}` or stop it with `ray job stop {job_id}`"
        ) from None
    # the log stream closes as the driver exits; the status turns terminal just after
    while (status := str(client.get_job_status(job_id).value)) not in _TERMINAL:
        time.sleep(0.5)
    return status


def submit_job(
    kind: str,
    args: list[str],
    *,
    address: str,
    config: str | None = None,
    working_dir: Path = Path("."),
    runtime_env_file: Path | None = None,
    excludes: list[str] | None = None,
    submission_id: str | None = None,
    wait: bool = True,
    timeout_s: float = 0.0,
) -> tuple[str, str | None]:
    """Submit ``jobs/<kind>.py`` and optionally wait; returns (job id, final status or None)."""
    from avrl_batch.commands.jobconfig import job_argv, load_job_config

    working_dir = working_dir.resolve()
    script = f"jobs/{kind}.py"
    config = config or f"jobs/configs/{kind}.yaml"
    for rel in (script, config):
        if not (working_dir / rel).is_file():
            raise ConfigError(
                f"{rel} not found under the working directory {working_dir}; run from the "
                "avrl-batch repository root or pass --working-dir"
            )
    # Fail here, not minutes later on the cluster, on an unknown key or bad override.
    job_argv(kind, load_job_config(working_dir / config), args)

    entrypoint = shlex.join(["python", script, "--config", config, *args])
    runtime_env = _runtime_env(working_dir, runtime_env_file, excludes or [])
    metadata = {"avrl_command": kind, "avrl_config": config, "submitted_by": "avrl submit"}
    job_config = (config, (working_dir / config).read_text(errors="replace"))
    check_no_credentials(entrypoint, runtime_env, metadata, job_config)

    client = _client(address)
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env=runtime_env,
        metadata=metadata,
        submission_id=submission_id,
    )
    typer.echo(job_id)
    typer.echo(f"submitted {kind} job {job_id} to {address}", err=True)
    if not wait:
        return job_id, None
    return job_id, _wait(client, job_id, timeout_s)


def _command(kind: str):
    def command(
        args: list[str] | None = typer.Argument(
            None, help=f"options for `avrl {kind}` after --; they override the config"
        ),
        address: str = typer.Option(
            "http://127.0.0.1:8265",
            "--address",
            envvar="RAY_API_SERVER_ADDRESS",
            help="Ray job server (dashboard) URL; reach a remote one via `ray dashboard`",
        ),
        config: str | None = typer.Option(
            None, "--config", help=f"YAML under the working dir [default: jobs/configs/{kind}.yaml]"
        ),
        working_dir: Path = typer.Option(
            Path("."), "--working-dir", help="directory uploaded to the cluster (repo root)"
        ),
        runtime_env: Path | None = typer.Option(
            None, "--runtime-env", help="YAML runtime env merged in (e.g. deploy/runtime_env.yaml)"
        ),
        exclude: list[str] = typer.Option([], "--exclude", help="more paths not to upload"),
        submission_id: str | None = typer.Option(None, "--submission-id", help="job id to use"),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="follow logs until it ends"),
        timeout: float = typer.Option(0.0, "--timeout", help="stop waiting after S s (0: never)"),
    ) -> None:
        job_id, status = submit_job(
            kind,
            list(args or []),
            address=address,
            config=config,
            working_dir=working_dir,
            runtime_env_file=runtime_env,
            excludes=exclude,
            submission_id=submission_id,
            wait=wait,
            timeout_s=timeout,
        )
        if status is None:
            return
        if status != "SUCCEEDED":
            info = _client(address).get_job_info(job_id)
            reason = (info.message or "").strip().splitlines()
            typer.echo(
                f"error: job {job_id} {status}" + (f": {reason[-1]}" if reason else ""), err=True
            )
            raise typer.Exit(1)
        typer.echo(f"job {job_id} SUCCEEDED", err=True)

    command.__doc__ = (
        f"Submit `avrl {kind}` as a Ray job: python jobs/{kind}.py --config YAML ARGS.\n\n"
        f"Example: avrl submit {kind} --address http://127.0.0.1:8265 "
        f"--config jobs/configs/{kind}.yaml -- --out s3://bucket/run1"
    )
    return command


submit_app.command("train")(_command("train"))
submit_app.command("scan")(_command("scan"))
