"""Retained freed memory: a freed big tensor's pages stay in the process and are reused.

Each case runs in a fresh interpreter (the settings are per process and cannot be undone): it
fills a 64 MiB tensor, frees it, and reports how far the resident set fell, then counts the
minor page faults of filling a 48 MiB tensor. glibc's defaults give the 64 MiB back (RSS falls
by it) and fault the 48 MiB in anew (12k faults); retained, neither happens. (The second
tensor is smaller because glibc pads an aligned request, so a freed block of exactly the same
size is not always reusable at once.)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from study import allocator

pytestmark = pytest.mark.skipif(
    not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"),
    reason="the settings are glibc's (other C libraries are left alone by design)",
)

_MIB = 1 << 20
_PAGES_48_MIB = 48 * _MIB // 4096

# What every probe script starts with: its imports, the resident set, a filled tensor.
_HELPERS = """
import json, resource, sys
import torch
from study import allocator
def rss():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
def filled(mib):
    return torch.empty(mib << 18, dtype=torch.float32).fill_(1.0)
"""

_PROBE = (
    _HELPERS
    + """
applied = allocator.retain_freed_memory() if sys.argv[1] == "call" else None
x = filled(64)
held = rss(); del x
released = held - rss()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = filled(48)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "retained": allocator.retained(), "faults": faults,
                  "released": released}))
"""
)


def _probe(mode: str, script: str = _PROBE, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.RETAIN_ENV}
    clean.pop(allocator.SWITCH_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-c", script, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _given_back(found: dict) -> bool:
    return found["released"] > 32 * _MIB and found["faults"] > _PAGES_48_MIB // 2


def _kept(found: dict) -> bool:
    return found["released"] < 4 * _MIB and found["faults"] < _PAGES_48_MIB // 20


def test_glibc_defaults_give_memory_back_and_fault_it_in_again() -> None:
    found = _probe("none")
    assert found["retained"] is False
    assert _given_back(found), found


def test_retain_freed_memory_reuses_the_pages() -> None:
    found = _probe("call", **{allocator.SWITCH_ENV: "1"})
    assert found["applied"] is True and found["retained"] is True
    assert _kept(found), found


def test_environment_form_works_for_processes_started_with_it() -> None:
    found = _probe("none", **allocator.RETAIN_ENV)
    assert found["retained"] is True
    assert _kept(found), found


def test_off_by_default() -> None:
    found = _probe("call")
    assert found["applied"] is False and found["retained"] is False
    assert _given_back(found), found


def test_workers_get_the_environment_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(allocator.SWITCH_ENV, raising=False)
    assert allocator.env_for_workers() == {}
    monkeypatch.setenv(allocator.SWITCH_ENV, "1")
    assert allocator.env_for_workers() == allocator.RETAIN_ENV


_BOUND_PROBE = (
    _HELPERS
    + """
if sys.argv[1] == "retain":
    allocator.retain_freed_memory()
applied = allocator.bound_freed_memory() if sys.argv[1] != "none" else None
x = filled(8)
del x  # glibc's default: the mmap threshold rises past 8 MiB
a, b = filled(4), filled(4)  # by default from the heap, a below b
held = rss()
del a
print(json.dumps({"applied": applied, "released": held - rss()}))
"""
)


def test_bounded_freed_memory_gives_a_freed_block_back_where_the_default_keeps_it() -> None:
    default = _probe("none", _BOUND_PROBE)
    assert default["released"] < _MIB, default  # a freed block inside the heap stays resident
    bound = _probe("bound", _BOUND_PROBE)
    assert bound["applied"] is True
    assert bound["released"] >= 4 * _MIB, bound  # mapped on its own, unmapped on free


def test_the_opt_in_to_retain_wins_over_bounding() -> None:
    found = _probe("retain", _BOUND_PROBE, **{allocator.SWITCH_ENV: "1"})
    assert found["applied"] is False
    # Asked for in the environment alone (a library user who never called retain): no bound.
    found = _probe("bound", _BOUND_PROBE, **{allocator.SWITCH_ENV: "1"})
    assert found["applied"] is False and found["released"] < _MIB, found
