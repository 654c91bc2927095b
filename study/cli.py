"""The distill-study command line.

One run without Ray: `teacher` trains and saves a teacher, `distill` distils one student.
Studies on Ray: `validate`, `run`, `resume`, `list`; results: `report`, `select`; deployment:
`promote`, `pipeline`. Bad input is one
line on stderr and exit code 2, before anything starts. Help texts are plain text (no markup).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.allocator import retain_freed_memory
from study.errors import UserInputError

EXIT_USAGE = 2


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset", required=True, help="dataset name (cora, ppi, modelnet40, synthetic_sbm, ...)"
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="datasets folder (default: $GDS_DATA_ROOT, else the user cache)",
    )
    p.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a loader option, e.g. num_points=1024 (repeatable)",
    )


def _add_model_args(
    p: argparse.ArgumentParser, who: str, width: int, depth: int, heads: int
) -> None:
    g = p.add_argument_group(f"{who} model")
    g.add_argument(
        "--arch",
        default="gat",
        help="gat, gcn, sage, mlp, rgcn (typed graphs) for node tasks, or dgcnn (point clouds)",
    )
    g.add_argument(
        "--preset",
        default=None,
        help="a paper preset: ppi_teacher, ppi_student, modelnet_teacher, modelnet_student",
    )
    g.add_argument(
        "--width",
        type=int,
        default=width,
        help="per-head width (gat) or first EdgeConv width (dgcnn)",
    )
    g.add_argument("--depth", type=int, default=depth, help="number of message-passing layers")
    g.add_argument("--heads", type=int, default=heads, help="attention heads (gat)")
    g.add_argument("--k", type=int, default=20, help="kNN size (dgcnn)")
    g.add_argument(
        "--emb-dims", type=int, default=None, help="DGCNN embedding width (default: 16 x width)"
    )
    g.add_argument("--dropout", type=float, default=0.5, help="dropout rate (default: 0.5)")


def _add_train_args(p: argparse.ArgumentParser, epochs: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})"
    )
    g.add_argument("--lr", type=float, default=0.005, help="learning rate (default: 0.005)")
    g.add_argument(
        "--weight-decay", type=float, default=5e-4, help="L2 weight decay (default: 5e-4)"
    )
    g.add_argument(
        "--optimizer", choices=["adam", "sgd"], default="adam", help="adam or sgd (default: adam)"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="graphs (PPI) or clouds per batch, seed nodes with --num-neighbors (default: 32)",
    )
    g.add_argument(
        "--num-neighbors",
        default=None,
        help="node tasks: train on sampled mini-batches with this fan-out per layer, "
        "comma-separated (e.g. 10,5); --batch-size then counts seed nodes (default: full batch)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights and training (default: 0)"
    )
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="distill-study",
        description="Knowledge-distillation studies for graph neural networks: train a teacher, "
        "search students and distillation methods on Ray Tune, track every trial in MLflow, "
        "then report and select.",
        epilog="A study: distill-study validate FILE, then run FILE, then report STUDY --out DIR "
        "and select STUDY --max-latency-ms MS --out DIR. Run distill-study COMMAND --help for "
        "a command's options.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands below"
    )

    t = sub.add_parser("teacher", help="train a teacher and save its checkpoint (no Ray)")
    _add_data_args(t)
    _add_model_args(t, "teacher", width=8, depth=2, heads=8)
    _add_train_args(t, epochs=200)
    t.add_argument(
        "--out", required=True, help="checkpoint path to write (never overwritten without --force)"
    )
    t.add_argument("--force", action="store_true", help="overwrite an existing --out")

    d = sub.add_parser("distill", help="distil one student from a saved teacher (no Ray)")
    _add_data_args(d)
    d.add_argument(
        "--teacher", required=True, help="a checkpoint written by `distill-study teacher`"
    )
    _add_model_args(d, "student", width=4, depth=2, heads=2)
    _add_train_args(d, epochs=200)
    m = d.add_argument_group("distillation")
    m.add_argument(
        "--method", default="lsp", help="none, kd, fitnet, at, lsp, or an installed plugin's"
    )
    m.add_argument(
        "--lambda",
        dest="lambda_",
        type=float,
        default=None,
        help="weight of the distillation term (default: lsp 100, fitnet 1, at 1000)",
    )
    m.add_argument(
        "--kernel",
        default="rbf",
        help="LSP kernel: linear, poly, rbf, l2, l1_official, or an installed plugin's",
    )
    m.add_argument("--sigma", type=float, default=1.0, help="rbf bandwidth")
    m.add_argument("--degree", type=float, default=2.0, help="poly degree")
    m.add_argument("--c", type=float, default=0.0, help="poly offset")
    m.add_argument(
        "--direction",
        default="student_teacher",
        help="KL direction: student_teacher (paper) or teacher_student (official code)",
    )
    m.add_argument(
        "--lsp-until-epoch",
        type=int,
        default=None,
        help="apply LSP only before this epoch (official code: 30)",
    )
    m.add_argument("--temperature", type=float, default=4.0, help="KD temperature")
    m.add_argument("--alpha", type=float, default=0.9, help="KD weight of the soft loss")
    m.add_argument("--at-p", type=float, default=1.0, help="AT exponent p")

    r = sub.add_parser("run", help="run a study from a search-space file on Ray Tune")
    r.add_argument("file", help="the study file, e.g. search_spaces/quickstart.yaml")
    r.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
    r.add_argument(
        "--storage", default=None, help="folder of study folders (default: ~/ray_results)"
    )
    r.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a new local Ray on 127.0.0.1 only)",
    )
    r.add_argument(
        "--data-root",
        default=None,
        help="datasets folder (default: $GDS_DATA_ROOT, else the user cache)",
    )
    r.add_argument(
        "--smoke",
        action="store_true",
        help="a seconds-long version: 2 epochs, 2 configurations, 1 seed",
    )

    v = sub.add_parser(
        "validate",
        help="check a study file completely (its keys, then its data and models) and count its "
        "trials; starts nothing",
    )
    v.add_argument("file", help="the study file, e.g. search_spaces/quickstart.yaml")
    v.add_argument(
        "--keys-only",
        action="store_true",
        help="check the file's keys and values only: load no data, import no user module",
    )
    v.add_argument(
        "--data-root",
        default=None,
        help="datasets folder (default: $GDS_DATA_ROOT, else the user cache)",
    )

    s = sub.add_parser("resume", help="continue an interrupted study")
    s.add_argument("study", help="the study's name (the name key of its file)")
    s.add_argument(
        "--storage",
        default=None,
        help="the folder the study was run with (default: ~/ray_results)",
    )
    s.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow URI the study was run with (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///<cwd>/mlflow.db)",
    )
    s.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a new local Ray on 127.0.0.1 only)",
    )

    ls = sub.add_parser("list", help="list studies under a storage folder and their progress")
    ls.add_argument(
        "--storage", default=None, help="folder of study folders (default: ~/ray_results)"
    )
    ls.add_argument("--json", action="store_true", help="print the list as JSON")

    rep = sub.add_parser("report", help="write ablation tables and Pareto plots of a study")
    rep.add_argument("study", help="the study's name (its MLflow experiment)")
    rep.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
    rep.add_argument(
        "--out", required=True, help="report folder (refused if it exists, unless --overwrite)"
    )
    rep.add_argument(
        "--overwrite", action="store_true", help="replace the report folder if it exists"
    )

    sel = sub.add_parser(
        "select",
        help="export and register the best configuration within a latency budget",
    )
    sel.add_argument("study", help="the study's name (its MLflow experiment)")
    sel.add_argument(
        "--max-latency-ms",
        type=float,
        required=True,
        help="budget on the configuration's mean latency p50 (ms)",
    )
    sel.add_argument(
        "--latency-metric",
        default=None,
        help="the latency the budget applies to, instead of --runtime's p50: latency_ms_p90, "
        "latency_onnx_ms_p50/_p90, or serving latency with the neighbourhood fetch, "
        "serve_b1_ms_p50 / serve_b256_ms_p50 (and _p90)",
    )
    sel.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
    sel.add_argument(
        "--out", required=True, help="export folder to create (refused unless missing or empty)"
    )
    sel.add_argument(
        "--model-name", default=None, help="registered model name (default: <study>-student)"
    )
    _add_runtime_arg(sel)
    sel.add_argument(
        "--promote",
        action="store_true",
        help="then promote the new version (the challenger) to champion if it wins (see promote)",
    )
    sel.add_argument(
        "--data-root",
        default=None,
        help="datasets folder for --promote (default: $GDS_DATA_ROOT, else the user cache)",
    )

    pro = sub.add_parser(
        "promote",
        help="move the champion alias to the challenger if it beats the champion on the "
        "study's validation data within the latency budget",
    )
    pro.add_argument(
        "study", help="the study whose validation data decides (its MLflow experiment)"
    )
    pro.add_argument(
        "--model-name", default=None, help="registered model name (default: <study>-student)"
    )
    pro.add_argument(
        "--max-latency-ms",
        type=float,
        default=None,
        help="budget on the challenger's latency p50 (default: the one it was selected under)",
    )
    pro.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default=None,
        help="time under PyTorch or ONNX Runtime (default: the runtime it was selected under)",
    )
    _add_tracking_arg(pro)
    pro.add_argument(
        "--data-root",
        default=None,
        help="datasets folder (default: $GDS_DATA_ROOT, else the user cache)",
    )

    pipe = sub.add_parser(
        "pipeline",
        help="one round of the production loop: teacher (train or reuse), study, select, "
        "register, promote",
    )
    pipe.add_argument("file", help="the study file; each round runs it as <name>-r<N>")
    pipe.add_argument(
        "--max-latency-ms", type=float, required=True, help="the latency budget (ms, p50)"
    )
    _add_tracking_arg(pipe)
    pipe.add_argument(
        "--storage", default=None, help="folder of study folders (default: ~/ray_results)"
    )
    pipe.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else a new local Ray on 127.0.0.1 only)",
    )
    pipe.add_argument(
        "--data-root",
        default=None,
        help="datasets folder (default: $GDS_DATA_ROOT, else the user cache)",
    )
    pipe.add_argument(
        "--model-name", default=None, help="registered model name (default: <study>-student)"
    )
    pipe.add_argument(
        "--out",
        default="exports",
        help="folder of the rounds' exports; a round's is OUT/<name>-r<N> (default: exports)",
    )
    _add_runtime_arg(pipe)
    return parser


def _add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )


def _add_runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx"],
        default="torch",
        help="whose latency the budget holds: PyTorch (latency_ms_p50) or ONNX Runtime on CPU "
        "(latency_onnx_ms_p50) (default: torch)",
    )


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserInputError(f"--data-option: expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = _parse_scalar(value)
    return out


def _parse_scalar(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if args.preset:
        return {"arch": args.arch, "preset": args.preset}
    if args.arch == "dgcnn":
        emb = args.emb_dims or 16 * args.width
        return {
            "arch": "dgcnn",
            "width": args.width,
            "depth": args.depth,
            "k": args.k,
            "emb_dims": emb,
            "mlp": [max(emb // 4, 16)],
            "dropout": args.dropout,
        }
    kwargs = {"arch": args.arch, "width": args.width, "depth": args.depth, "dropout": args.dropout}
    if args.arch == "gat":
        kwargs["heads"] = args.heads  # only GAT has attention heads
    return kwargs


def check_arch(flag: str, arch: str, task_kind: str, dataset: str) -> None:
    """Refuse an architecture that cannot run on the dataset's kind (graph nodes, point clouds)."""
    from study.catalogs import MODELS

    valid = sorted(e.name for e in MODELS if e.info.get("kind") == task_kind)
    if arch not in valid:
        raise UserInputError(
            f"{flag}: architecture {arch!r} cannot run on dataset {dataset!r} "
            f"(valid: {', '.join(valid)})"
        )


def _train_config(args: argparse.Namespace):  # noqa: ANN202 - TrainConfig imported lazily
    from study.train import TrainConfig

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserInputError(
                f"--{name.replace('_', '-')}: expected a positive integer, "
                f"got {getattr(args, name)}"
            )
    return TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        num_neighbors=_fanouts(args.num_neighbors),
    )


def _fanouts(text: str | None) -> tuple[int, ...] | None:
    """``--num-neighbors 10,5`` as ``(10, 5)``; ``None`` when not given (full batch)."""
    if text is None:
        return None
    try:
        fanouts = tuple(int(k) for k in text.split(","))
    except ValueError:
        fanouts = ()
    if not fanouts or min(fanouts) < 1:
        raise UserInputError(
            f"--num-neighbors: expected positive integers separated by commas, one per layer "
            f"(e.g. 10,5), got {text!r}"
        )
    return fanouts


def _check_fanouts_flag(cfg: Any, model: Any, task: Any, method: str = "none") -> None:
    """``--num-neighbors`` fits: a node task, one fan-out per layer, a method that samples."""
    if cfg.num_neighbors is None:
        return
    from study.data.base import NodeTask, is_typed

    given = f"--num-neighbors {','.join(map(str, cfg.num_neighbors))}"
    if not isinstance(task, NodeTask):
        raise UserInputError(f"{given}: sampled mini-batches apply to node tasks only")
    if is_typed(task.train[0]):  # as the study's pre-flight (check_typed) refuses it
        raise UserInputError(
            f"{given}: sampled mini-batches do not carry edge types yet; a heterogeneous "
            "dataset trains full batch"
        )
    if method == "edge_attention":
        raise UserInputError(f"{given}: method edge_attention trains full batch only")
    depth = getattr(model, "num_layers", None)
    if depth is not None and len(cfg.num_neighbors) != depth:
        raise UserInputError(
            f"{given}: expected one fan-out per layer of the model ({depth} layers), got "
            f"{len(cfg.num_neighbors)}"
        )


def _print_metrics(metrics: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
        return
    for key, value in metrics.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")


def cmd_teacher(args: argparse.Namespace) -> int:
    from study.data import load_task
    from study.data.base import io_channels
    from study.latency import count_parameters
    from study.models import build_model
    from study.teachers import save_checkpoint
    from study.train import seed_everything, train_teacher

    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserInputError(f"--out: {out} already exists (pass --force to overwrite it)")
    cfg = _train_config(args)
    task = load_task(args.dataset, root=args.data_root, **_options(args.data_option))
    check_arch("--arch", args.arch, task.kind, args.dataset)
    seed_everything(cfg.seed)  # --seed fixes the initial weights too, not only the training
    model = build_model(**_model_kwargs(args), **io_channels(task))
    _check_fanouts_flag(cfg, model, task)
    result = train_teacher(model, task, cfg, progress=not args.no_progress)
    metrics = {
        "val_score": result.val_score,
        "test_score": result.test_score,
        "num_params": count_parameters(model),
        "train_seconds": result.train_seconds,
        **{f"test_{k}": v for k, v in result.test_metrics.items() if k != "score"},
    }
    save_checkpoint(result.model, out, dataset=args.dataset, metrics=metrics)
    _print_metrics({**metrics, "checkpoint": str(out)}, args.json)
    return 0


def distill_config_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The :class:`DistillConfig` the ``distill`` flags describe, checked.

    Only the parameters the chosen method takes go in (for LSP also its kernel's); ``--lambda``
    left out, like ``--lsp-until-epoch``, takes the catalog's default (lsp 100, fitnet 1, at 1000).
    """
    from study.catalogs import KERNELS, METHODS, takes_kernel
    from study.distill import build_method
    from study.train import DistillConfig

    flags = {
        "lambda": args.lambda_,
        "kernel": args.kernel,
        "direction": args.direction,
        "lsp_until_epoch": args.lsp_until_epoch,
        "temperature": args.temperature,
        "alpha": args.alpha,
        "p": args.at_p,
        "sigma": args.sigma,
        "degree": args.degree,
        "c": args.c,
    }
    entry = METHODS.get(args.method)
    takes = set(entry.param_names())
    if takes_kernel(entry):
        takes |= set(KERNELS.get(args.kernel).param_names())
    params = {k: v for k, v in flags.items() if k in takes and v is not None}
    cfg = DistillConfig(method=args.method, params=params)
    build_method(cfg)  # a bad name or value fails here, before any data loads
    return cfg


def cmd_distill(args: argparse.Namespace) -> int:
    from study.data import load_task
    from study.data.base import io_channels
    from study.latency import count_parameters
    from study.models import build_model
    from study.teachers import load_teacher
    from study.train import distill_student, seed_everything

    distill = distill_config_from_args(args)
    cfg = _train_config(args)
    task = load_task(args.dataset, root=args.data_root, **_options(args.data_option))
    check_arch("--arch", args.arch, task.kind, args.dataset)
    teacher, meta = load_teacher(args.teacher, **io_channels(task), dataset=args.dataset)
    check_arch(f"--teacher {args.teacher}", meta["arch"], task.kind, args.dataset)
    seed_everything(cfg.seed)  # --seed fixes the initial weights too, not only the training
    student = build_model(**_model_kwargs(args), **io_channels(task))
    _check_fanouts_flag(cfg, student, task, distill.method)
    result = distill_student(student, teacher, task, cfg, distill, progress=not args.no_progress)
    metrics = {
        "method": distill.method,
        "val_score": result.val_score,
        "test_score": result.test_score,
        "teacher_test_score": float(meta.get("metrics", {}).get("test_score", float("nan"))),
        "num_params": count_parameters(student),
        "train_seconds": result.train_seconds,
        "best_epoch": result.best_epoch,
        # The method's own loss term in the last epoch (unweighted; 0 for none).
        "distill_loss": result.history[-1]["distill_loss"] if result.history else 0.0,
        **{f"test_{k}": v for k, v in result.test_metrics.items() if k != "score"},
    }
    _print_metrics(metrics, args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from study.runner import mlflow_ui_hint, run_study

    outcome = run_study(
        args.file,
        tracking_uri=args.tracking_uri,
        storage=args.storage,
        address=args.address,
        data_root=args.data_root,
        smoke=args.smoke,
    )
    summary = _print_outcome(outcome)
    print(f"\nMLflow UI: {mlflow_ui_hint(outcome.tracking_uri)}")
    for line in next_steps(outcome.name, outcome.tracking_uri, summary):
        print(line)
    return 0 if outcome.complete else 1


def suggested_budget_ms(summary: Any) -> float | None:
    """A latency budget for ``select``: the best configuration's (on mean validation score)
    mean latency p50, rounded up to 0.1 ms, so that it is the one ``select`` would choose."""
    import math

    if summary is None or summary.empty:
        return None
    needed = {"val_score_mean", "latency_ms_p50_mean"}
    if not needed <= set(summary.columns):
        return None
    ranked = summary.dropna(subset=list(needed)).sort_values("val_score_mean", ascending=False)
    if ranked.empty:
        return None
    return math.ceil(float(ranked["latency_ms_p50_mean"].iloc[0]) * 10) / 10


def next_steps(name: str, tracking_uri: str, summary: Any = None) -> list[str]:
    """The commands that come after ``run``: the report, and ``select`` with a latency budget."""
    import shlex

    uri = shlex.quote(tracking_uri)
    budget = suggested_budget_ms(summary)
    shown = f"{budget:g}" if budget is not None else "MS"
    lines = [
        "Next:",
        f"  distill-study report {name} --tracking-uri {uri} --out reports/{name}",
        f"  distill-study select {name} --tracking-uri {uri} --max-latency-ms {shown} "
        f"--out exports/{name}",
    ]
    if budget is not None:
        lines.append(
            f"  (select exports the best configuration on validation score within the budget; "
            f"{shown} ms is the latency of the best one above, lower it to trade accuracy for "
            f"speed)"
        )
    return lines


def _print_outcome(outcome: Any) -> Any:
    """How many trials finished, and the five best configurations as the analysis sees them."""
    from analysis.ablation import config_summary
    from analysis.runs import load_runs

    finished = sum(t.get("test_score") is not None for t in outcome.trials)
    print(
        f"\nStudy {outcome.name!r}: {finished}/{len(outcome.trials)} trials finished, "
        f"{outcome.stopped_early} stopped early by the scheduler (no final scores; off the "
        "fronts), "
        f"{len(outcome.failed)} failed (training diverged; left out of tables and fronts), "
        f"{outcome.errors} errored"
    )
    if not finished:
        return None
    summary = config_summary(load_runs(outcome.name, tracking_uri=outcome.tracking_uri))
    columns = [
        "config_id",
        "method",
        "student_arch",
        "n",
        "val_score_mean",
        "test_score_mean",
        "latency_ms_p50_mean",
        "num_params_mean",
    ]
    best = summary.sort_values("val_score_mean", ascending=False).head(5)
    best = best[[c for c in columns if c in best.columns]].rename(columns={"n": "seeds"})
    best = best.rename(columns=lambda c: c.removesuffix("_mean"))
    if "num_params" in best.columns:
        best["num_params"] = best["num_params"].map(lambda v: f"{v:,.0f}")
    print("Best configurations (mean over seeds, ranked by validation score):")
    print(best.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return summary


def cmd_validate(args: argparse.Namespace) -> int:
    from study.config import load_study_spec

    spec = load_study_spec(args.file)
    checked = "keys"
    if not args.keys_only:
        from study.preflight import load_and_check

        task = load_and_check(spec, args.data_root)
        checked = f"keys, data ({task.num_classes} classes, metric {task.metric}) and models"
    print(
        f"{args.file}: ok ({checked}): study {spec.name!r}, {spec.num_trials} trials on "
        f"{spec.dataset.label}"
    )
    warning = spec.searcher.generations_warning()
    if warning:  # valid, but not what an NSGA-II study is for: said before it runs
        print(f"[gds] warning: {warning}", file=sys.stderr)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from study.runner import mlflow_ui_hint, resume_study

    outcome = resume_study(
        args.study, storage=args.storage, tracking_uri=args.tracking_uri, address=args.address
    )
    _print_outcome(outcome)
    print(f"\nMLflow UI: {mlflow_ui_hint(outcome.tracking_uri)}")
    return 0 if outcome.complete else 1


def cmd_list(args: argparse.Namespace) -> int:
    from study.runner import list_studies, storage_root

    studies = list_studies(args.storage)
    if args.json:
        print(json.dumps(studies))
        return 0
    if not studies:
        print(f"no studies under {storage_root(args.storage)}")
        return 0
    print(
        f"{'study':<28} {'status':<10} {'finished':>8} {'running':>8} {'failed':>7} {'planned':>8}"
    )
    for s in studies:
        print(
            f"{s['study']:<28} {s['status']:<10} {s['finished']:>8} {s['running']:>8} "
            f"{s['failed']:>7} {s['planned']:>8}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    path = write_report(
        args.study, args.out, tracking_uri=args.tracking_uri, overwrite=args.overwrite
    )
    print(f"report written to {path}/README.md")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from study.select import NoConfigWithinBudget, describe_selection, select_and_export

    try:
        result = select_and_export(
            args.study,
            args.max_latency_ms,
            args.out,
            tracking_uri=args.tracking_uri,
            model_name=args.model_name,
            runtime=args.runtime,
            latency_metric=args.latency_metric,
        )
    except NoConfigWithinBudget as exc:
        print(f"distill-study select: {exc}", file=sys.stderr)
        return 1
    print(describe_selection(result))
    if args.promote:
        _promote(args, result.model_name)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    _promote(args, args.model_name)
    return 0


def _promote(args: argparse.Namespace, model_name: str | None) -> None:
    """``promote`` (its own command, or ``select --promote``) and what it decided."""
    from study.promote import describe_promotion, promote

    decision = promote(
        args.study,
        model_name=model_name,
        max_latency_ms=args.max_latency_ms,
        runtime=args.runtime,
        tracking_uri=args.tracking_uri,
        data_root=args.data_root,
    )
    print(describe_promotion(decision))


def cmd_pipeline(args: argparse.Namespace) -> int:
    from study.pipeline import describe_pipeline, run_pipeline
    from study.select import NoConfigWithinBudget

    try:
        result = run_pipeline(
            args.file,
            args.max_latency_ms,
            tracking_uri=args.tracking_uri,
            storage=args.storage,
            address=args.address,
            data_root=args.data_root,
            model_name=args.model_name,
            out=args.out,
            runtime=args.runtime,
        )
    except NoConfigWithinBudget as exc:
        print(f"distill-study pipeline: {exc}", file=sys.stderr)
        return 1
    print(describe_pipeline(result))
    return 0


COMMANDS = {
    "teacher": cmd_teacher,
    "distill": cmd_distill,
    "run": cmd_run,
    "validate": cmd_validate,
    "resume": cmd_resume,
    "list": cmd_list,
    "report": cmd_report,
    "select": cmd_select,
    "promote": cmd_promote,
    "pipeline": cmd_pipeline,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``distill-study``; returns the exit code."""
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # training steps reuse their memory instead of faulting it in anew
    try:
        return COMMANDS[args.command](args)
    except UserInputError as exc:
        print(f"distill-study {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("distill-study: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
