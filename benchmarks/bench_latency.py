"""Student vs teacher inference latency of both paper presets (issue item (e)).

Every figure comes from ``study.latency.measure_latency``: eval mode, ``inference_mode``,
warm-up until stable, ``--repeats`` timed calls (default 30), CUDA synchronised, p50/p90.
Settings:

- ``gat_ppi``: the PPI GAT student and teacher, one forward over the PPI-shaped graph
  (2,372 nodes, ~33k edges); per graph.
- ``dgcnn_b1`` / ``dgcnn_b16``: the ModelNet40 DGCNN student and teacher on 1 and on 16 clouds
  of 1024 points, the kNN graphs built inside the timed call; per sample = per call / batch.

The paper's reference (DGCNN on a GTX 1080Ti): teacher 8.72 ms, student 3.31 ms per sample.

    python3 benchmarks/bench_latency.py [--quick] [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

from typing import Any

import common
import torch

from study.latency import count_parameters, measure_latency
from study.models.dgcnn import dgcnn_modelnet_student, dgcnn_modelnet_teacher
from study.models.gat import gat_ppi_student, gat_ppi_teacher

NAME = "bench_latency"
PAPER_DGCNN_MS = {"teacher": 8.72, "student": 3.31, "device": "GTX 1080Ti"}


def settings(args: Any, device: torch.device) -> list[dict[str, Any]]:
    """One entry per (setting, role): the model, its input and samples per call."""
    shape = common.PPI_SHAPE_QUICK if args.quick else common.PPI_SHAPE
    graph = common.ppi_shaped_graph(**shape, seed=args.seed).to(device)
    num_points = 64 if args.quick else 1024
    big_batch = 2 if args.quick else 16
    clouds, _ = common.point_cloud_batch(big_batch, num_points, seed=args.seed)
    clouds = clouds.to(device)
    torch.manual_seed(args.seed)
    gat = {
        "student": gat_ppi_student(shape["num_features"], shape["num_labels"]),
        "teacher": gat_ppi_teacher(shape["num_features"], shape["num_labels"]),
    }
    dgcnn = {"student": dgcnn_modelnet_student(), "teacher": dgcnn_modelnet_teacher()}
    out = []
    for role in ("student", "teacher"):
        out.append(
            {
                "setting": "gat_ppi",
                "role": role,
                "model": gat[role].to(device),
                "inputs": (graph.x, graph.edge_index),
                "samples": 1,
                "input": f"{graph.num_nodes} nodes, {graph.edge_index.size(1)} edges",
            }
        )
    for batch in (1, big_batch):
        for role in ("student", "teacher"):
            out.append(
                {
                    "setting": f"dgcnn_b{batch}",
                    "role": role,
                    "model": dgcnn[role].to(device),
                    "inputs": (clouds[:batch],),
                    "samples": batch,
                    "input": f"{batch} x {num_points} points",
                }
            )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument(
        "--max-warmup",
        type=int,
        default=None,
        help="cap on warm-up calls while waiting for stable times",
    )
    args = parser.parse_args(argv)
    device = common.setup(args)
    repeats = common.pick(args, "repeats", 3, 30)
    warmup = common.pick(args, "warmup", 1, 3)
    max_warmup = max(warmup, common.pick(args, "max_warmup", 2, 10))
    threads = torch.get_num_threads()

    records = []
    for entry in settings(args, device):
        res = measure_latency(
            entry["model"],
            entry["inputs"],
            warmup=warmup,
            repeats=repeats,
            max_warmup=max_warmup,
            threads=threads,
            device=device,
            samples_per_call=entry["samples"],
        )
        records.append(
            {
                "setting": entry["setting"],
                "role": entry["role"],
                "input": entry["input"],
                "samples_per_call": entry["samples"],
                "params": count_parameters(entry["model"]),
                "p50_ms": res.p50_ms,
                "p90_ms": res.p90_ms,
                "mean_ms": res.mean_ms,
                "std_ms": res.std_ms,
                "min_ms": res.min_ms,
                "per_sample_p50_ms": res.per_sample_p50_ms,
                "per_sample_p90_ms": res.p90_ms / entry["samples"],
                "repeats": res.repeats,
                "warmup_used": res.warmup_used,
                "device_name": res.device_name,
                "threads": res.threads,
            }
        )

    speedups = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        by_role = {r["role"]: r for r in records if r["setting"] == setting}
        speedups[setting] = by_role["teacher"]["p50_ms"] / by_role["student"]["p50_ms"]
    result = {
        "benchmark": NAME,
        "description": "inference latency, student vs teacher, via study.latency.measure_latency",
        "quick": args.quick,
        "machine": common.machine_info(device),
        "config": {
            "repeats": repeats,
            "warmup": warmup,
            "max_warmup": max_warmup,
            "threads": threads,
            "timed_call": "model(*inputs) in eval + inference_mode (DGCNN kNN included)",
        },
        "results": records,
        "teacher_over_student_p50": speedups,
        "paper": {
            "dgcnn_per_sample_ms": PAPER_DGCNN_MS,
            "teacher_over_student": PAPER_DGCNN_MS["teacher"] / PAPER_DGCNN_MS["student"],
        },
    }
    common.print_table(
        f"{NAME} ({result['machine']['device_name']}, {threads} threads)",
        records,
        (
            "setting",
            "role",
            "input",
            "p50_ms",
            "p90_ms",
            "per_sample_p50_ms",
            "params",
            "warmup_used",
        ),
    )
    print(
        "teacher / student (p50): "
        + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
        + f"; paper DGCNN {result['paper']['teacher_over_student']:.2f}x "
        f"({PAPER_DGCNN_MS['device']})"
    )
    common.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
