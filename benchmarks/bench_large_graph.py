"""Graphs that do not fit full batch: peak RSS and seconds per epoch of teacher training and of
an LSP student, full batch (where it fits) against sampled mini-batches (issue 13, item 8).

The graph is random, built in O(E) memory (the SBM generator is O(N^2)): ``N`` nodes, ``N *
degree`` directed edges drawn uniformly, ``--features`` Gaussian features with a class signal,
10 classes, 10% of the nodes labelled for training, 5% validation, 5% test. Every measurement
runs in a fresh process (``--one``) that builds the graph, records its RSS, resets the peak
(``/proc/self/clear_refs``) and runs the product's own code: ``study.train.train_teacher`` for
one epoch, or the teacher's outputs as a study gets them in mini-batch mode
(``study.teacher_outputs.shared_teacher_outputs``: layer-wise inference once into files, whose
rows each step reads back; ``study/mapped.py``) then
``study.train.distill_student`` with LSP for one epoch. The teacher of the student run has
random weights: its outputs cost the same as a trained teacher's. "Beyond graph" is the peak
RSS minus the RSS once the graph exists; the peak while the task was built (its edges sorted
by target, as the loaders store them) is recorded apart. Seconds per epoch include the
validation pass (layer-wise in mini-batch mode) that every epoch runs.

    python3 benchmarks/bench_large_graph.py [--quick] [--nodes 100000,1000000] [--device cpu]
        [--batch-size 1024] [--fanout 10,5] [--full-batch-max-gib 4]

Targets: mini-batch peak RSS beyond the graph grows at most 1.5x from the smallest to the
largest size; a 1M-node, 10M-edge graph distils an LSP student under 4 GiB peak RSS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import torch

from study.data.planetoid import transductive_task
from study.models import build_model
from study.preflight import FULL_BATCH_STUDENT_BYTES_PER_EDGE, FULL_BATCH_TEACHER_BYTES_PER_EDGE
from study.sampling import pyg_available
from study.teacher_outputs import shared_teacher_outputs
from study.train import DistillConfig, TrainConfig, distill_student, train_teacher

NAME = "bench_large_graph"
CLASSES = 10
TEACHER = {"arch": "sage", "width": 64, "depth": 2}
STUDENT = {"arch": "gcn", "width": 32, "depth": 2}
LSP = {"lambda": 100.0, "kernel": "rbf"}
GROWTH_LIMIT, LSP_1M_LIMIT_GIB = 1.5, 4.0


def build_task(num_nodes: int, degree: int, features: int, seed: int) -> Any:
    """The random graph as a transductive node task, in O(N * F + E) memory."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (num_nodes,), generator=gen)
    x = torch.randn(num_nodes, features, generator=gen)
    x[torch.arange(num_nodes), y % features] += 1.0  # a class signal to learn
    edge_index = torch.randint(0, num_nodes, (2, num_nodes * degree), generator=gen)
    split = torch.rand(num_nodes, generator=gen)
    masks = (split < 0.10, (split >= 0.10) & (split < 0.15), (split >= 0.15) & (split < 0.20))
    from torch_geometric.data import Data

    data = Data(x=x, edge_index=edge_index, y=y)
    return transductive_task("random", data, *masks, CLASSES)


def graph_bytes(task: Any) -> int:
    graph = task.train[0]
    tensors = (graph.x, graph.edge_index, graph.y, *(g.mask for g in (*task.train, *task.val)))
    return int(sum(t.numel() * t.element_size() for t in (*tensors, task.test[0].mask)))


def run_one(args: Any, spec: str) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``nodes:mode:role``."""
    nodes_text, mode, role = spec.split(":")
    nodes = int(nodes_text)
    device = common.setup(args)
    task = build_task(nodes, args.degree, args.features, args.seed)
    fanout = tuple(int(k) for k in args.fanout.split(","))
    neighbours = fanout if mode == "minibatch" else None
    cfg = TrainConfig(
        epochs=1, lr=0.01, weight_decay=0.0, batch_size=args.batch_size, num_neighbors=neighbours,
        device=str(device),
    )  # fmt: skip
    io = {"in_channels": args.features, "out_channels": CLASSES}
    torch.manual_seed(args.seed)
    teacher = build_model(**TEACHER, **io)
    base_kb = common.proc_status_kb("VmRSS") or 0
    load_peak_kb = common.proc_status_kb("VmHWM") or 0  # building the task, its edge sort too
    reset = common._reset_peak_rss()
    out: dict[str, Any] = {"nodes": nodes, "edges": nodes * args.degree, "mode": mode}
    out["role"] = role
    cache: Path | None = None
    t0 = time.perf_counter()
    if role == "teacher":
        result = train_teacher(teacher, task, cfg)
        out.update(epoch_s=result.train_seconds, val_score=result.val_score)
    else:
        given = None
        if mode == "minibatch":  # as a study does: computed once into files, read by rows
            start = time.perf_counter()
            cache = Path(tempfile.mkdtemp(prefix="bench-teacher-outputs-"))
            given = shared_teacher_outputs(
                teacher, task, "bench", device=str(device), cache_dir=cache
            )
            out["teacher_outputs_s"] = time.perf_counter() - start
        student = build_model(**STUDENT, **io)
        distill = DistillConfig("lsp", LSP)
        steps = -(-nodes // args.batch_size)  # the seeds run over every node with a term on
        if mode == "minibatch" and steps > args.max_steps:
            assert given is not None
            out.update(capped_epoch(student, task, cfg, given, args.max_steps, steps))
        else:
            result = distill_student(student, teacher, task, cfg, distill, teacher_outputs=given)
            out.update(epoch_s=result.train_seconds, val_score=result.val_score)
    out["wall_s"] = time.perf_counter() - t0
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    peak_kb = common.proc_status_kb("VmHWM") or 0
    mib = 1024.0
    out.update(
        {
            "graph_mib": graph_bytes(task) / 2**20,
            "rss_with_graph_mib": base_kb / mib,
            "load_peak_mib": load_peak_kb / mib,
            "peak_rss_mib": peak_kb / mib,
            "beyond_graph_mib": (peak_kb - base_kb) / mib,
            "peak_reset": reset,
        }
    )
    return out


def capped_epoch(
    student: torch.nn.Module, task: Any, cfg: Any, outputs: Any, max_steps: int, steps: int
) -> dict[str, Any]:
    """An LSP epoch too long to run whole here: ``max_steps`` of its sampled steps (the
    product's sampler and ``study.train.sampled_step``, Adam) and its layer-wise validation
    pass, timed; seconds per epoch = mean step time x steps per epoch + the validation pass."""
    from study import allocator
    from study.distill.methods import build_method
    from study.inference import INFERENCE_CHUNK_NODES
    from study.sampling import NeighborSampler
    from study.train import evaluate, sampled_step, training_graph

    allocator.bound_freed_memory()  # as study.train.fit does in sampled mode
    graph = training_graph(task)
    sampler = NeighborSampler(graph.edge_index, graph.num_nodes, cfg.num_neighbors)
    method = build_method(DistillConfig("lsp", LSP))
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(graph.num_nodes, generator=gen)  # as study.train's sampled epoch
    device = torch.device(cfg.device)
    student.train()
    start = time.perf_counter()
    for seeds in order.split(cfg.batch_size)[:max_steps]:
        sub = sampler.sample(seeds, gen)
        hard, term = sampled_step(student, graph, sub, outputs, method, None, False, device)
        loss = hard + LSP["lambda"] * term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    per_step = (time.perf_counter() - start) / max_steps
    start = time.perf_counter()
    known = (graph.edge_index, sampler.csr)  # fit reuses the sampler's CSR the same way
    val = evaluate(
        student,
        task,
        "val",
        cfg.device,
        with_auroc=False,
        chunk_nodes=INFERENCE_CHUNK_NODES,
        known_csr=known,
    )
    eval_s = time.perf_counter() - start
    return {
        "epoch_s": per_step * steps + eval_s,
        "epoch_s_extrapolated_from_steps": max_steps,
        "steps_per_epoch": steps,
        "step_s": per_step,
        "val_pass_s": eval_s,
        "val_score": val["score"],
    }


def full_batch_fits(nodes: int, degree: int, role: str, cap_gib: float) -> bool:
    """The preflight's estimate (measured bytes per edge) against ``--full-batch-max-gib``."""
    per_edge = FULL_BATCH_TEACHER_BYTES_PER_EDGE if role == "teacher" else (
        FULL_BATCH_STUDENT_BYTES_PER_EDGE
    )  # fmt: skip
    return nodes * degree * per_edge <= cap_gib * 2**30


def _without_out(argv: list[str]) -> list[str]:
    """The command line without ``--out PATH`` (a measurement process writes no file)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            out.append(arg)
    return out


def main() -> None:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--nodes", default=None, help="comma-separated sizes (default 1e5,1e6)")
    parser.add_argument("--degree", type=int, default=10)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1024, help="seed nodes per step")
    parser.add_argument("--fanout", default="10,5", help="neighbours per layer")
    parser.add_argument(
        "--full-batch-max-gib", type=float, default=4.0,
        help="run full batch only where the preflight's estimate is at most this",
    )  # fmt: skip
    parser.add_argument(
        "--max-steps", type=int, default=150,
        help="an LSP epoch of more steps is timed on this many and extrapolated",
    )  # fmt: skip
    parser.add_argument("--one", default=None, help="(internal) one measurement: N:mode:role")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    device = common.setup(args)
    default = "2000,5000" if args.quick else "1e5,1e6"
    sizes = [int(float(n)) for n in (args.nodes or default).split(",")]
    rows = []
    for nodes in sizes:
        for role in ("teacher", "lsp_student"):
            for mode in ("full", "minibatch"):
                fits = full_batch_fits(nodes, args.degree, role, args.full_batch_max_gib)
                if mode == "full" and not fits:
                    rows.append({"nodes": nodes, "role": role, "mode": mode, "skipped": True})
                    continue
                one = f"{nodes}:{mode}:{role}"
                if args.quick:  # seconds matter more than a fresh process per tiny graph
                    row = {**run_one(args, one), "process": "one process, runs in turn"}
                else:
                    argv = [*_without_out(sys.argv[1:]), "--one", one]
                    proc = subprocess.run(
                        [sys.executable, sys.argv[0], *argv], capture_output=True, text=True
                    )
                    if proc.returncode != 0:
                        raise RuntimeError(f"{one} failed:\n{proc.stderr[-3000:]}")
                    row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "process": "fresh"}
                rows.append(row)
                print(f"  {nodes:>9,} {role:<12} {mode:<9} epoch {row['epoch_s']:.1f} s, "
                      f"peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)  # fmt: skip
    measured = [r for r in rows if not r.get("skipped")]
    mini = {
        role: sorted((r for r in measured if r["mode"] == "minibatch" and r["role"] == role),
                     key=lambda r: r["nodes"])
        for role in ("teacher", "lsp_student")
    }  # fmt: skip
    targets: dict[str, Any] = {}
    for role, rs in mini.items():
        if len(rs) >= 2:
            growth = rs[-1]["beyond_graph_mib"] / max(rs[0]["beyond_graph_mib"], 1.0)  # MiB floor
            targets[f"{role}_beyond_graph_growth"] = {
                **common.target(growth, GROWTH_LIMIT),
                "from_nodes": rs[0]["nodes"],
                "to_nodes": rs[-1]["nodes"],
            }
    at_1m = [r for r in mini["lsp_student"] if r["nodes"] == 1_000_000]
    if at_1m:
        targets["lsp_student_1m_peak_gib"] = common.target(
            at_1m[0]["peak_rss_mib"] / 1024.0, LSP_1M_LIMIT_GIB
        )
    payload = {
        "benchmark": NAME,
        "quick": bool(args.quick),
        "machine": common.machine_info(device),
        "config": {
            "nodes": sizes, "degree": args.degree, "features": args.features,
            "classes": CLASSES, "batch_size": args.batch_size, "fanout": args.fanout,
            "teacher": TEACHER, "student": STUDENT, "lsp": LSP,
            "sampler": "pyg" if pyg_available() else "plain torch (study.sampling)",
            "full_batch_max_gib": args.full_batch_max_gib,
        },
        "results": rows,
        "targets": targets,
    }  # fmt: skip
    columns = [
        "nodes", "role", "mode", "epoch_s", "peak_rss_mib", "beyond_graph_mib", "graph_mib",
        "load_peak_mib",
    ]  # fmt: skip
    common.print_table(NAME, rows, columns)
    for name, t in targets.items():
        print(f"{name}: {t['value']:.3f} (limit {t['limit']}) met={t['met']}")
    common.write_json(args.out, payload)


if __name__ == "__main__":
    main()
