"""Ray job entrypoint for `avrl bench`: run a benchmark on one node of a cluster.

    ray job submit --working-dir . -- \
        python jobs/bench.py --num-gpus 1 model --device cuda --presets small,paper
    ray job submit --working-dir . -- \
        python jobs/bench.py --num-cpus 16 scan --workers 1,2,4,8,16 --runs 3

The job's driver places one Ray task with the requested resources (so a GPU benchmark lands
on a GPU node, a decode benchmark on a CPU node), and that task runs `avrl bench ... --json`
in a child process that starts its own private Ray on that node: the figures are per node
("hours of footage per hour per node"), which is what a cluster is sized by, and the child
never shuts down or reconfigures the cluster the job runs on. The JSON document goes to the
job's stdout (`ray job logs`), last line, with the node it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # importable without installing the package (plain Ray image)

BENCHES = ("decode", "model", "scan", "baseline")


def _run_on_node(argv: list[str]) -> dict:
    """Inside the Ray task: `python -m avrl_batch bench ARGV --json` on this node."""
    import ray

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a private Ray, not ours
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    res = subprocess.run(
        [sys.executable, "-m", "avrl_batch", "bench", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": f"avrl bench exited {res.returncode}", "stderr_tail": tail}
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    doc["node_id"] = ray.get_runtime_context().get_node_id()
    return doc


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="jobs/bench.py",
        description="Run `avrl bench BENCH ...` on one cluster node with these resources.",
    )
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs the task reserves")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs the task reserves")
    parser.add_argument("bench", choices=BENCHES)
    known, rest = parser.parse_known_args(args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    argv = [known.bench, *rest]
    if "--json" not in argv:
        argv.append("--json")

    from avrl_batch.cluster import connect
    from avrl_batch.errors import AvrlError
    from avrl_batch.redaction import redact

    try:
        connect(os.environ.get("RAY_ADDRESS") or None)
    except AvrlError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
        return 2
    import ray

    task = ray.remote(num_cpus=known.num_cpus, num_gpus=known.num_gpus)(_run_on_node)
    doc = ray.get(task.remote(argv))
    print(json.dumps(doc), flush=True)
    return 1 if "error" in doc else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
