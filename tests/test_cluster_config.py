"""cluster.yaml: valid for Ray's cluster launcher, nothing open to the world, MLflow behind a login.

The cloud provider is the one part nothing here can reach, so the file is checked against Ray's
own launcher schema and defaults (``prepare_config`` + ``validate_config``), Ray's own
security-group step runs against an EC2 that fails on any call, and the MLflow server command is
parsed by MLflow's own command-line parser. Where Flask-WTF (MLflow's ``auth`` extra) is
installed, the server command itself runs here and must refuse a request without the login.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from mlflow.cli import server as mlflow_server_command
from ray.autoscaler._private.aws import config as aws_config
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
HEAD_IP = "10.0.0.5"
#: The shell expressions in cluster.yaml, as they expand on a head whose private address is HEAD_IP.
SHELL = {
    "\"$(hostname -I | awk '{print $1}')\"": HEAD_IP,
    '"$(command -v mlflow)"': "mlflow",
    '"$(id -u)"': "1000",
    '"$(id -g)"': "1000",
}


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def commands(config: dict[str, Any] | None = None) -> list[str]:
    """Every shell command the launcher runs on a node."""
    config = config or load()
    keys = [k for k in config if k.endswith("_commands")]
    return [c for k in keys for c in config[k] or []]


def mlflow_server_command_line() -> str:
    (command,) = [c for c in load()["head_start_ray_commands"] if " server --app-name" in c]
    return command


def mlflow_server_args(command: str | None = None) -> list[str]:
    command = command or mlflow_server_command_line()
    for expr, value in SHELL.items():
        command = command.replace(expr, value)
    words = shlex.split(command)
    return words[words.index("server") + 1 :]


def header_lines() -> list[str]:
    """The setup steps written in the file's opening comment (the security group recipe)."""
    lines = []
    for line in CLUSTER_YAML.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return lines


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


# ------------------------------------------------------------------------------------ the network


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    else:
        yield str(node)


def test_nothing_is_opened_to_the_world() -> None:
    text = " ".join([*_strings(load()), *header_lines()])
    assert "0.0.0.0" not in text and "::/0" not in text


def test_launcher_creates_and_opens_no_security_group() -> None:
    """Ray's launcher, left to make the group, admits SSH from anywhere; naming a group stops it."""
    (default_ssh,) = aws_config._create_default_ssh_inbound_rules()
    assert default_ssh["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]  # why the file names its group

    config = prepare_config(copy.deepcopy(load()))
    assert "security_group" not in config["provider"]  # rules Ray would merge with its default
    for node_type in config["available_node_types"].values():
        groups = node_type["node_config"]["SecurityGroupIds"]
        # AWS ids are sg- and 8 or 17 hex digits: the shipped placeholder is refused by EC2.
        assert groups and not any(re.fullmatch(r"sg-([0-9a-f]{8}|[0-9a-f]{17})", g) for g in groups)
    cloud = mock.Mock(side_effect=AssertionError("the launcher called EC2"))
    with mock.patch.object(aws_config, "_resource", cloud):
        configured = aws_config._configure_security_group(copy.deepcopy(config))
    assert configured["available_node_types"] == config["available_node_types"]
    cloud.assert_not_called()


def test_the_security_group_recipe_admits_ssh_from_the_users_address_only() -> None:
    rules = [
        shlex.split(line) for line in header_lines() if "authorize-security-group-ingress" in line
    ]
    assert len(rules) == 2
    by_cidr = [r for r in rules if "--cidr" in r]
    (ssh,) = by_cidr  # one rule from an address range: SSH, from the user's own address
    assert ssh[ssh.index("--port") + 1] == "22"
    assert ssh[ssh.index("--cidr") + 1] == "YOUR_IP/32"
    (cluster,) = [r for r in rules if "--source-group" in r]  # the rest: the cluster's own nodes
    assert cluster[cluster.index("--source-group") + 1] == cluster[cluster.index("--group-id") + 1]


# ------------------------------------------------------------------------------------ MLflow


def test_mlflow_server_requires_a_login_and_listens_on_no_public_address() -> None:
    ctx = mlflow_server_command.make_context("server", mlflow_server_args())  # unknown flags raise
    assert ctx.params["app_name"] == "basic-auth"
    assert ctx.params["backend_store_uri"].startswith("postgresql://")
    assert ctx.params["host"] == HEAD_IP  # the head's private address, for the workers
    assert ctx.params["port"] == 5000
    gunicorn = shlex.split(ctx.params["gunicorn_opts"])
    binds = [gunicorn[i + 1] for i, w in enumerate(gunicorn) if w in ("--bind", "-b")]
    assert binds == ["127.0.0.1:5000"]  # and loopback, for the SSH tunnel
    for address in [ctx.params["host"], *(b.rsplit(":", 1)[0] for b in binds)]:
        assert ipaddress.ip_address(address).is_private


def test_mlflow_login_reaches_every_node_and_stays_private() -> None:
    config = load()
    local = config["file_mounts"]["~/.mlflow/credentials"]  # where MLflow's client looks
    assert local.startswith("~/") and "graph-distill-study" in local  # outside the project folder
    assert "chmod 600 ~/.mlflow/credentials" in config["setup_commands"]  # on every node
    (env,) = [c for c in config["head_setup_commands"] if "mlflow-server.env" in c]
    assert env.startswith("(umask 077") and "MLFLOW_FLASK_SERVER_SECRET_KEY" in env
    assert "mlflow_tracking_password" in env  # the admin is the login the workers use
    assert "default_permission = NO_PERMISSIONS" in " ".join(config["head_setup_commands"])
    assert 'EnvironmentFile="$HOME/mlflow-server.env"' in mlflow_server_command_line()


def test_processes_are_stopped_by_name_not_by_pattern() -> None:
    for command in commands():
        assert not re.search(r"\b(pkill|killall)\b", command), command
    start = mlflow_server_command_line()
    assert "systemd-run --unit=mlflow-server" in start
    assert any("systemctl stop mlflow-server" in c for c in load()["head_start_ray_commands"])


def test_dashboard_is_not_exposed() -> None:
    (start,) = [c for c in load()["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in start


# ---------------------------------------------------------------- the server command, run here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, login: tuple[str, str] | None = None, host: str | None = None) -> int:
    request = urllib.request.Request(url)
    if host:
        request.add_header("Host", host)
    if login:
        token = b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # not listening (yet)
        return 0


def test_the_head_server_command_refuses_requests_without_the_login(tmp_path: Path) -> None:
    """cluster.yaml's own server arguments, with sqlite for PostgreSQL and 127.0.0.2 for the
    private address: no login, 401 on both listeners; the login from the credentials file, 200."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs its `auth` extra")
    port = _free_port()
    args = mlflow_server_args()
    args[args.index("--backend-store-uri") + 1] = f"sqlite:///{tmp_path}/mlflow.db"
    args[args.index("--artifacts-destination") + 1] = str(tmp_path / "artifacts")
    args[args.index("--host") + 1] = "127.0.0.2"
    args[args.index("--port") + 1] = str(port)
    args[args.index("--gunicorn-opts") + 1] = f"--bind 127.0.0.1:{port}"
    (tmp_path / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp_path}/auth.db\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    login = ("gds", "0123456789abcdef")
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": login[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": login[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        deadline = time.monotonic() + 90
        while _status(f"http://127.0.0.1:{port}/health") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.5)
        # A worker names the head's private address (MLflow admits private addresses by default).
        for url, host in [
            (f"http://127.0.0.1:{port}{search}", None),
            (f"http://127.0.0.2:{port}{search}", f"{HEAD_IP}:{port}"),
        ]:
            assert _status(url, host=host) == 401
            assert _status(url, ("gds", "wrong"), host) == 401
            assert _status(url, login, host) == 200
        # MLflow's client on a node finds the login in ~/.mlflow/credentials by itself.
        home = tmp_path / "home"
        (home / ".mlflow").mkdir(parents=True)
        (home / ".mlflow" / "credentials").write_text(
            f"[mlflow]\nmlflow_tracking_username = {login[0]}\n"
            f"mlflow_tracking_password = {login[1]}\n"
        )
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from mlflow.tracking import MlflowClient; "
                "MlflowClient(sys.argv[1]).create_experiment('reached')",
                f"http://127.0.0.1:{port}",
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            | {"HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stderr[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
