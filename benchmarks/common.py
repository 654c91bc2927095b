"""What every benchmark script shares: arguments, machine info, timing, memory probes, output.

Timing rules (one place, so every figure in ``benchmarks/results`` is read the same way):

- **Interleaved.** Variants compared against each other (LSP step vs plain step) are timed in
  rounds, one call of each per round, the order reversed every other round. On a shared machine
  the background load drifts; interleaving makes both variants see the same drift, so their
  ratio is far steadier than that of two back-to-back blocks.
- **Warm-ups** (untimed rounds) first, then ``repeats`` timed rounds; every call is timed on its
  own with ``time.perf_counter_ns``, CUDA synchronised after it.
- **Statistics.** ``median_ms`` is the headline; ``p10``/``p90``/``min``/``mean``/``std`` beside
  it. Ratios are given three ways: of the medians (the headline a target is checked on), the
  median of the per-round ratios (paired), and of the minima (least disturbed by other load).

Memory rules: see :func:`measure_step_memory` and :func:`run_memory_probes`.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

try:
    import resource  # Unix: page faults and kernel time per timed call
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python3 benchmarks/x.py` without PYTHONPATH
    sys.path.insert(0, str(REPO))

from study import allocator  # noqa: E402
from study.latency import device_name  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"

#: glibc serves allocations at least this large by mmap in memory probes (see run_memory_probes).
PROBE_MMAP_THRESHOLD = 1 << 20


# ---------------------------------------------------------------- arguments and set-up


def make_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every script takes: ``--device``, ``--quick``, ``--out``, ``--threads``,
    ``--repeats``, ``--warmup``, ``--seed``, ``--retain-freed-memory`` (and the hidden
    ``--memory-probe``)."""
    parser = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: finishes in seconds (smoke test)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON output path"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's own)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="run as training does with GDS_RETAIN_FREED_MEMORY=1 (study/allocator.py): "
        "glibc keeps freed memory instead of giving it back to the OS",
    )
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, ``--seed`` and ``--retain-freed-memory`` (not in a memory probe);
    check that the device exists; return it."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here (valid: cpu)")
    if args.retain_freed_memory and not args.memory_probe:
        os.environ[allocator.SWITCH_ENV] = "1"  # also for the Ray workers a study starts
        allocator.retain_freed_memory()
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def pick(args: argparse.Namespace, name: str, quick: int, full: int) -> int:
    """``args.<name>`` if given, else the quick or full default."""
    value = getattr(args, name)
    return int(value) if value is not None else (quick if args.quick else full)


def machine_info(device: torch.device) -> dict[str, Any]:
    """Where and with what the figures were taken (stored beside every figure)."""
    import torch_geometric

    info: dict[str, Any] = {
        "cpu_model": device_name("cpu"),
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "torch_geometric_version": torch_geometric.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "freed_memory_retained": allocator.retained(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        # Other work on the machine moves every timing; the load says how much there was.
        info["load_average_1_5_15"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["cuda_version"] = torch.version.cuda
    return info


def sync_for(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ---------------------------------------------------------------- inputs

#: The PPI-shaped graph of the issue: one PPI graph's size, features and labels.
PPI_SHAPE = {"num_nodes": 2372, "num_edges": 33000, "num_features": 50, "num_labels": 121}
#: Its --quick stand-in.
PPI_SHAPE_QUICK = {"num_nodes": 200, "num_edges": 2000, "num_features": 50, "num_labels": 121}


def ppi_shaped_graph(
    num_nodes: int, num_edges: int, num_features: int, num_labels: int, seed: int = 0
) -> Any:
    """A random undirected graph of PPI's size: Gaussian features, random 0/1 labels.

    ``num_edges / 2`` node pairs drawn uniformly (no self-loops), both directions stored,
    duplicates removed: the edge count comes out a little under ``num_edges``. Timing depends
    on the sizes, not on the values, so random data stands in for PPI (not available offline).

    Returns:
        A PyG ``Data`` with ``x [N, F]``, ``edge_index [2, E]``, ``y [N, L]`` float,
        ``mask [N]`` all true and ``graph_id = 0`` (what ``study.train`` reads).
    """
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, num_nodes, (2, num_edges // 2), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    edge_index = to_undirected(pairs, num_nodes=num_nodes)
    x = torch.randn(num_nodes, num_features, generator=g)
    y = (torch.rand(num_nodes, num_labels, generator=g) < 0.3).float()
    mask = torch.ones(num_nodes, dtype=torch.bool)
    return Data(x=x, edge_index=edge_index, y=y, mask=mask, graph_id=0, num_nodes=num_nodes)


def point_cloud_batch(batch: int, points: int, num_classes: int = 40, seed: int = 0) -> Any:
    """``batch`` procedural clouds (``study.data.synthetic_shapes``) of ``points`` points.

    Returns:
        ``(points [B, P, 3] float32, labels [B] long in [0, num_classes))``.
    """
    from study.data.synthetic import synthetic_shapes

    per_class = max(1, -(-batch // 5))
    task = synthetic_shapes(num_per_class=per_class, num_classes=5, num_points=points, seed=seed)
    clouds = task.train.points[:batch].contiguous()
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    return clouds, labels


# ---------------------------------------------------------------- timing


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, min, mean, std (sample) of a list of times in ms."""
    ordered = sorted(times_ms)
    q = statistics.quantiles(ordered, n=10, method="inclusive") if len(ordered) > 1 else None
    return {
        "median_ms": statistics.median(ordered),
        "p10_ms": q[0] if q else ordered[0],
        "p90_ms": q[-1] if q else ordered[0],
        "min_ms": ordered[0],
        "mean_ms": statistics.fmean(ordered),
        "std_ms": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "repeats": len(ordered),
    }


@dataclass
class Timed:
    """Per-call times in ms of each timed function, round by round.

    ``wall``: elapsed time (what a user waits for). ``cpu``: the process's CPU time over the
    call (``time.process_time``), all its threads together: unlike wall time it does not grow
    while other processes hold the cores, so on a shared machine it shows the work done, not
    the queueing. With several threads it also counts OpenMP threads spinning at barriers.
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    #: Per call: minor page faults and kernel CPU time in ms (``getrusage``; empty off Unix).
    faults: dict[str, list[int]] = field(default_factory=dict)
    kernel: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, Any]]:
        """name -> wall-time :func:`summarize` plus ``cpu`` (the same over CPU time) and the
        medians of ``minor_faults`` and ``kernel_cpu_ms`` per call."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.wall:
            out[name] = {**summarize(self.wall[name]), "cpu": summarize(self.cpu[name])}
            if self.faults.get(name):
                out[name]["minor_faults"] = statistics.median(self.faults[name])
                out[name]["kernel_cpu_ms"] = statistics.median(self.kernel[name])
        return out


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    sync: Callable[[], None],
) -> Timed:
    """Time each function once per round, in alternating order (see the module docstring).

    Args:
        fns: name -> zero-argument function (e.g. one training step).
        warmup: untimed rounds first.
        repeats: timed rounds.
        sync: waits for the device after each call.

    Returns:
        Wall and CPU times of every call.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            sync()
    timed = Timed({n: [] for n in names}, {n: [] for n in names})
    if resource is not None:
        timed.faults, timed.kernel = {n: [] for n in names}, {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            sync()
            usage = resource.getrusage(resource.RUSAGE_SELF) if resource is not None else None
            start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
            fns[name]()
            sync()
            timed.wall[name].append((time.perf_counter_ns() - start) / 1e6)
            timed.cpu[name].append((time.process_time_ns() - start_cpu) / 1e6)
            if usage is not None:
                after = resource.getrusage(resource.RUSAGE_SELF)
                timed.faults[name].append(after.ru_minflt - usage.ru_minflt)
                timed.kernel[name].append((after.ru_stime - usage.ru_stime) * 1e3)
    return timed


def step_memory(memory: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The ``memory`` entry of a step benchmark: the probes' results for ``plain_step`` and
    ``lsp_step``, their peak ratio (0 when the plain step's peak is 0) and ``extra``."""
    plain, lsp = memory["plain_step"]["step_peak_mib"], memory["lsp_step"]["step_peak_mib"]
    return {
        **memory,
        "step_peak_ratio": lsp / plain if plain > 0 else 0.0,
        **extra,
        "note": "peak RSS / CUDA memory above what is held before the step; "
        "see benchmarks/README.md",
    }


def ratio_line(result: dict[str, Any]) -> str:
    """The closing line of a step benchmark: its ratios, its target (and aim), the paper's."""
    r, tgt = result["ratios"], result["targets"]["step_ratio"]
    line = (
        f"LSP step / plain step: {r['ratio_of_medians']:.3f}x (medians), "
        f"{r['paired_median_ratio']:.3f}x (paired), {r['ratio_of_minima']:.3f}x (minima), "
        f"{r['cpu_ratio_of_medians']:.3f}x (CPU time); "
        f"target <= {tgt['limit']}: {'met' if tgt['met'] else 'NOT met'}; "
    )
    if tgt.get("aim") is not None:
        line += f"aim {tgt['aim']}: {'met' if tgt['aim_met'] else 'not met'}; "
    return line + f"paper {result['paper']['step_ratio']}x"


def ratios(timed: Timed, slow: str, fast: str) -> dict[str, float]:
    """``slow / fast``: of the wall-time medians (the headline), paired per round (median of
    the per-round ratios), of the wall-time minima, and of the CPU-time medians."""
    a, b = timed.wall[slow], timed.wall[fast]
    return {
        "ratio_of_medians": statistics.median(a) / statistics.median(b),
        "paired_median_ratio": statistics.median(x / y for x, y in zip(a, b, strict=True)),
        "ratio_of_minima": min(a) / min(b),
        "cpu_ratio_of_medians": (
            statistics.median(timed.cpu[slow]) / statistics.median(timed.cpu[fast])
        ),
    }


# ---------------------------------------------------------------- memory


def proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_step_memory(
    step: Callable[[], Any], device: torch.device, *, warmup: int = 1, steps: int = 2
) -> dict[str, Any]:
    """Peak memory of ``steps`` calls of ``step`` above what is held before them.

    ``warmup`` calls run first, so one-off state (Adam's moments, caches) counts as held.
    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before (tensors only,
    the caching allocator's slack excluded). CPU: the process's RSS high-water mark (``VmHWM``,
    reset through ``/proc/self/clear_refs`` just before) minus its RSS then (``VmRSS``). RSS
    counts every page the process touches, tensors and allocator alike; see
    :func:`run_memory_probes` for how the probe keeps freed tensors from hiding in it.
    """
    for _ in range(warmup):
        step()
    gc.collect()
    mib = 1024.0 * 1024.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "method": "torch.cuda.max_memory_allocated - memory_allocated before the steps",
            "held_before_mib": base / mib,
            "peak_mib": peak / mib,
            "step_peak_mib": (peak - base) / mib,
        }
    reset = _reset_peak_rss()
    base_kb = proc_status_kb("VmRSS")
    if base_kb is None:  # not Linux: ru_maxrss cannot be reset, so setup is inside the peak
        import resource

        for _ in range(steps):
            step()
        peak_b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_b *= 1 if sys.platform == "darwin" else 1024
        return {
            "method": "ru_maxrss of a fresh process (includes setup; no reset available)",
            "held_before_mib": None,  # unknown: nothing to subtract
            "peak_mib": peak_b / mib,
            "step_peak_mib": peak_b / mib,
        }
    for _ in range(steps):
        step()
    peak_kb = proc_status_kb("VmHWM") or 0
    return {
        "method": (
            "VmHWM - VmRSS (peak RSS reset via /proc/self/clear_refs before the steps)"
            if reset
            else "VmHWM - VmRSS (peak could not be reset: includes set-up)"
        ),
        "held_before_mib": base_kb / 1024.0,
        "peak_mib": peak_kb / 1024.0,
        "step_peak_mib": (peak_kb - base_kb) / 1024.0,
    }


def probe_argv(variants: Sequence[str]) -> list[str]:
    """The command line that re-runs this script as a memory probe of ``variants``."""
    argv = [a for a in sys.argv[1:] if not a.startswith("--memory-probe")]
    return [sys.executable, sys.argv[0], *argv, "--memory-probe", ",".join(variants)]


def run_memory_probes(variants: Sequence[str], *, shared: bool) -> dict[str, dict[str, Any]]:
    """Measure each variant's step memory in a fresh process.

    A fresh process per variant (``shared=False``), so that neither sees memory the other's
    allocator kept; ``shared=True`` (quick mode, where interpreter start-up dominates) measures
    the variants one after the other in a single probe process, and says so in ``process``.
    In the probe, ``MALLOC_MMAP_THRESHOLD_`` (glibc) makes every allocation of 1 MiB or more its
    own mapping, returned to the system when freed: RSS then follows the live tensors rather
    than staying at whatever the heap once grew to (so a probe never retains freed memory, even
    under ``--retain-freed-memory``: the peak it reports is that of the live tensors). A probe
    prints one JSON line, last on stdout.

    Args:
        variants: the names the script's ``--memory-probe`` understands.
        shared: one probe process for all variants.

    Returns:
        variant -> the :func:`measure_step_memory` result plus ``process``.
    """
    env = {k: v for k, v in os.environ.items() if k not in allocator.RETAIN_ENV}
    env["MALLOC_MMAP_THRESHOLD_"] = str(PROBE_MMAP_THRESHOLD)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    groups = [list(variants)] if shared else [[v] for v in variants]
    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        proc = subprocess.run(probe_argv(group), env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"memory probe {group} failed ({proc.returncode}):\n{proc.stderr}")
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        process = "one probe process, variants in turn" if shared else "fresh process per variant"
        for variant in group:
            results[variant] = {**found[variant], "process": process}
    return results


def memory_probe_main(
    spec: str, build_step: Callable[[str], Callable[[], Any]], device: torch.device, **kwargs: Any
) -> None:
    """The ``--memory-probe`` mode of a script: measure each named variant, print JSON.

    Args:
        spec: comma-separated variant names.
        build_step: variant name -> its step function (built fresh, nothing else kept).
        device: where the steps run.
        **kwargs: passed to :func:`measure_step_memory`.
    """
    found = {}
    for variant in spec.split(","):
        step = build_step(variant)
        found[variant] = measure_step_memory(step, device, **kwargs)
        del step
        gc.collect()
    print(json.dumps(found))


# ---------------------------------------------------------------- output


def check_finite(payload: Any, path: str = "") -> None:
    """Raise ``ValueError`` naming the first NaN/inf number in a nested JSON-like payload."""
    if isinstance(payload, float) and not math.isfinite(payload):
        raise ValueError(f"non-finite number at {path or '<root>'}: {payload}")
    if isinstance(payload, dict):
        for key, value in payload.items():
            check_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(payload, (list, tuple)):
        for i, value in enumerate(payload):
            check_finite(value, f"{path}[{i}]")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (checked finite) as indented JSON, creating the folder."""
    check_finite(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print ``rows`` as a fixed-width table of ``columns`` (floats: 3 decimals below 10)."""

    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    cells = [[fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print()


def target(
    value: float, limit: float, *, aim: float | None = None, at_least: bool = False
) -> dict[str, Any]:
    """A target check for the JSON: ``value <= limit`` (or ``>=`` with ``at_least``), and the
    stretch ``aim`` the same way."""

    def ok(bound: float) -> bool:
        return bool(value >= bound if at_least else value <= bound)

    out: dict[str, Any] = {
        "value": value,
        "limit": limit,
        "rule": ">=" if at_least else "<=",
        "met": ok(limit),
    }
    if aim is not None:
        out["aim"] = aim
        out["aim_met"] = ok(aim)
    return out
