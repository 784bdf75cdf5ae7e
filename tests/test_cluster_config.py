"""Cluster deployment files: ray_cluster.yaml against the installed Ray's schema, the KubeRay
manifests against the repository (entrypoints, configs, image), job configs against the CLI,
and the no-credentials / loopback-only rules."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from avrl_batch.commands.jobconfig import job_argv, load_job_config
from avrl_batch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"


def _ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def _cluster_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def _dockerfile_image() -> str:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    m = re.search(r'io\.avrl-batch\.image="([^"]+)"', text)
    assert m, "deploy/Dockerfile must declare its image name in LABEL io.avrl-batch.image"
    return m.group(1)


def _manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs.extend((path, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _containers(obj: object):
    """Every container spec anywhere inside a manifest."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield from obj["containers"]
        for v in obj.values():
            yield from _containers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _containers(v)


# ---------------------------------------------------------------- ray_cluster.yaml


def test_ray_cluster_yaml_validates_against_installed_schema() -> None:
    import jsonschema

    cfg = _cluster_config()
    jsonschema.validate(cfg, _ray_schema())
    # the schema is strict (additionalProperties: false): a misspelt key is caught, so the
    # pass above means something
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())


def test_ray_cluster_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _cluster_config()
    validate_config(cfg)
    # what `ray up` does: merge the AWS defaults, then validate the merged config
    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_ray_cluster_yaml_shape() -> None:
    cfg = _cluster_config()
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert head["resources"] == {"CPU": 0}  # no decode/inference work on the head
    gpu = [k for k, v in workers.items() if v["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [k for k in workers if k not in gpu]
    assert gpu and cpu, "needs CPU decode workers and GPU inference/training workers"
    for name, node in workers.items():
        assert 0 <= node["min_workers"] <= node["max_workers"], name
    assert sum(n["max_workers"] for n in workers.values()) <= cfg["max_workers"]
    # S3 through instance profiles on every node, never keys
    for name, node in types.items():
        assert "IamInstanceProfile" in node["node_config"], name
    setup = " && ".join(cfg["setup_commands"])
    assert "torch" in setup and "pip install -e ." in setup
    assert cfg["file_mounts"]["~/avrl-batch"] == "."
    # the dashboard / job server listens on loopback only, reached through `ray dashboard`
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    # token authentication on every node, with the token file copied to every node
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "export RAY_AUTH_MODE=token;" in cfg[key][-1], key
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    commands = json.dumps({k: v for k, v in cfg.items() if k.endswith("_commands")})
    assert "0.0.0.0" not in commands
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert not re.search(r"aws_(secret_)?access_key|AKIA[0-9A-Z]{12}", text, re.IGNORECASE)


# ---------------------------------------------------------------- deploy/


def test_dockerfile_has_cuda_base_and_installs_package() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms and re.match(r"(nvidia/cuda|pytorch/pytorch):\S*cud", froms[-1]), froms
    assert re.search(r"^COPY jobs ", text, re.MULTILINE)
    assert re.search(r"pip install \.", text)
    assert _dockerfile_image() == "avrl-batch:latest"


@pytest.mark.parametrize("kind", ["scan", "train"])
def test_rayjob_manifest_matches_repo(kind: str) -> None:
    path = KUBERAY / f"rayjob-{kind}.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{kind}.py"]
    assert (ROOT / argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    assert (ROOT / config).is_file()
    # the config the job will run is valid for the real command's options
    assert job_argv(kind, load_job_config(ROOT / config), argv[argv.index("--config") + 2 :])

    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_limits = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for g in groups.values()
        for c in _containers(g)
    ]
    assert any(gpu_limits) and not all(gpu_limits), "needs a GPU group and a CPU group"
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    image = _dockerfile_image()
    containers = list(_containers(job))
    assert len(containers) == 1 + len(groups)
    for c in containers:
        assert c["image"] == image
        for env in c.get("env", []):
            if env["name"].startswith("AWS_"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"], env
    for pod in [spec["headGroupSpec"]["template"]] + [g["template"] for g in groups.values()]:
        assert pod["spec"]["serviceAccountName"] == "avrl-batch"


def test_nothing_in_deploy_is_exposed_publicly() -> None:
    kinds = {(d["kind"], d.get("spec", {}).get("type")) for _, d in _manifests()}
    assert ("ServiceAccount", None) in kinds
    for _, d in _manifests():
        assert d["kind"] != "Ingress"
        assert d.get("spec", {}).get("type") not in ("LoadBalancer", "NodePort")
        head = d.get("spec", {}).get("rayClusterSpec", {}).get("headGroupSpec", {})
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"


# ---------------------------------------------------------------- job configs


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")), ids=str)
def test_job_configs_are_valid_for_their_command(path: Path) -> None:
    kind = path.stem
    argv = job_argv(kind, load_job_config(path))
    assert argv[0] == kind and len(argv) > 1
    text = path.read_text()
    assert not re.search(r"aws_(secret_)?access_key|AKIA[0-9A-Z]{12}", text, re.IGNORECASE)


def test_job_argv_merges_overrides_and_refuses_unknown_keys(tmp_path: Path) -> None:
    cfg = {"source": "s3://a/", "model": "m.pt", "out": "o/", "include": ["*.mp4", "*.mkv"],
           "dry-run": True, "batch_size": 8}
    argv = job_argv("scan", cfg, ["--include", "*.avi", "--out", "o2/"])
    # the override replaces every config value of a repeatable option, and a scalar one
    assert argv.count("--include") == 1 and "*.mp4" not in argv
    assert "o/" not in argv and argv[argv.index("--out") + 1] == "o2/"
    assert argv[argv.index("--batch-size") + 1] == "8" and "--dry-run" in argv
    assert argv[-2:] == ["--", "s3://a/"]
    # a positional given on the command line replaces the config's
    assert "s3://a/" not in job_argv("scan", cfg, ["s3://b/"])
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        job_argv("scan", {**cfg, "bogus": 1})
    with pytest.raises(ConfigError, match="true or false"):
        job_argv("scan", {**cfg, "dry_run": "yes"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_job_config(bad)


# ---------------------------------------------------------------- credentials


def test_runtime_env_and_submit_guard_carry_no_credentials(monkeypatch) -> None:
    from avrl_batch.commands.submit import check_no_credentials

    runtime_env = yaml.safe_load((ROOT / "deploy" / "runtime_env.yaml").read_text())
    check_no_credentials("python jobs/scan.py --config jobs/configs/scan.yaml", runtime_env, {})
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        check_no_credentials("python x", {"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}}, {})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-not-a-real-secret")
    with pytest.raises(ConfigError, match=r"\$AWS_SECRET_ACCESS_KEY"):
        check_no_credentials("python x --key wJalrXUtnFEMI-not-a-real-secret", {}, {})


def test_connect_refuses_a_job_server_address() -> None:
    from avrl_batch.cluster import connect

    with pytest.raises(ConfigError, match="avrl submit"):
        connect("http://127.0.0.1:8265")
