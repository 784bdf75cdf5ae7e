"""Job configs: a YAML mapping of ``avrl`` command options becomes the command's argv.

The job entrypoints (``jobs/*.py``) and ``avrl submit`` share this. A job config's keys are
the options of an ``avrl`` command; ``job_argv`` turns them into the argv that
``avrl_batch.cli.main`` parses, so a job runs the very code path that the CLI runs (one
implementation, one set of defaults and checks). It sits with the commands because it reads
the Typer app's parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from avrl_batch.cluster import connect
from avrl_batch.errors import ConfigError
from avrl_batch.redaction import redact, redact_argv


def load_job_config(path: str | Path) -> dict[str, Any]:
    """Read a job config: a YAML mapping of ``avrl`` command options (see jobs/configs/)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read job config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"job config {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"job config {path} must be a mapping of option: value, not {type(data).__name__}"
        )
    return data


def job_argv(
    command: str,
    config: Mapping[str, Any],
    overrides: Sequence[str] = (),
) -> list[str]:
    """The ``avrl`` argv for ``command`` from a config mapping plus command-line overrides.

    Keys are the command's parameter names (``min_score`` or ``min-score``); positional
    arguments are keys too (``source`` for scan). Flags take true/false, repeatable options
    take lists. An option given in ``overrides`` replaces the config's value entirely (for a
    repeatable option, all of its config values), so ``--model other.pt`` on the command line
    wins over ``model:`` in the YAML. Unknown keys are refused with the list of valid ones.
    """
    import typer

    from avrl_batch.cli import _register_commands, app

    # Typer may use its own vendored copy of click, so parameters are told apart by their
    # click attributes (param_type_name, is_flag, ...) rather than by isinstance checks.
    _register_commands()
    group = typer.main.get_command(app)
    cmd = getattr(group, "commands", {}).get(command)
    if cmd is None:
        raise ConfigError(
            f"unknown avrl command {command!r}; choose one of {', '.join(sorted(group.commands))}"
        )
    params = {p.name: p for p in cmd.params if p.name and p.name != "help"}
    # a key may be the parameter's name (as_json) or its option's name (json, min-score)
    by_key = dict(params)
    for p in params.values():
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                by_key.setdefault(opt[2:].replace("-", "_"), p)

    # Which parameters the overrides set: parse them the way the command will (resilient, so
    # a missing required argument is not an error yet: the config may supply it).
    overridden: set[str] = set()
    if overrides:
        ctx = cmd.make_context(command, list(overrides), resilient_parsing=True)
        overridden = {
            name
            for name in params
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
        }

    positional: list[str] = []
    options: list[str] = []
    for raw_key, value in config.items():
        param = by_key.get(str(raw_key).replace("-", "_"))
        if param is None:
            valid = ", ".join(sorted(by_key))
            raise ConfigError(
                f"unknown key {raw_key!r} in the {command} job config; valid: {valid}"
            )
        if param.name in overridden or value is None:
            continue
        if param.param_type_name == "argument":
            values = value if isinstance(value, list) else [value]
            positional.extend(_scalar(v, raw_key) for v in values)
            continue
        opt = max(param.opts, key=len)  # the long form, e.g. --min-score
        if param.is_flag and param.secondary_opts:
            if not isinstance(value, bool):
                raise ConfigError(f"{raw_key} in the {command} job config must be true or false")
            options.append(opt if value else max(param.secondary_opts, key=len))
        elif param.is_flag:
            if not isinstance(value, bool):
                raise ConfigError(f"{raw_key} in the {command} job config must be true or false")
            if value:
                options.append(opt)
        elif param.multiple:
            for v in value if isinstance(value, list) else [value]:
                options.extend([opt, _scalar(v, raw_key)])
        else:
            options.extend([opt, _scalar(value, raw_key)])
    # "--" keeps a positional value that starts with "-" from being read as an option; it can
    # only go last, so the overrides' own positionals (if any) come before it.
    tail = ["--", *positional] if positional else []
    full = [command, *options, *overrides, *tail]
    # Parse the result the way the CLI will, so an unknown option, a bad value or a missing
    # argument fails here (at submit time) rather than minutes later on the cluster.
    try:
        cmd.make_context(command, full[1:])
    except Exception as exc:
        if not hasattr(exc, "format_message"):  # a click usage error (Typer vendors click)
            raise
        raise ConfigError(f"avrl {command} job: {exc.format_message()}") from None
    return full


def _scalar(value: Any, key: object) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{key} in the job config must be a single value, not {value!r}")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_job(command: str, argv: Sequence[str]) -> int:
    """Entry point of ``jobs/<command>.py``: ``--config FILE`` then overrides for ``avrl
    <command>``. Joins the cluster the job runs on (``RAY_ADDRESS``, set by the job runner)
    and runs the CLI in-process; returns the exit status."""
    import argparse
    import sys

    from avrl_batch.cli import main

    parser = argparse.ArgumentParser(
        prog=f"jobs/{command}.py",
        description=f"Run `avrl {command}` as a Ray job with options from a YAML config; "
        f"options after the config override it (e.g. --out s3://bucket/run2).",
    )
    parser.add_argument("--config", required=True, help=f"YAML, e.g. jobs/configs/{command}.yaml")
    known, overrides = parser.parse_known_args(list(argv))
    if overrides[:1] == ["--"]:
        overrides = overrides[1:]
    try:
        full = job_argv(command, load_job_config(known.config), overrides)
        # Inside a job RAY_ADDRESS names the cluster; outside one this starts a local Ray.
        connect(os.environ.get("RAY_ADDRESS") or None)
    except ConfigError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        return 2
    # the job log is kept by the job server and shown on the dashboard: no secret in it
    print("avrl " + " ".join(redact_argv(full)), flush=True)
    try:
        main(full)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
