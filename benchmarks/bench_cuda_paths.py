"""A trial's own code on a device, without Ray or MLflow: teacher training, full-batch and
mini-batch distillation, evaluation, whole-graph and serving latency (for a GPU machine that has
torch and PyG but no Ray or MLflow, such as the H200 lent to some sessions).

On a random graph (``bench_large_graph.build_task``: ``--nodes`` nodes, average degree 10, 100
features, 10 classes), through the product's functions: ``study.train.train_teacher`` (SAGE,
64 wide), ``study.train.distill_student`` with KD and LSP (GCN student, 32 wide) full batch and
with sampled mini-batches (``study.train.teacher_outputs`` once, then the sampler), the
validation score evaluated on the device and again on CPU (they must agree), latency by
``study.latency.measure_until_stable`` (CUDA synchronised after every call) for the GCN and an
MLP student on the device and on one CPU thread, and ``study.serving_latency`` for 1 and 256
target nodes. Peak device memory per phase is ``torch.cuda.max_memory_allocated``. Then the
typed and timed graphs: ``synthetic_hetero`` (RGCN teacher; RGCN student with per-relation LSP,
MLP student with KD on the target type) and ``synthetic_temporal`` (GCN teacher on the train
snapshot; GCN student with LSP, full batch and sampled), each student's validation score on the
device against CPU.

    python3 benchmarks/bench_cuda_paths.py [--quick] [--device cuda] [--nodes 100000]
        [--epochs 5]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import common
import torch
from bench_large_graph import CLASSES, LSP, STUDENT, TEACHER, build_task

from study.data.base import io_channels
from study.data.registry import load_task
from study.latency import measure_until_stable
from study.models import build_model
from study.serving_latency import serving_latency
from study.train import (
    DistillConfig,
    TrainConfig,
    distill_student,
    evaluate,
    teacher_outputs,
    train_teacher,
)

NAME = "bench_cuda_paths"
FANOUT, BATCH = (10, 5), 1024


def _phase(device: torch.device, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s figures, its wall seconds and (on CUDA) its peak allocated memory."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["wall_s"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=None, help="nodes (default 100000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training phase")
    args = parser.parse_args(argv)
    device = common.setup(args)
    nodes = common.pick(args, "nodes", 2000, 100_000)
    epochs = common.pick(args, "epochs", 2, 5)
    task = build_task(nodes, 10, 100, args.seed)
    io = {"in_channels": 100, "out_channels": CLASSES}
    full = TrainConfig(epochs=epochs, lr=0.01, weight_decay=0.0, device=str(device))
    sampled = TrainConfig(
        epochs=1, lr=0.01, weight_decay=0.0, batch_size=BATCH, num_neighbors=FANOUT,
        device=str(device),
    )  # fmt: skip
    torch.manual_seed(args.seed)
    teacher = build_model(**TEACHER, **io)
    rows: list[dict[str, Any]] = []

    def teach() -> dict[str, Any]:
        res = train_teacher(teacher, task, full)
        return {"epoch_s": res.train_seconds / epochs, "val_score": res.val_score}

    rows.append({"phase": "teacher full batch", **_phase(device, teach)})
    students: dict[str, torch.nn.Module] = {}
    for method, params in (("kd", {}), ("lsp", LSP)):
        for mode, cfg in (("full batch", full), ("mini-batch", sampled)):

            def distil(
                method: str = method, params: Any = params, cfg: Any = cfg, mode: str = mode
            ) -> Any:
                given = teacher_outputs(teacher, task, str(device)) if cfg.batch_size else None
                student = build_model(**STUDENT, **io)
                res = distill_student(
                    student, teacher, task, cfg, DistillConfig(method, params),
                    teacher_outputs=given,
                )  # fmt: skip
                students[f"{method} {mode}"] = res.model
                return {"epoch_s": res.train_seconds / cfg.epochs, "val_score": res.val_score}

            rows.append({"phase": f"{method} student {mode}", **_phase(device, distil)})
    trained = students["lsp full batch"]
    on_device = evaluate(trained, task, "val", str(device), with_auroc=False)["score"]
    on_cpu = evaluate(trained.cpu(), task, "val", "cpu", with_auroc=False)["score"]
    agree = abs(on_device - on_cpu) < 1e-6
    latency: list[dict[str, Any]] = []
    graph = task.test[0]
    for arch in ("gcn", "mlp"):
        model = build_model(arch, width=32, depth=2, **io)
        for where, threads in ((str(device), None), ("cpu", 1)):
            model = model.to(where)
            lat = measure_until_stable(
                model, (graph.x.to(where), graph.edge_index.to(where)), tolerance=0.03,
                max_repeats=300, max_seconds=30, repeats=30, warmup=5, threads=threads,
                device=where,
            )  # fmt: skip
            serve = serving_latency(model, task, threads=threads, device=where)
            latency.append(
                {
                    "student": f"{arch} w32",
                    "device": where,
                    "p50_ms": lat.p50_ms,
                    "ci_rel": lat.p50_ci_rel,
                    "stable": lat.stable,
                    "serve_b1_ms": serve[1].p50_ms,
                    "serve_b256_ms": serve[256].p50_ms,
                }
            )
    kinds = kinds_on_device(device, epochs)
    common.print_table(
        f"{NAME}: {nodes} nodes, {nodes * 10} edges, {device}", rows,
        ["phase", "epoch_s", "val_score", "wall_s", "peak_device_mib"],
    )  # fmt: skip
    common.print_table(
        f"{NAME}: latency (whole graph; serving 1 and 256 targets with their fetch)", latency,
        ["student", "device", "p50_ms", "ci_rel", "stable", "serve_b1_ms", "serve_b256_ms"],
    )  # fmt: skip
    common.print_table(
        f"{NAME}: heterogeneous and temporal graphs on {device}", kinds,
        ["dataset", "student", "method", "mode", "val_score", "val_score_cpu", "epoch_s"],
    )  # fmt: skip
    print(f"\nvalidation score on {device} {on_device:.4f}, on cpu {on_cpu:.4f}: agree={agree}")
    payload = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "quick": bool(args.quick),
        "machine": common.machine_info(device),
        "config": {"nodes": nodes, "epochs": epochs, "fanout": FANOUT, "batch_size": BATCH},
        "training": rows,
        "latency": latency,
        "val_score_device_vs_cpu": {"device": on_device, "cpu": on_cpu, "agree": agree},
        "typed_and_temporal": kinds,
    }
    common.write_json(args.out, payload)
    return payload


#: Per dataset: the teacher, then (student, method, LSP/KD params, sampled?) trained from it.
KINDS: dict[str, tuple[dict[str, Any], list[tuple[dict[str, Any], str, dict[str, Any], bool]]]] = {
    "synthetic_hetero": (
        {"arch": "rgcn", "width": 64, "depth": 2},
        [
            ({"arch": "rgcn", "width": 16, "depth": 2}, "lsp", LSP, False),
            ({"arch": "mlp", "width": 32, "depth": 2}, "kd", {}, False),
        ],
    ),
    "synthetic_temporal": (
        {"arch": "gcn", "width": 64, "depth": 2},
        [
            ({"arch": "gcn", "width": 16, "depth": 2}, "lsp", LSP, False),
            ({"arch": "gcn", "width": 16, "depth": 2}, "lsp", LSP, True),
        ],
    ),
}


def kinds_on_device(device: torch.device, epochs: int) -> list[dict[str, Any]]:
    """Teacher and students of :data:`KINDS` trained on ``device``; each student's validation
    score there and on CPU (they must agree)."""
    rows = []
    for dataset, (teacher_spec, students) in KINDS.items():
        task = load_task(dataset)
        io = io_channels(task)
        full = TrainConfig(epochs=epochs, lr=0.01, weight_decay=0.0, device=str(device))
        sampled = TrainConfig(
            epochs=epochs, lr=0.01, weight_decay=0.0, batch_size=64, num_neighbors=(5, 5),
            device=str(device),
        )  # fmt: skip
        torch.manual_seed(0)
        teacher = train_teacher(build_model(**teacher_spec, **io), task, full).model
        for spec, method, params, is_sampled in students:
            cfg = sampled if is_sampled else full
            given = teacher_outputs(teacher, task, str(device)) if is_sampled else None
            res = distill_student(
                build_model(**spec, **io), teacher, task, cfg, DistillConfig(method, params),
                teacher_outputs=given,
            )  # fmt: skip
            cpu = evaluate(res.model.cpu(), task, "val", "cpu", with_auroc=False)["score"]
            rows.append(
                {
                    "dataset": dataset,
                    "student": f"{spec['arch']} w{spec['width']}",
                    "method": method,
                    "mode": "mini-batch" if is_sampled else "full batch",
                    "val_score": res.val_score,
                    "val_score_cpu": cpu,
                    "epoch_s": res.train_seconds / epochs,
                }
            )
    return rows


if __name__ == "__main__":
    main()
