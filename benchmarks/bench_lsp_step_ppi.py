"""One training step of the paper's PPI GAT student, with LSP and without (issue target (a)).

Both steps are what ``study.train`` runs per batch: forward, the hard loss (BCE with logits,
121 labels), ``zero_grad``, backward, Adam step. The LSP step adds ``lambda * L_LSP`` (RBF,
lambda 100, the student's last hidden layer against the teacher's 1024-wide last hidden layer),
through ``study.train.distillation_term`` (the LSP method object's term) with the teacher's log
local structure precomputed once by ``study.train.TeacherCache``, exactly as training does.
Target: LSP step / plain step <= 1.12 (paper: 1.54), aim 1.05.

    python3 benchmarks/bench_lsp_step_ppi.py [--quick] [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import copy
import time
from typing import Any

import common
import torch
import torch.nn.functional as F

from study.distill import build_method, lsp_loss
from study.latency import count_parameters
from study.models.gat import gat_ppi_student, gat_ppi_teacher
from study.train import DistillConfig, TeacherCache, distillation_term, forward

NAME = "bench_lsp_step_ppi"
LAMBDA = 100.0
KERNEL = "rbf"
LR = 0.005  # the paper's Adam settings for PPI: lr 0.005, no weight decay
TARGET, AIM, PAPER = 1.12, 1.05, 1.54
VARIANTS = ("plain_step", "lsp_step")


def build(args: Any, device: torch.device, variants: tuple[str, ...]) -> dict[str, Any]:
    """The graph, the models and one step function per requested variant."""
    shape = common.PPI_SHAPE_QUICK if args.quick else common.PPI_SHAPE
    graph = common.ppi_shaped_graph(**shape, seed=args.seed).to(device)
    torch.manual_seed(args.seed)
    student = gat_ppi_student(shape["num_features"], shape["num_labels"]).to(device)
    method = build_method(DistillConfig(method="lsp", params={"lambda": LAMBDA, "kernel": KERNEL}))
    built: dict[str, Any] = {"graph": graph, "shape": shape, "steps": {}, "student": student}
    with torch.no_grad():
        built["student_hidden_width"] = int(forward(student, graph).hidden[-1].shape[1])

    def make_step(model: torch.nn.Module, with_lsp: bool, cache: TeacherCache | None):
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=0.0)
        model.train()

        def step() -> None:
            out = forward(model, graph)
            loss = F.binary_cross_entropy_with_logits(out.logits[graph.mask], graph.y[graph.mask])
            if with_lsp:
                assert cache is not None
                t_out, log_ls = cache.outputs([graph], device)  # a dict lookup after the first
                term = distillation_term(
                    method,
                    out,
                    t_out,
                    edge_index=graph.edge_index,
                    precomputed=log_ls,
                    adapters=None,
                    multilabel=True,
                    epoch=0,
                )
                loss = loss + LAMBDA * term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    if "plain_step" in variants:
        built["steps"]["plain_step"] = make_step(copy.deepcopy(student), False, None)
    if "lsp_step" in variants:
        teacher = gat_ppi_teacher(shape["num_features"], shape["num_labels"]).to(device)
        cache = TeacherCache(teacher, method, device)
        sync = common.sync_for(device)
        start = time.perf_counter_ns()
        t_out, log_ls = cache.outputs([graph], device)  # the one-off precompute train.py does
        sync()
        built["teacher_precompute_ms"] = (time.perf_counter_ns() - start) / 1e6
        built["teacher"], built["teacher_out"], built["teacher_log_ls"] = teacher, t_out, log_ls
        built["steps"]["lsp_step"] = make_step(copy.deepcopy(student), True, cache)
    return built


def time_lsp_term(built: dict[str, Any], device: torch.device, repeats: int) -> dict[str, float]:
    """Forward + backward of the LSP term alone, on a fixed student hidden layer."""
    graph = built["graph"]
    with torch.no_grad():
        z = forward(built["student"], graph).hidden[-1]
    z = z.detach().requires_grad_()
    log_t = built["teacher_log_ls"][0]

    def term() -> None:
        loss = lsp_loss(
            z,
            None,
            graph.edge_index,
            kernel=KERNEL,
            teacher_log_ls=log_t,
            num_nodes=graph.num_nodes,
        )
        loss.backward()
        z.grad = None

    times = common.time_interleaved(
        {"lsp_term": term}, warmup=3, repeats=repeats, sync=common.sync_for(device)
    )
    return times.summary()["lsp_term"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    device = common.setup(args)
    if args.memory_probe:
        common.memory_probe_main(
            args.memory_probe, lambda v: build(args, device, (v,))["steps"][v], device
        )
        return {}

    warmup, repeats = common.pick(args, "warmup", 1, 3), common.pick(args, "repeats", 3, 30)
    built = build(args, device, VARIANTS)
    times = common.time_interleaved(
        built["steps"], warmup=warmup, repeats=repeats, sync=common.sync_for(device)
    )
    stats = times.summary()
    stats["lsp_term_fwd_bwd"] = time_lsp_term(built, device, max(repeats, 5))
    ratio = common.ratios(times, "lsp_step", "plain_step")
    memory = common.run_memory_probes(VARIANTS, shared=args.quick)
    graph, shape = built["graph"], built["shape"]
    result = {
        "benchmark": NAME,
        "description": "PPI GAT student training step: with LSP (RBF, lambda 100, teacher "
        "log-structure precomputed) vs plain (BCE only)",
        "quick": args.quick,
        "machine": common.machine_info(device),
        "config": {
            **shape,
            "num_edges_actual": int(graph.edge_index.size(1)),
            "graph": "random undirected (uniform pairs), both directions, no self-loops",
            "student": "gat_ppi_student (5 layers, 2 heads, 68 per head)",
            "teacher": "gat_ppi_teacher (3 layers, 4,4,6 heads)",
            "student_params": count_parameters(built["student"]),
            "teacher_params": count_parameters(built["teacher"]),
            "student_hidden_width": built["student_hidden_width"],
            "teacher_hidden_width": int(built["teacher_out"].hidden[-1].shape[1]),
            "lsp": {
                "kernel": KERNEL,
                "lambda": LAMBDA,
                "direction": "student_teacher",
                "layer_map": [[-1, -1]],
                "teacher_log_ls": "precomputed once (TeacherCache)",
            },
            "optimizer": f"Adam lr {LR}, weight decay 0",
            "warmup_rounds": warmup,
            "repeats": repeats,
            "timing": "interleaved rounds (see benchmarks/common.py)",
        },
        "teacher_precompute_ms": built["teacher_precompute_ms"],
        "timings": stats,
        "ratios": ratio,
        "lsp_overhead_ms": stats["lsp_step"]["median_ms"] - stats["plain_step"]["median_ms"],
        "memory": common.step_memory(memory),
        "targets": {"step_ratio": common.target(ratio["ratio_of_medians"], TARGET, aim=AIM)},
        "paper": {"step_ratio": PAPER},
    }
    _print(result)
    common.write_json(args.out, result)
    return result


def _print(result: dict[str, Any]) -> None:
    t = result["timings"]
    mem = result["memory"]
    rows: list[dict[str, Any]] = [
        {
            "variant": name,
            **{k: t[name][k] for k in ("median_ms", "p10_ms", "p90_ms", "min_ms")},
            "cpu_median_ms": t[name]["cpu"]["median_ms"],
            "step_peak_mib": mem[name]["step_peak_mib"] if name in mem else "",
        }
        for name in (*VARIANTS, "lsp_term_fwd_bwd")
    ]
    cols = ("variant", "median_ms", "p10_ms", "p90_ms", "min_ms", "cpu_median_ms", "step_peak_mib")
    common.print_table(
        f"{NAME} ({result['machine']['device_name']}, {result['machine']['threads']} threads)",
        rows,
        cols,
    )
    print(common.ratio_line(result))


if __name__ == "__main__":
    main()
