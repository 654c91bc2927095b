"""cluster.yaml: valid for Ray's cluster launcher, MLflow on a private address, GPU workers.

The cloud provider is the one part nothing here can reach, so the file is checked against Ray's
own launcher schema and defaults (``prepare_config`` + ``validate_config``) and the MLflow
server command is parsed by MLflow's own command-line parser, not started on a cloud.
"""

from __future__ import annotations

import copy
import ipaddress
import shlex
from pathlib import Path

import yaml
from mlflow.cli import server as mlflow_server_command
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def mlflow_server_args() -> list[str]:
    (command,) = [c for c in load()["head_start_ray_commands"] if "nohup mlflow server" in c]
    words = shlex.split(command.replace("\"$(hostname -I | awk '{print $1}')\"", "10.0.0.5"))
    return words[words.index("server") + 1 : words.index(">")]


def test_ray_launcher_accepts_it() -> None:
    config = prepare_config(copy.deepcopy(load()))
    validate_config(config)
    assert config["provider"]["type"] == "aws"


def test_gpu_workers_autoscale_and_head_runs_no_trials() -> None:
    config = load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(
        t["node_config"]["InstanceType"].startswith(("g", "p")) and t["max_workers"] > 0
        for t in workers
    )
    assert all(t.get("min_workers", 0) == 0 for t in workers)  # scale to zero when idle


def test_project_is_installed_on_every_node() -> None:
    config = load()
    assert "." in config["file_mounts"].values()
    assert any("pip install" in c and "graph-distill-study" in c for c in config["setup_commands"])


def test_mlflow_server_uses_a_database_on_the_private_network_only() -> None:
    args = mlflow_server_args()
    ctx = mlflow_server_command.make_context("server", list(args))  # unknown flags raise here
    assert ctx.params["backend_store_uri"].startswith("postgresql://")
    assert ctx.params["host"] == "10.0.0.5"  # the head's private address, never 0.0.0.0
    assert ctx.params["port"] == 5000
    rules = load()["provider"]["security_group"]["IpPermissions"]
    (rule,) = [r for r in rules if r["FromPort"] <= 5000 <= r["ToPort"]]
    assert all(ipaddress.ip_network(r["CidrIp"]).is_private for r in rule["IpRanges"])


def test_dashboard_is_not_exposed() -> None:
    (start,) = [c for c in load()["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in start
