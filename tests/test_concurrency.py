"""Processes that start at the same moment: one new tracking store, one study name.

Real processes on real sqlite stores. Top-level imports stay light: spawned children import
this module to find their target.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from study import tracking as tr
from tests.studies import write_study

REPO = Path(__file__).resolve().parents[1]


def _open_and_create(uri: str, name: str, barrier: Any, errors: Any) -> None:
    """In a child: wait for the other child, then open the store and create one experiment."""
    try:
        barrier.wait(timeout=300)  # both children have imported MLflow: they open together
        tr.open_store(uri).create_experiment(name)
    except BaseException as exc:
        errors.put(f"{name}: {type(exc).__name__}: {exc}"[:500])
        raise


def test_two_processes_create_one_new_store(tmp_path: Path) -> None:
    """MLflow creates a new sqlite store in whichever process opens it first, unguarded: two at
    once broke it for good. Under open_store's lock the second waits and finds it made."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spawn = multiprocessing.get_context("spawn")
    barrier, errors = spawn.Barrier(2), spawn.Queue()
    children = [
        spawn.Process(target=_open_and_create, args=(uri, f"exp{i}", barrier, errors))
        for i in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    failed = []
    while not errors.empty():
        failed.append(errors.get(timeout=5))
    assert [c.exitcode for c in children] == [0, 0], failed

    client = tr.open_store(uri)  # a third process (this one) opens it afterwards
    client.create_experiment("exp2")
    names = {e.name for e in client.search_experiments()}
    assert names == {"Default", "exp0", "exp1", "exp2"}
    assert tr.store_lock_path(uri) == tmp_path / "mlflow.db.lock"


def test_other_uris_are_opened_without_a_lock(tmp_path: Path) -> None:
    assert tr.store_lock_path("http://127.0.0.1:5000") is None
    assert tr.store_lock_path("postgresql://u@h/db") is None
    assert tr.store_lock_path("sqlite:///:memory:") is None
    assert tr.sqlite_path("sqlite:////a/b%20c.db?timeout=5") == Path("/a/b c.db")
    assert tr.sqlite_path("sqlite:///rel/m.db") == Path("rel/m.db")


def _cli_run(study: Path, uri: str, storage: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in (tr.TRACKING_URI_ENV, "RAY_ADDRESS")}
    return subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(study)]
        + ["--tracking-uri", uri, "--storage", str(storage)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_two_runs_of_one_name_at_once(tmp_path: Path) -> None:
    """Two `run`s of one study name on a new store, started together: one runs, the other is
    refused with the one line of a taken name, having started and written nothing."""
    path = write_study(
        tmp_path,
        "twice",
        teacher={**_tiny_model(8, 2), "train": {"epochs": 2, "lr": 0.01}},
        student={**_tiny_model(4, 1), "train": {"epochs": 2, "lr": 0.01}},
        methods=["none"],
        search={},
        searcher={"algorithm": "random", "num_samples": 1, "max_concurrent": 1, "seed": 0},
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    runs = [_cli_run(path, uri, storage, tmp_path) for _ in range(2)]
    done = [(p, *p.communicate(timeout=360)) for p in runs]
    codes = sorted(p.returncode for p, _, _ in done)
    report = "\n".join(f"rc={p.returncode}\n{out[-3000:]}\n{err[-3000:]}" for p, out, err in done)
    assert codes == [0, 2], report

    (refused_err,) = [err for p, _, err in done if p.returncode == 2]
    message = [line for line in refused_err.splitlines() if "already" in line]
    assert len(message) == 1 and refused_err.rstrip().endswith(message[0]), refused_err
    assert "'twice' already exists" in message[0] or "already holds a study" in message[0]

    # Exactly one study's runs in MLflow, and nothing of the refused run beside them.
    client = tr.open_store(uri)
    assert {e.name for e in client.search_experiments()} == {"Default", "twice"}
    exp = client.get_experiment_by_name("twice")
    assert exp is not None
    roles = [r.data.tags.get(tr.TAG_ROLE) for r in client.search_runs([exp.experiment_id])]
    assert sorted(roles) == sorted([tr.ROLE_STUDY, tr.ROLE_TEACHER, tr.ROLE_TRIAL]), roles
    assert sorted(p.name for p in storage.iterdir()) == [".gds-claim-twice.lock", "twice"]


def _tiny_model(width: int, heads: int) -> dict[str, Any]:
    return {"arch": "gat", "width": width, "depth": 2, "heads": heads, "dropout": 0.0}
