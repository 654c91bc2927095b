"""Every benchmark script runs with ``--quick`` and writes JSON with its keys and finite numbers.

No timing is asserted: the figures of a quick run on a shared machine mean nothing. The four
scripts run at once (each is mostly interpreter start-up and imports), one thread each.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

MACHINE_KEYS = ("cpu_model", "torch_version", "threads", "device", "device_name")

#: Per script: dotted paths that must exist in its JSON.
EXPECTED: dict[str, tuple[str, ...]] = {
    "bench_study_overhead": (
        "study.total_s",
        "plain.total_s",
        "ratios.per_trial",
        "ratios.end_to_end",
        "targets.per_trial_overhead.met",
        "config.trials",
    ),
    "bench_lsp_step_ppi": (
        "timings.plain_step.median_ms",
        "timings.lsp_step.median_ms",
        "timings.lsp_term_fwd_bwd.median_ms",
        "ratios.ratio_of_medians",
        "ratios.paired_median_ratio",
        "ratios.ratio_of_minima",
        "teacher_precompute_ms",
        "memory.plain_step.step_peak_mib",
        "memory.lsp_step.step_peak_mib",
        "memory.lsp_step.method",
        "targets.step_ratio.met",
        "targets.step_ratio.aim_met",
        "config.num_edges_actual",
        "config.teacher_hidden_width",
    ),
    "bench_lsp_step_dgcnn": (
        "timings.plain_step.median_ms",
        "timings.lsp_step.median_ms",
        "ratios.ratio_of_medians",
        "breakdown.timings.teacher_forward_no_grad.median_ms",
        "breakdown.timings.union_edges.median_ms",
        "breakdown.timings.lsp_term_fwd_bwd.median_ms",
        "breakdown.edges.union",
        "memory.plain_step.step_peak_mib",
        "memory.lsp_step.step_peak_mib",
        "targets.step_ratio.met",
        "config.batch",
        "config.points",
    ),
    "bench_lsp_vs_naive": (
        "agreement",
        "timings.teacher_precomputed.forward.fast.median_ms",
        "timings.teacher_precomputed.forward_backward.naive.median_ms",
        "timings.both_sides.forward.naive.median_ms",
        "timings.both_sides.forward_backward.fast.median_ms",
        "speedup.teacher_precomputed.forward_backward",
        "speedup.both_sides.forward",
        "targets.teacher_precomputed_forward_backward.met",
        "targets.both_sides_forward.met",
    ),
    "bench_large_graph": (
        "results",
        "targets.teacher_beyond_graph_growth.met",
        "targets.lsp_student_beyond_graph_growth.met",
        "config.nodes",
        "config.sampler",
    ),
    "bench_cuda_paths": (
        "training",
        "latency",
        "val_score_device_vs_cpu.agree",
        "typed_and_temporal",
        "config.nodes",
    ),
    "bench_latency": (
        "results",
        "teacher_over_student_p50.gat_ppi",
        "teacher_over_student_p50.dgcnn_b1",
        "config.repeats",
    ),
}


def _get(payload: dict[str, Any], dotted: str) -> Any:
    node: Any = payload
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"missing key {dotted!r} (at {key!r})"
        node = node[key]
    return node


def _numbers(payload: Any) -> list[float]:
    if isinstance(payload, bool):
        return []
    if isinstance(payload, (int, float)):
        return [float(payload)]
    if isinstance(payload, dict):
        return [x for v in payload.values() for x in _numbers(v)]
    if isinstance(payload, list):
        return [x for v in payload for x in _numbers(v)]
    return []


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run all scripts with --quick at once; their parsed JSON by name."""
    out_dir = tmp_path_factory.mktemp("bench")
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                str(BENCHMARKS / f"{name}.py"),
                "--quick",
                "--threads",
                "1",
                "--out",
                str(out_dir / f"{name}.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in EXPECTED
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
        path = out_dir / f"{name}.json"
        assert str(path) in stdout  # it says where it wrote
        results[name] = json.loads(path.read_text())
    return results


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_writes_expected_finite_json(outputs, name: str) -> None:
    result = outputs[name]
    assert result["benchmark"] == name
    assert result["quick"] is True
    for key in MACHINE_KEYS:
        assert result["machine"][key] not in (None, "")
    assert result["machine"]["threads"] == 1  # --threads was applied and recorded
    for dotted in EXPECTED[name]:
        _get(result, dotted)
    numbers = _numbers(result)
    assert numbers and all(math.isfinite(x) for x in numbers)


def test_step_benchmarks_time_positive_and_check_their_targets(outputs) -> None:
    for name in ("bench_lsp_step_ppi", "bench_lsp_step_dgcnn"):
        result = outputs[name]
        plain, lsp = result["timings"]["plain_step"], result["timings"]["lsp_step"]
        assert plain["median_ms"] > 0 and lsp["median_ms"] > 0
        tgt = result["targets"]["step_ratio"]
        ratio = lsp["median_ms"] / plain["median_ms"]
        assert tgt["value"] == pytest.approx(ratio)
        assert tgt["met"] == (ratio <= tgt["limit"])
        assert result["memory"]["lsp_step"]["step_peak_mib"] >= 0


def test_naive_comparison_agrees_and_latency_covers_both_presets(outputs) -> None:
    agreement = outputs["bench_lsp_vs_naive"]["agreement"]
    assert {a["dtype"] for a in agreement} == {"float32", "float64"}
    assert all(a["allclose"] and a["loss_naive"] > 0 for a in agreement)
    rows = outputs["bench_latency"]["results"]
    settings = {(r["setting"], r["role"]) for r in rows}
    assert {
        ("gat_ppi", "student"),
        ("gat_ppi", "teacher"),
        ("dgcnn_b1", "student"),
        ("dgcnn_b1", "teacher"),
    } <= settings
    assert all(r["p90_ms"] >= r["p50_ms"] > 0 for r in rows)
