"""A local study's Ray listens on loopback only (issue 11, finding 5).

While a tiny study runs, every listening TCP socket of this session's Ray processes is sampled:
the driver (this process), every process whose command line names the session folder (GCS,
raylet, agents, monitors) and all their descendants (workers and Tune's trial actors, whose
command lines Ray rewrites to ``ray::...``). None may listen on 0.0.0.0, ``::`` or a routable
address. Ray 2.60 needs no exception to this (README: "Ray's network listeners").
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

import psutil
import pytest
import ray

from study import runner
from study.runner import run_study, start_ray
from tests.studies import tiny_study, write_study

pytestmark = pytest.mark.ray

#: Processes allowed to listen beyond loopback, by process name. Empty: in Ray 2.60 every
#: listener of a local study can be bound to 127.0.0.1. An entry here must name the one process
#: that cannot, with the README's measured list ("Ray's network listeners") saying why.
ALLOWED_NON_LOOPBACK: frozenset[str] = frozenset()

Listener = tuple[str, int, str]  # (address, port, process name)


@pytest.fixture
def local_ray():
    """A local Ray for one test, shut down after it (never `ray stop`: it kills every Ray)."""
    yield
    ray.shutdown()


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def ray_processes(session_dir: str) -> list[psutil.Process]:
    """This driver, the processes started for ``session_dir`` and all their descendants."""
    me = psutil.Process()
    roots: list[psutil.Process] = []
    for proc in me.children(recursive=True):
        try:
            if any(session_dir in arg for arg in proc.cmdline()):
                roots.append(proc)
        except psutil.Error:
            continue
    found = {me.pid: me}
    for root in roots:
        found[root.pid] = root
        try:
            found.update({p.pid: p for p in root.children(recursive=True)})
        except psutil.Error:
            continue
    return list(found.values())


def listeners(procs: list[psutil.Process]) -> set[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) owned by ``procs``."""
    names: dict[int, str] = {}
    for proc in procs:
        try:
            names[proc.pid] = "driver" if proc.pid == os.getpid() else proc.name()
        except psutil.Error:
            continue
    return {
        (c.laddr.ip, c.laddr.port, names[c.pid])
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in names
    }


def session_dir() -> str:
    return ray._private.worker.global_worker.node.get_session_dir_path()


def test_a_local_study_listens_on_loopback_only(
    tmp_path: Path, local_ray: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    start_ray()  # what run_study does first; it keeps this Ray
    assert ray.util.get_node_ip_address() == runner.LOCAL_RAY_IP
    folder = session_dir()

    seen: set[Listener] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(listeners(ray_processes(folder)))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        spec = tiny_study("bind")
        spec["teacher"]["train"]["epochs"] = 2
        spec["student"]["train"]["epochs"] = 2
        path = write_study(
            tmp_path,
            "bind",
            teacher=spec["teacher"],
            student=spec["student"],
            searcher={"algorithm": "random", "num_samples": 1, "max_concurrent": 1, "seed": 0},
        )
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        outcome = run_study(path, tracking_uri=uri, storage=tmp_path / "studies")
        assert outcome.complete
    finally:
        stop.set()
        sampler.join()
    seen.update(listeners(ray_processes(folder)))  # Ray is still up: one last look

    print("listeners:", sorted(seen))  # shown with -rP: the measured list the README quotes
    names = {name for _, _, name in seen}
    # Not vacuous: the GCS, the raylet, the driver and at least one worker were seen listening.
    assert {"gcs_server", "raylet", "driver"} <= names, sorted(seen)
    assert any(name.startswith("ray::") for name in names), sorted(seen)
    open_ = sorted(s for s in seen if not is_loopback(s[0]) and s[2] not in ALLOWED_NON_LOOPBACK)
    assert not open_, f"listening beyond loopback: {open_}; all: {sorted(seen)}"


def test_is_loopback_reads_mapped_and_wildcard_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"]))


def test_an_explicit_address_keeps_the_connect_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster address goes to ``ray.init`` as given, with neither loopback nor "local"."""
    from ray._private import ray_constants

    calls: list[dict] = []
    monkeypatch.setattr(runner.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runner.ray, "init", lambda **kw: calls.append(kw))
    before = ray_constants.ENABLE_RAY_CLUSTER
    start_ray("10.1.2.3:6379")
    assert calls[0]["address"] == "10.1.2.3:6379" and "_node_ip_address" not in calls[0]
    assert ray_constants.ENABLE_RAY_CLUSTER == before
