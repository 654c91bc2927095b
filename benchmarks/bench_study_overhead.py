"""What Ray Tune and MLflow add to a study: the same trials through `run_study` vs a plain loop
(issue item (d); target: at most 5% on trials of about 30 s).

Both sides do the same work on the same machine, one trial at a time: load the data, train the
teacher once, then for every configuration train the student (``distill_student``), time its
latency and export it. The study side adds Ray (start-up, a teacher task, one actor per trial),
MLflow logging (per epoch and final), Tune checkpoints and the latency service (quiet windows);
the configurations are the ones the study's searcher sampled, replayed in the plain loop.
Figures: end to end, and per trial (Tune's ``time_total_s`` against the plain trial's time).

    python3 benchmarks/bench_study_overhead.py [--quick] [--threads 1] [--trials 3] [--epochs N]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import ray
import torch
import yaml

from study.config import load_study_spec, resolve_trial
from study.context import load_study_task, study_latency
from study.data.base import io_channels
from study.export import export_student
from study.models import build_model
from study.runner import run_study
from study.search import trial_params
from study.train import distill_student, seed_everything, train_teacher

NAME = "bench_study_overhead"


def study_file(folder: Path, *, trials: int, epochs: int, nodes: int, threads: int) -> Path:
    """A sequential study on a synthetic graph sized so that a trial takes the target time."""
    study = {
        "name": "overhead",
        "dataset": {
            "name": "synthetic_sbm",
            "options": {"num_nodes": nodes, "num_features": 64, "p_in": 0.02, "p_out": 0.002},
        },
        "teacher": {
            "arch": "gat",
            "width": 16,
            "depth": 2,
            "heads": 4,
            "dropout": 0.0,
            "train": {"epochs": max(2, epochs // 4), "lr": 0.01},
        },
        "student": {
            "arch": "gat",
            "width": 8,
            "depth": 2,
            "heads": 2,
            "dropout": 0.0,
            "train": {"epochs": epochs, "lr": 0.01},
        },
        "methods": ["none", "lsp"],
        "search": {"lsp.lambda": {"loguniform": [1.0, 100.0]}},
        "seeds": [0],
        "searcher": {"algorithm": "random", "num_samples": trials, "max_concurrent": 1, "seed": 0},
        "resources": {"cpu": threads, "gpu": 0},
    }
    path = folder / "overhead.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def plain_loop(path: Path, configs: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """The same work without Ray or MLflow: (total seconds, seconds per trial)."""
    start = time.perf_counter()
    spec = load_study_spec(path)
    task = load_study_task(spec, None)
    seed_everything(spec.teacher.train.seed)
    teacher = build_model(
        spec.teacher.model.arch, **spec.teacher.model.build_kwargs(), **io_channels(task)
    )
    teacher = train_teacher(teacher, task, spec.teacher.train).model
    per_trial = []
    for config in configs:
        t0 = time.perf_counter()
        plan = resolve_trial(spec, trial_params(config, spec.seeds))
        seed_everything(plan.seed)
        student = build_model(plan.student.arch, **plan.student.build_kwargs(), **io_channels(task))
        result = distill_student(student, teacher, task, plan.student_train, plan.distill)
        study_latency(result.model, task, spec, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            export_student(
                result.model, Path(tmp) / "student", metadata={"config_id": plan.config_id}
            )
        per_trial.append(time.perf_counter() - t0)
    return time.perf_counter() - start, per_trial


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="configurations (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs per trial")
    parser.add_argument("--nodes", type=int, default=None, help="nodes of the synthetic graph")
    args = parser.parse_args(argv)
    device = common.setup(args)
    threads = args.threads or 1
    torch.set_num_threads(threads)  # the plain loop runs here; Tune trials get the same count
    trials = common.pick(args, "trials", 2, 3)
    epochs = common.pick(args, "epochs", 3, 300)
    nodes = common.pick(args, "nodes", 200, 3000)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = study_file(folder, trials=trials, epochs=epochs, nodes=nodes, threads=threads)
        t0 = time.perf_counter()
        outcome = run_study(
            path, tracking_uri=f"sqlite:///{folder}/mlflow.db", storage=folder / "studies"
        )
        study_total = time.perf_counter() - t0
        ray.shutdown()
        if not outcome.complete:
            raise SystemExit("the study did not finish every trial")
        configs = [row["config"] for row in outcome.trials]
        tune_trial = [float(row["time_total_s"]) for row in outcome.trials]
        plain_total, plain_trial = plain_loop(path, configs)

    per_trial_ratio = statistics.median(tune_trial) / statistics.median(plain_trial)
    rows = [
        {
            "path": "Ray Tune + MLflow",
            "total_s": study_total,
            "median_trial_s": statistics.median(tune_trial),
        },
        {
            "path": "plain loop",
            "total_s": plain_total,
            "median_trial_s": statistics.median(plain_trial),
        },
    ]
    common.print_table(
        f"{NAME}: {trials} trials, {epochs} epochs, {nodes} nodes, {threads} thread(s)",
        rows,
        ["path", "total_s", "median_trial_s"],
    )
    print(
        f"\nper trial: {per_trial_ratio:.3f}x; end to end: {study_total / plain_total:.3f}x "
        "(Ray start-up and the teacher task included)"
    )
    payload = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "quick": bool(args.quick),
        "machine": common.machine_info(device),
        "config": {
            "trials": trials,
            "epochs": epochs,
            "nodes": nodes,
            "threads": threads,
            "max_concurrent": 1,
        },
        "study": {"total_s": study_total, "trial_s": tune_trial},
        "plain": {"total_s": plain_total, "trial_s": plain_trial},
        "ratios": {"per_trial": per_trial_ratio, "end_to_end": study_total / plain_total},
        "targets": {"per_trial_overhead": common.target(per_trial_ratio, 1.05)},
    }
    common.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
