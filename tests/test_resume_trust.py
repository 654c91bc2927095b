"""``resume`` loads no pickle from a folder it cannot trust; the searcher's own state is JSON.

Real parts only: studies run and resume through the ``distill-study`` command line on a local
Ray, the study folders are real folders whose owner and mode the tests change, and the hostile
files are real pickles that would create a marker file if anything unpickled them.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from study.config import parse_study_spec
from study.search import JsonOptunaSearch, SeedRepeater, make_search
from tests.studies import tiny_study, write_study

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
PICKLE_HEADER = b"\x80"  # every pickle protocol >= 2 starts with PROTO (0x80)
NOBODY = 65534


class Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code in a hostile file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def hostile_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker), protocol=pickle.HIGHEST_PROTOCOL)


def cli(*args: str, cwd: Path, timeout: float = 500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "study.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
    }


# ------------------------------------------------------------------ the searcher's state is JSON


def _spec(algorithm: str, seeds: list[int]) -> Any:
    searcher = {"algorithm": algorithm, "num_samples": 8, "max_concurrent": 1, "seed": 3}
    return parse_study_spec(tiny_study("unit", searcher=searcher, seeds=seeds), "unit.yaml")


@pytest.mark.parametrize("algorithm", ["tpe", "random", "nsga2"])
def test_searcher_state_round_trips_through_json(tmp_path: Path, algorithm: str) -> None:
    spec = _spec(algorithm, [0, 1])
    first, _, n = make_search(spec)
    assert isinstance(first, SeedRepeater) and isinstance(first.searcher, JsonOptunaSearch)
    ids = [f"t{i:02d}" for i in range(n)]
    for tid in ids[:7]:
        first.suggest(tid)
    for i, tid in enumerate(ids[:6]):  # three groups told, a fourth begun
        first.on_trial_complete(tid, {o.metric: 0.1 * i for o in spec.objectives})

    first.save(str(tmp_path / "repeater.json"))
    first.searcher.save_to_dir(str(tmp_path), "s1")  # what Tune writes beside its own state
    for path in [tmp_path / "repeater.json", tmp_path / "searcher-state-s1.json"]:
        assert not path.read_bytes().startswith(PICKLE_HEADER)
        json.loads(path.read_text())
    assert not list(tmp_path.glob("*.pkl"))

    second, _, _ = make_search(spec)
    second.restore(str(tmp_path / "repeater.json"))
    third, _, _ = make_search(spec)
    assert isinstance(third, SeedRepeater)
    third.set_state(json.loads(json.dumps(first.get_state())))  # what Tune stores, as JSON
    third.searcher.restore_from_dir(str(tmp_path))
    for resumed in (second, third):
        study = resumed.searcher._ot_study
        assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["RUNNING"]
        assert [t.params for t in study.trials] == [
            t.params for t in first.searcher._ot_study.trials
        ]
    # The interrupted group finishes, and the next configurations are the ones the first
    # searcher would have drawn: its trials and random state came back.
    for searcher in (first, second, third):
        searcher.on_trial_complete(ids[6], {o.metric: 0.5 for o in spec.objectives})
    for tid in ids[7:]:
        expected = first.suggest(tid)
        assert second.suggest(tid) == expected and third.suggest(tid) == expected


def test_a_pickled_searcher_file_is_never_read(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "searcher-state-s1.pkl").write_bytes(hostile_pickle(marker))
    searcher, _, _ = make_search(_spec("tpe", [0]))
    assert isinstance(searcher, SeedRepeater)
    with pytest.raises(RuntimeError, match="unable to find checkpoint"):
        searcher.searcher.restore_from_dir(str(tmp_path))  # Tune's restore looks for JSON only
    (tmp_path / "searcher-state-s1.json").write_bytes(hostile_pickle(marker))
    with pytest.raises(ValueError):
        searcher.searcher.restore_from_dir(str(tmp_path))
    assert not marker.exists()
    pickle.loads(hostile_pickle(marker))  # the payload is live: unpickling it makes the marker
    assert marker.exists()


# ------------------------------------------------------------------ studies resumed from folders


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A small Optuna study run to the end: its storage folder and tracking URI."""
    root = tmp_path_factory.mktemp("trusted")
    searcher = {"algorithm": "random", "num_samples": 2, "max_concurrent": 1, "seed": 0}
    path = write_study(root, "kept", searcher=searcher)
    uri = f"sqlite:///{root}/mlflow.db"
    done = cli(
        "run", str(path), "--storage", str(root / "studies"), "--tracking-uri", uri, cwd=root
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    yield root / "studies", uri


@pytest.fixture
def study_copy(finished_study: tuple[Path, str], tmp_path: Path) -> Iterator[Path]:
    """A copy of the finished study's storage folder, for one test to spoil; owners restored."""
    storage = tmp_path / "studies"
    shutil.copytree(finished_study[0], storage, symlinks=True)
    yield storage
    for path in [storage, *storage.rglob("*")]:
        if path.lstat().st_uid != os.geteuid():
            os.lchown(path, os.geteuid(), os.getegid())


def _resume_refused(storage: Path, cwd: Path, *words: str) -> str:
    folder = storage / "kept"
    before = listing(folder)
    result = cli("resume", "kept", "--storage", str(storage), cwd=cwd, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and str(folder) in lines[0], result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert listing(folder) == before  # nothing ran: Tune rewrites its state when it starts
    return lines[0]


def _give_away(path: Path, *, uid: int = -1, gid: int = -1) -> None:
    """Give ``path`` to user or group ``nobody`` (root only: as anyone else chown refuses)."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user or group needs root")
    os.lchown(path, uid, gid)


def _group_writable(path: Path) -> None:
    _give_away(path, gid=NOBODY)  # a group the user does not own alone
    path.chmod(0o664)


def _linked_away(path: Path) -> None:
    """Move ``path`` out of the study and leave a link in its place."""
    target = path.parent.parent / f"elsewhere-{path.name}"
    path.rename(target)
    path.symlink_to(target)


#: How a copied study folder is spoiled, and words the refusal must say.
SPOILS: dict[str, tuple[Any, list[str]]] = {
    "folder-o+w": (lambda f: f.chmod(0o777), ["writable by others"]),
    "file-o+w": (lambda f: (f / "tuner.pkl").chmod(0o646), ["tuner.pkl", "writable by others"]),
    "file-g+w": (
        lambda f: _group_writable(f / "gds_context.json"),
        ["gds_context.json", f"writable by group {NOBODY}"],
    ),
    "folder-owner": (lambda f: _give_away(f, uid=NOBODY), [f"owned by uid {NOBODY}"]),
    "file-owner": (
        lambda f: _give_away(next(f.glob("experiment_state-*.json")), uid=NOBODY),
        ["experiment_state", f"owned by uid {NOBODY}"],
    ),
    "parent-o+w": (lambda f: f.parent.chmod(0o777), ["writable by others"]),
    "symlink": (lambda f: _linked_away(f / "tuner.pkl"), ["tuner.pkl", "symbolic link"]),
}


@pytest.mark.parametrize("spoil", list(SPOILS))
def test_an_untrusted_study_folder_is_refused_before_anything_is_read(
    study_copy: Path, tmp_path: Path, spoil: str
) -> None:
    change, words = SPOILS[spoil]
    change(study_copy / "kept")
    _resume_refused(study_copy, tmp_path, *words)


def test_a_hostile_pickle_in_an_untrusted_folder_never_runs(
    study_copy: Path, tmp_path: Path
) -> None:
    folder = study_copy / "kept"
    marker = tmp_path / "pwned"
    for name in ["tuner.pkl", next(folder.glob("search_gen_state-*.json")).name]:
        (folder / name).write_bytes(hostile_pickle(marker))
    folder.chmod(0o777)
    _resume_refused(study_copy, tmp_path, "writable by others")
    assert not marker.exists()


def test_a_hostile_searcher_file_in_an_own_folder_never_runs(
    study_copy: Path, tmp_path: Path
) -> None:
    folder = study_copy / "kept"
    marker = tmp_path / "pwned"
    (state,) = folder.glob("searcher-state-*.json")
    state.write_bytes(hostile_pickle(marker))
    _resume_refused(study_copy, tmp_path, state.name, "not the JSON searcher state")
    state.unlink()
    (folder / "searcher-state-2000-01-01_00-00-00.pkl").write_bytes(hostile_pickle(marker))
    _resume_refused(study_copy, tmp_path, "pickled by an earlier version")
    assert not marker.exists()


def test_our_files_hold_no_pickle(finished_study: tuple[Path, str]) -> None:
    folder = finished_study[0] / "kept"
    ours = [folder / "gds_context.json", *folder.glob("searcher-state-*")]
    assert len(ours) >= 2 and not list(folder.glob("searcher-state-*.pkl"))
    for path in ours:
        assert not path.read_bytes().startswith(PICKLE_HEADER), path
        json.loads(path.read_text())


# ------------------------------------------------------------------ an interrupted TPE study


def _searcher_state(folder: Path) -> dict[str, Any]:
    """The newest searcher state Tune saved (it names them by session time); none yet: empty."""
    saved = sorted(folder.glob("searcher-state-*.json"))
    try:
        return json.loads(saved[-1].read_text()) if saved else {"trials": []}
    except json.JSONDecodeError:  # Tune is copying it into the study folder: not yet
        return {"trials": []}


def test_a_study_resumed_after_sigint_keeps_the_searchers_memory(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "studies"
    student = dict(tiny_study("x")["student"], train={"epochs": 150, "lr": 0.01})
    searcher = {"algorithm": "tpe", "num_samples": 4, "max_concurrent": 1, "seed": 0}
    path = write_study(tmp_path, "memory", student=student, searcher=searcher)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "study.cli", "run", str(path), "--storage", str(storage)]
        + ["--tracking-uri", uri],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    # Interrupt once the searcher's saved state holds a told trial (Tune saves it every few
    # seconds): the resumed searcher must know that trial.
    folder = storage / "memory"
    deadline = time.monotonic() + 400
    while not any(t["state"] == "COMPLETE" for t in _searcher_state(folder)["trials"]):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial was told to the searcher"
        time.sleep(0.5)
    driver.send_signal(signal.SIGINT)  # Tune saves its state and stops
    driver.wait(timeout=120)
    before = _searcher_state(folder)
    told = [t for t in before["trials"] if t["state"] == "COMPLETE"]
    assert 1 <= len(told) < 4, before["trials"]

    resumed = cli("resume", "memory", "--storage", str(storage), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    assert len(list(folder.glob("searcher-state-*.json"))) == 2  # the resumed session's own
    after = _searcher_state(folder)
    # The resumed TPE study holds the trials told before the interrupt, same numbers, same
    # configurations, same values, and went on from there to the study's four.
    by_number = {t["number"]: t for t in after["trials"]}
    for trial in told:
        kept = by_number[trial["number"]]
        assert (kept["state"], kept["params"], kept["values"]) == (
            "COMPLETE",
            trial["params"],
            trial["values"],
        )
    assert sorted(by_number) == [0, 1, 2, 3]
    assert all(t["state"] == "COMPLETE" for t in after["trials"])
    assert not list(folder.glob("searcher-state-*.pkl"))


def test_checkpoints_a_killed_driver_still_names_are_put_back(tmp_path: Path) -> None:
    from study.runner import LOST_CHECKPOINTS, _restore_lost_checkpoints

    trial = tmp_path / "run_trial_0"
    for index in (5, 6):
        (trial / f"checkpoint_{index:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{index:06d}" / "trial_state.pt").write_text(str(index))
    (tmp_path / "run_trial_1").mkdir()  # a trial that never checkpointed: left alone
    assert _restore_lost_checkpoints(tmp_path) == 1 and LOST_CHECKPOINTS == 2
    # The newest state under the name Tune may still hold; the one still there is untouched.
    assert (trial / "checkpoint_000004" / "trial_state.pt").read_text() == "6"
    assert (trial / "checkpoint_000005" / "trial_state.pt").read_text() == "5"
    assert not (trial / "checkpoint_000003").exists()
    assert list((tmp_path / "run_trial_1").iterdir()) == []
    assert _restore_lost_checkpoints(tmp_path) == 0  # nothing is overwritten
