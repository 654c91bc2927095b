"""One training step of the paper's DGCNN student, with union-edge LSP and without (target (b)).

Both steps are what ``study.train`` runs per point-cloud batch: student forward (its own kNN
graphs, K=10), cross-entropy, ``zero_grad``, backward, SGD step (lr 0.1, momentum 0.9). The LSP
step adds the frozen teacher's forward under ``no_grad`` (K=20; on augmented clouds nothing can
be cached, so it runs every batch; up to its last EdgeConv layer, as training runs it for
LSP, which reads no teacher logits) and ``lambda * L_LSP`` on the union of the student's and the
teacher's last-layer kNN edges (RBF, lambda 100), through ``study.train.distillation_term`` as
training does. Target: LSP step / plain step <= 1.8 (paper: 2.4).

Default sizes are the issue's: 32 clouds of 1024 points. ``--batch`` and ``--points`` shrink
them (``--quick`` uses 2 x 64); the JSON records what ran.

    python3 benchmarks/bench_lsp_step_dgcnn.py [--quick] [--device cpu|cuda] [--batch 32]
        [--points 1024] [--threads 2]
"""

from __future__ import annotations

import copy
from typing import Any

import common
import torch
import torch.nn.functional as F

from study.distill import build_method, lsp_loss, union_edges
from study.latency import count_parameters
from study.models.dgcnn import dgcnn_modelnet_student, dgcnn_modelnet_teacher
from study.train import (
    DistillConfig,
    TrainConfig,
    distillation_term,
    make_optimizer,
    teacher_on_clouds,
)

NAME = "bench_lsp_step_dgcnn"
LAMBDA = 100.0
KERNEL = "rbf"
TARGET, PAPER = 1.8, 2.4
VARIANTS = ("plain_step", "lsp_step")
OPTIMIZER = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9)  # the paper's DGCNN settings


def sizes(args: Any) -> tuple[int, int]:
    """(batch, points) that run: the flags, else the quick or the issue's defaults."""
    return common.pick(args, "batch", 2, 32), common.pick(args, "points", 64, 1024)


def build(args: Any, device: torch.device, variants: tuple[str, ...]) -> dict[str, Any]:
    """Clouds, models and one step function per requested variant."""
    batch, num_points = sizes(args)
    points, labels = common.point_cloud_batch(batch, num_points, seed=args.seed)
    points, labels = points.to(device), labels.to(device)
    torch.manual_seed(args.seed)
    student = dgcnn_modelnet_student().to(device)
    teacher = dgcnn_modelnet_teacher().to(device).eval().requires_grad_(False)
    method = build_method(DistillConfig(method="lsp", params={"lambda": LAMBDA, "kernel": KERNEL}))
    built: dict[str, Any] = {
        "points": points,
        "student": student,
        "teacher": teacher,
        "method": method,
        "steps": {},
    }

    def make_step(model: torch.nn.Module, with_lsp: bool):
        optimizer = make_optimizer(list(model.parameters()), OPTIMIZER)
        model.train()

        def step() -> None:
            out = model(points)
            loss = F.cross_entropy(out.logits, labels)
            if with_lsp:
                t_out = teacher_on_clouds(teacher, points, method)
                term = distillation_term(
                    method,
                    out,
                    t_out,
                    edge_index=None,
                    precomputed=[],
                    adapters=None,
                    multilabel=False,
                    epoch=0,
                )
                loss = loss + LAMBDA * term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    for name in variants:
        built["steps"][name] = make_step(copy.deepcopy(student), name == "lsp_step")
    return built


def breakdown(built: dict[str, Any], device: torch.device, repeats: int) -> dict[str, Any]:
    """Where the LSP step's extra time goes: teacher forward, edge union, LSP term.

    ``teacher_forward_no_grad`` is the forward the step runs (EdgeConv layers only: LSP reads
    no logits); ``teacher_forward_with_head_no_grad`` adds the lift and the classifier, for
    comparison with setups that run the whole teacher (KD does).
    """
    points, student, teacher = built["points"], built["student"], built["teacher"]
    sync = common.sync_for(device)
    with torch.no_grad():
        s_out = student.train()(points)
        t_out = teacher(points)
    z_s = s_out.hidden[-1].detach().requires_grad_()
    z_t = t_out.hidden[-1]
    n = z_s.shape[0]
    edges = union_edges(s_out.edge_indices[-1], t_out.edge_indices[-1], num_nodes=n)

    method = built["method"]

    def teacher_layers() -> None:
        teacher_on_clouds(teacher, points, method)

    def teacher_full() -> None:
        with torch.no_grad():
            teacher(points)

    def edge_union() -> None:
        union_edges(s_out.edge_indices[-1], t_out.edge_indices[-1], num_nodes=n)

    def lsp_term() -> None:
        lsp_loss(z_s, z_t, edges, kernel=KERNEL, num_nodes=n).backward()
        z_s.grad = None

    fns = {
        "teacher_forward_no_grad": teacher_layers,
        "teacher_forward_with_head_no_grad": teacher_full,
        "union_edges": edge_union,
        "lsp_term_fwd_bwd": lsp_term,
    }
    times = common.time_interleaved(fns, warmup=1, repeats=repeats, sync=sync)
    return {
        "timings": times.summary(),
        "edges": {
            "student_k": student.k,
            "teacher_k": teacher.k,
            "student_last_layer": int(s_out.edge_indices[-1].size(1)),
            "teacher_last_layer": int(t_out.edge_indices[-1].size(1)),
            "union": int(edges.size(1)),
            "union_per_point": edges.size(1) / n,
        },
        "student_hidden_width": int(z_s.shape[1]),
        "teacher_hidden_width": int(z_t.shape[1]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="clouds per batch (default 32)")
    parser.add_argument("--points", type=int, default=None, help="points per cloud (default 1024)")
    args = parser.parse_args(argv)
    device = common.setup(args)
    if args.memory_probe:
        common.memory_probe_main(
            args.memory_probe, lambda v: build(args, device, (v,))["steps"][v], device, steps=1
        )
        return {}

    warmup, repeats = common.pick(args, "warmup", 1, 2), common.pick(args, "repeats", 3, 7)
    batch, num_points = sizes(args)
    built = build(args, device, VARIANTS)
    times = common.time_interleaved(
        built["steps"], warmup=warmup, repeats=repeats, sync=common.sync_for(device)
    )
    stats = times.summary()
    # This process's peak resident memory over the timed steps (both students, the teacher):
    # what --retain-freed-memory costs, beside the per-step live-tensor peaks of the probes.
    process_peak_kb = common.proc_status_kb("VmHWM")
    ratio = common.ratios(times, "lsp_step", "plain_step")
    parts = breakdown(built, device, repeats)
    memory = common.run_memory_probes(VARIANTS, shared=args.quick)
    result = {
        "benchmark": NAME,
        "description": "DGCNN student training step: with union-edge LSP (RBF, lambda 100, "
        "teacher forward under no_grad included, up to its last EdgeConv layer) vs plain "
        "(cross-entropy only)",
        "quick": args.quick,
        "machine": common.machine_info(device),
        "config": {
            "batch": batch,
            "points": num_points,
            "issue_sizes": {"batch": 32, "points": 1024},
            "at_issue_sizes": bool(batch == 32 and num_points == 1024),
            "clouds": "study.data.synthetic_shapes (procedural surfaces), 40 random labels",
            "student": "dgcnn_modelnet_student (EdgeConv 32,32,64,128, emb 88, MLP 256, K=10)",
            "teacher": "dgcnn_modelnet_teacher (EdgeConv 64,64,128,256, emb 1024, "
            "MLP 512,256, K=20)",
            "student_params": count_parameters(built["student"]),
            "teacher_params": count_parameters(built["teacher"]),
            "student_hidden_width": parts.pop("student_hidden_width"),
            "teacher_hidden_width": parts.pop("teacher_hidden_width"),
            "lsp": {
                "kernel": KERNEL,
                "lambda": LAMBDA,
                "direction": "student_teacher",
                "layer_map": [[-1, -1]],
                "edges": "union of student and teacher kNN graphs",
            },
            "optimizer": f"SGD lr {OPTIMIZER.lr}, momentum {OPTIMIZER.momentum}, "
            f"weight decay {OPTIMIZER.weight_decay}",
            "warmup_rounds": warmup,
            "repeats": repeats,
            "timing": "interleaved rounds (see benchmarks/common.py)",
        },
        "timings": stats,
        "ratios": ratio,
        "lsp_overhead_ms": stats["lsp_step"]["median_ms"] - stats["plain_step"]["median_ms"],
        "breakdown": parts,
        "memory": common.step_memory(
            memory,
            timing_process_peak_rss_mib=(
                None if process_peak_kb is None else process_peak_kb / 1024.0
            ),
        ),
        "targets": {"step_ratio": common.target(ratio["ratio_of_medians"], TARGET)},
        "paper": {"step_ratio": PAPER},
    }
    _print(result)
    common.write_json(args.out, result)
    return result


def _print(result: dict[str, Any]) -> None:
    t, mem = result["timings"], result["memory"]
    rows: list[dict[str, Any]] = [
        {
            "part": name,
            **{k: t[name][k] for k in ("median_ms", "p10_ms", "p90_ms", "min_ms")},
            "cpu_median_ms": t[name]["cpu"]["median_ms"],
            "kernel_cpu_ms": t[name].get("kernel_cpu_ms", ""),
            "minor_faults": t[name].get("minor_faults", ""),
            "step_peak_mib": mem[name]["step_peak_mib"],
        }
        for name in VARIANTS
    ]
    rows += [
        {
            "part": f"  {name}",
            **{k: v[k] for k in ("median_ms", "p10_ms", "p90_ms", "min_ms")},
            "cpu_median_ms": v["cpu"]["median_ms"],
        }
        for name, v in result["breakdown"]["timings"].items()
    ]
    cfg = result["config"]
    common.print_table(
        f"{NAME}: {cfg['batch']} x {cfg['points']} points ({result['machine']['device_name']}, "
        f"{result['machine']['threads']} threads); union edges "
        f"{result['breakdown']['edges']['union']}",
        rows,
        (
            "part",
            "median_ms",
            "p10_ms",
            "p90_ms",
            "min_ms",
            "cpu_median_ms",
            "kernel_cpu_ms",
            "minor_faults",
            "step_peak_mib",
        ),
    )
    peak = mem["timing_process_peak_rss_mib"]
    if peak is not None:
        print(f"peak RSS of the timing process: {peak:.0f} MiB")
    print(common.ratio_line(result))


if __name__ == "__main__":
    main()
