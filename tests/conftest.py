"""Shared fixtures: a session copy of the real offline data; tiny PPI files in PPI's layout.

The test run leaves the checkout as it found it: every test runs in a scratch working folder
(MLflow puts a sqlite store's artifacts in ``./mlruns``, and the default store is
``./mlflow.db``), and the session fails if ``mlruns/``, ``mlartifacts/`` or ``mlflow.db`` appear
or change in the checkout all the same.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: What MLflow writes into the working folder when given none: these must not change in REPO.
MLFLOW_LITTER = ("mlruns", "mlartifacts", "mlflow.db")
_LITTER_KEY = pytest.StashKey[dict[str, tuple[int, int]]]()

#: Graphs per split written by :func:`write_tiny_ppi` (the real PPI has 20 / 2 / 2).
TINY_PPI_GRAPHS = {"train": 3, "valid": 2, "test": 2}
TINY_PPI_FEATURES = 50
TINY_PPI_LABELS = 121


def shared_data_dir() -> Path | None:
    """The offline data: ``$GDS_DATA_ROOT`` (as CI sets it), else ``shared/data`` by the repo."""
    candidates = [
        os.environ.get("GDS_DATA_ROOT"),
        os.environ.get("GDS_SHARED_DATA"),
        REPO.parent / "shared" / "data",
        REPO / "shared" / "data",
    ]
    for c in candidates:
        if c and (Path(c) / "planetoid").is_dir():
            return Path(c)
    return None


def _litter_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """MLflow's files in ``root``: path -> (size, mtime), runs two levels into the folders."""
    seen: dict[str, tuple[int, int]] = {}
    for name in MLFLOW_LITTER:
        top = root / name
        paths = [top, *top.glob("*"), *top.glob("*/*")] if top.is_dir() else [top]
        for path in paths:
            if path.exists():
                st = path.stat()
                seen[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return seen


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_LITTER_KEY] = _litter_snapshot(REPO)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if the tests wrote MLflow files into the checkout."""
    before = session.config.stash.get(_LITTER_KEY, None)
    if before is None:
        return
    after = _litter_snapshot(REPO)
    changed = sorted(k for k in after if after[k] != before.get(k))
    if changed:
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        shown = ", ".join(changed[:5]) + more
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the tests wrote MLflow files into the checkout {REPO}: {shown}"
        if reporter is not None:
            reporter.write_sep("=", "FAILED: " + message, red=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def scratch_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run the session in a scratch folder, not the checkout.

    Session-wide, so module- and session-scoped fixtures (studies run once per module) are
    covered too; tests that need the repository use :data:`REPO`, never the working folder.
    Ray puts the driver's working folder on its workers' ``sys.path``, which used to be how
    they found this checkout; ``PYTHONPATH`` now says it, so workers and subprocesses import
    the code under test, not another installed copy.
    """
    cwd = tmp_path_factory.mktemp("cwd")
    previous = Path.cwd()
    previous_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), previous_path) if p)
    os.chdir(cwd)
    try:
        yield cwd
    finally:
        os.chdir(previous)
        if previous_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous_path


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after (files opt in with ``usefixtures``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def bounded_allocator_calls() -> Iterator[list[str]]:
    """Record :func:`study.allocator.bound_freed_memory` instead of applying it in the test
    process: glibc's setting cannot be undone, and every later test (most of them full batch)
    would run under it (+20% time measured on the model and training tests). Its effect is
    tested in fresh processes (``test_allocator.py``); that sampled training asks for it, here."""
    from study import allocator

    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(allocator, "bound_freed_memory", lambda: bool(calls.append("bound")))
        yield calls


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep teacher checkpoints and processed data of the tests out of the user's cache."""
    cache = tmp_path_factory.mktemp("gds_cache")
    previous = os.environ.get("GDS_CACHE_DIR")
    os.environ["GDS_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("GDS_CACHE_DIR", None)
    else:
        os.environ["GDS_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def gds_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the offline data (PyG writes ``processed/`` beside ``raw/``).

    Copied once per session from ``$GDS_DATA_ROOT`` (else ``shared/data`` beside the checkout);
    pass it as ``root=`` to the loaders. Fails, naming what to set, when there is none.
    """
    src = shared_data_dir()
    if src is None:
        pytest.fail(
            "no offline data: set GDS_DATA_ROOT to a copy of shared/data (with planetoid/Cora/raw)"
        )
    dst = tmp_path_factory.mktemp("gds_data") / "data"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("processed"))
    # copytree keeps the source's read-only modes; the loaders would then (rightly) leave the
    # copy alone and process into the user cache, so make the copy writable.
    for path in [dst, *dst.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    return dst


def write_tiny_ppi(
    raw_dir: Path,
    graphs: dict[str, int] | None = None,
    num_features: int = TINY_PPI_FEATURES,
    num_labels: int = TINY_PPI_LABELS,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Write PPI's twelve raw files, small, exactly as ``torch_geometric.datasets.PPI`` reads them.

    Per split ``s`` in train/valid/test: ``s_graph.json`` (networkx node-link data, key ``links``,
    undirected, node ids running over all graphs of the split), ``s_feats.npy [N, F]`` float,
    ``s_labels.npy [N, L]`` 0/1, ``s_graph_id.npy [N]`` (ids start at 1, as in the real files).
    Each graph is a ring of 5 to 9 nodes plus a chord, so every node has an edge (PyG shifts each
    graph's edges by their minimum node id). Labels depend on the features, so they can be learnt.

    Returns:
        The node count of every graph, per split.
    """
    import networkx as nx
    from networkx.readwrite import json_graph

    graphs = graphs or TINY_PPI_GRAPHS
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(num_features, num_labels))
    raw_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, list[int]] = {}
    for split, count in graphs.items():
        g = nx.Graph()
        ids, offset, sizes[split] = [], 0, []
        for k in range(count):
            n = int(rng.integers(5, 10))
            nodes = list(range(offset, offset + n))
            g.add_nodes_from(nodes)
            g.add_edges_from(zip(nodes, nodes[1:] + nodes[:1], strict=True))
            g.add_edge(nodes[0], nodes[n // 2])
            ids += [k + 1] * n
            sizes[split].append(n)
            offset += n
        feats = rng.normal(size=(offset, num_features)).astype(np.float32)
        labels = (feats @ weights > 0).astype(np.int64)
        with open(raw_dir / f"{split}_graph.json", "w") as f:
            json.dump(json_graph.node_link_data(g, edges="links"), f)
        np.save(raw_dir / f"{split}_feats.npy", feats)
        np.save(raw_dir / f"{split}_labels.npy", labels)
        np.save(raw_dir / f"{split}_graph_id.npy", np.array(ids, dtype=np.int64))
    return sizes


@pytest.fixture(scope="session")
def tiny_ppi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding tiny PPI raw files in ``<root>/ppi/raw`` (3 / 2 / 2 graphs, 50 features,
    121 labels); ``load_task("ppi", root=tiny_ppi_root)`` reads it with PyG's real ``PPI``."""
    root = tmp_path_factory.mktemp("tiny_ppi")
    write_tiny_ppi(root / "ppi" / "raw")
    return root
