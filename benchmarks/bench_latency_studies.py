"""Do two separate studies agree on the latency of the same students? (issue 12, item 3; target:
within 10% on this 2-core machine.)

The same study file (a grid of student architectures and widths, trials two at a time so that
one trains while another is timed) runs twice in one MLflow store (the teacher trains once), and
the figure each study logged per architecture signature is compared: the spread is
``|a - b| / min(a, b)``. Then twice more with ``latency.quiet: false`` (the figure timed while
the other trial trains, as every trial did before the quiet window), to show what quiet buys.

    python3 benchmarks/bench_latency_studies.py [--quick] [--epochs N]

Needs ``GDS_DATA_ROOT`` for Cora (``--quick``: a synthetic graph instead).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import common
import ray
import yaml
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.config import LatencySpec
from study.runner import run_study

NAME = "bench_latency_studies"
# The study defaults, so the JSON says what was run.
LATENCY_WINDOWS, LATENCY_WINDOW_GAP = LatencySpec().windows, LatencySpec().window_gap


def study_file(folder: Path, name: str, *, quick: bool, epochs: int, quiet: bool) -> Path:
    """Four student architectures (GAT or MLP, width 4 or 16), no distillation, 2 at a time."""
    dataset: dict[str, Any] = (
        {"name": "synthetic_sbm", "options": {"num_nodes": 300, "num_features": 16}}
        if quick
        else {"name": "cora"}
    )
    study = {
        "name": name,
        "dataset": dataset,
        "teacher": {
            "arch": "gat",
            "width": 8,
            "depth": 2,
            "heads": 8,
            "dropout": 0.6,
            "train": {"epochs": 2 if quick else 100, "lr": 0.005},
        },
        "student": {
            "arch": "gat",
            "width": 4,
            "depth": 2,
            "heads": 2,
            "dropout": 0.5,
            "train": {"epochs": epochs, "lr": 0.01},
        },
        "methods": ["none"],
        "search": {
            "student.arch": {"choice": ["gat", "mlp"]},
            "student.width": {"choice": [4, 16]},
        },
        "seeds": [0],
        "searcher": {"algorithm": "grid", "max_concurrent": 2, "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
        "latency": {
            "repeats": 30,
            "warmup": 5,
            "threads": 1,
            "quiet": quiet,
            "windows": LATENCY_WINDOWS,
            "window_gap": LATENCY_WINDOW_GAP,
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def figures(client: MlflowClient, experiment: str) -> dict[str, dict[str, Any]]:
    """Per architecture signature: the figure the study logged (one per signature)."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    out: dict[str, dict[str, Any]] = {}
    for run in client.search_runs([exp.experiment_id], f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"):
        tags, m = run.data.tags, run.data.metrics
        width = run.data.params.get("student.width")
        out[tags[tr.TAG_LATENCY_SIGNATURE]] = {
            "student": f"{tags.get(tr.TAG_STUDENT_ARCH, '?')}-w{width}",
            "p50_ms": m[tr.METRIC_LATENCY_P50],
            "ci_rel": (m[tr.METRIC_LATENCY_CI_HIGH] - m[tr.METRIC_LATENCY_CI_LOW])
            / 2
            / m[tr.METRIC_LATENCY_P50],
            "stable": tags.get("latency_stable"),
            "quiet": tags.get("latency_quiet"),
            "windows": tags.get(tr.TAG_LATENCY_WINDOWS, ""),
        }
    return out


def compare(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], mode: str
) -> list[dict[str, Any]]:
    rows = []
    for sig in sorted(set(a) & set(b), key=lambda s: a[s]["student"]):
        pa, pb = a[sig]["p50_ms"], b[sig]["p50_ms"]
        rows.append(
            {
                "mode": mode,
                "student": a[sig]["student"],
                "study_a_ms": pa,
                "study_b_ms": pb,
                "spread": abs(pa - pb) / min(pa, pb),
                "ci_a": a[sig]["ci_rel"],
                "ci_b": b[sig]["ci_rel"],
                "stable": f"{a[sig]['stable']}/{b[sig]['stable']}",
                "windows_a": a[sig]["windows"],
                "windows_b": b[sig]["windows"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = common.make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="student epochs per trial")
    args = parser.parse_args(argv)
    device = common.setup(args)
    epochs = common.pick(args, "epochs", 3, 100)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = f"sqlite:///{folder}/mlflow.db"
        client = MlflowClient(uri)
        for quiet, mode in ((True, "quiet"), (False, "not quiet")):
            names = [f"lat-{mode.replace(' ', '')}-{x}" for x in "ab"]
            for name in names:
                path = study_file(folder, name, quick=args.quick, epochs=epochs, quiet=quiet)
                outcome = run_study(path, tracking_uri=uri, storage=folder / "studies")
                ray.shutdown()
                if not outcome.complete:
                    raise SystemExit(f"study {name} did not finish every trial")
            rows += compare(figures(client, names[0]), figures(client, names[1]), mode)
    common.print_table(
        f"{NAME}: the same 4 students in two studies, 2 trials at a time, {epochs} epochs",
        rows,
        ["mode", "student", "study_a_ms", "study_b_ms", "spread", "windows_a", "windows_b"],
    )
    worst = {m: max(r["spread"] for r in rows if r["mode"] == m) for m in ("quiet", "not quiet")}
    print(f"\nlargest spread: quiet {worst['quiet']:.1%}, not quiet {worst['not quiet']:.1%}")
    payload = {
        "benchmark": NAME,
        "description": __doc__.splitlines()[0],
        "quick": bool(args.quick),
        "machine": common.machine_info(device),
        "config": {
            "epochs": epochs,
            "max_concurrent": 2,
            "repeats": 30,
            "tolerance": 0.03,
            "windows": LATENCY_WINDOWS,
            "window_gap_s": LATENCY_WINDOW_GAP,
        },
        "rows": rows,
        "largest_spread": worst,
        "targets": {"two_studies_within_10pct": common.target(worst["quiet"], 0.10)},
    }
    common.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
