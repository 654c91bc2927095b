"""From a study to a deployable student: pick a configuration within a latency budget, export
its student, register it in the MLflow Model Registry.

``distill-study select STUDY --max-latency-ms X --out DIR`` calls :func:`select_and_export`:

1. The study's finished trials (:func:`analysis.runs.load_runs`) are summarised per
   configuration, means over seeds (:func:`analysis.ablation.config_summary`).
2. :func:`choose_config` keeps the configurations whose mean ``latency_ms_p50`` is at most X
   and takes the best mean **validation** score (``val_score``, mean over seeds): the test split
   never enters the choice, it is only reported beside it. Ties go to the lower mean latency,
   then the smaller ``config_id``. When none fits, :class:`NoConfigWithinBudget` names the
   fastest configuration and nothing is written or registered.
3. The configuration's seeds are separate models: the one exported is the seed run with the best
   ``val_score`` (ties: the smaller seed, then run id), so validation, not test, picks the
   weights. Its ``student/`` artifacts (written by :func:`study.export.export_student` in the
   trial: weights, config, TorchScript where the model allows) are downloaded into a hidden
   folder beside DIR, checked (:func:`study.export.load` rebuilds the model from them) and
   renamed to DIR, which must be missing or empty: an export is never overwritten.
4. A new MLflow run in the study's experiment (tag ``gds.role=selection``; params
   ``max_latency_ms``, ``config_id``, ...) logs DIR as artifacts under ``model/``, and a new
   version of the registered model (default ``<study>-student``) is created from that run's
   ``model/`` artifact URI, with tags ``study``, ``config_id``, ``teacher_run_id``, ``method``,
   ``student_arch``, ``latency_ms_p50``, ``val_score`` and ``test_score`` (and
   ``max_latency_ms``, ``gds.runtime``, ``gds.study_run_id``, the ONNX figure where logged), and
   the alias ``challenger`` (:mod:`study.promote` decides on ``champion``). Trials log their
   student as an MLflow pyfunc model in the same folder (:mod:`study.pyfunc_model`), so the
   version loads with ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` and serves.

``--runtime onnx`` holds the budget to ``latency_onnx_ms_p50`` (ONNX Runtime on CPU) instead.

The loss against the teacher is the teacher run's ``test_score`` minus the configuration's mean
test score, in points (percentage points for scores logged as fractions).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study import fileio
from study import tracking as tr
from study.errors import UserInputError, choose

__all__ = [
    "ROLE_SELECTION",
    "MODEL_ARTIFACT_DIR",
    "NoConfigWithinBudget",
    "SelectionResult",
    "choose_config",
    "pick_seed_run",
    "default_model_name",
    "select_and_export",
    "describe_selection",
]

ROLE_SELECTION = "selection"
MODEL_ARTIFACT_DIR = "model"
MLMODEL_FILE = "MLmodel"  # MLflow's model file, written by study.pyfunc_model
_P50 = f"{tr.METRIC_LATENCY_P50}_mean"
#: The latency metrics the budget may apply to (``--latency-metric``): whole-graph latency
#: (PyTorch or ONNX Runtime), or serving latency for B target nodes with the neighbourhood
#: fetch (node tasks).
LATENCY_METRICS = (
    tr.METRIC_LATENCY_P50,
    tr.METRIC_LATENCY_P90,
    tr.METRIC_LATENCY_ONNX_P50,
    tr.METRIC_LATENCY_ONNX_P90,
    *tr.SERVE_METRICS,
)
_TEST = f"{tr.METRIC_TEST}_mean"
_VAL = f"{tr.METRIC_VAL}_mean"
PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class NoConfigWithinBudget(Exception):  # noqa: N818 - it is an outcome, not a failure
    """No configuration's mean p50 latency is within the budget (the CLI exits with code 1).

    Attributes:
        max_latency_ms: the budget.
        fastest: the summary row of the fastest configuration.
    """

    def __init__(self, max_latency_ms: float, fastest: pd.Series, latency: str = _P50) -> None:
        self.max_latency_ms = max_latency_ms
        self.fastest = fastest
        what = "latency p50" if latency == _P50 else latency.removesuffix("_mean")
        super().__init__(
            f"no configuration has a mean {what} within {max_latency_ms:g} ms; the fastest "
            f"is {fastest['config_id']} ({_describe(fastest)}) at {fastest[latency]:.3f} ms, "
            f"validation score {_score_text(fastest.get(_VAL, math.nan))}, test score "
            f"{_score_text(fastest.get(_TEST, math.nan))}"
        )


@dataclass(frozen=True)
class SelectionResult:
    """What :func:`select_and_export` chose, wrote and registered.

    Scores are as logged (fractions for the shipped datasets); ``loss_points`` is in points.
    """

    study: str
    config_id: str
    method: str
    student_arch: str
    hyperparameters: dict[str, Any]
    n_seeds: int
    test_score: float
    val_score: float
    latency_ms_p50: float
    latency_ms_p90: float
    num_params: float
    teacher_run_id: str
    teacher_test_score: float
    loss_points: float
    source_run_id: str
    out_dir: Path
    selection_run_id: str
    model_name: str
    model_version: str
    torchscript: bool = False
    candidates: int = 0
    runtime: str = "torch"
    latency_onnx_ms_p50: float = math.nan
    mlflow_model: bool = False  # the export is an MLflow pyfunc model (an MLmodel file)


# --------------------------------------------------------------------------------------------
# Choosing
# --------------------------------------------------------------------------------------------
def check_budget(max_latency_ms: float) -> float:
    """``max_latency_ms`` as a float, refused unless finite and positive."""
    try:
        value = float(max_latency_ms)
    except (TypeError, ValueError):
        raise UserInputError(
            f"--max-latency-ms: expected a positive number of milliseconds, got {max_latency_ms!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UserInputError(
            f"--max-latency-ms: expected a positive number of milliseconds, got {max_latency_ms!r}"
        )
    return value


def choose_config(summary: pd.DataFrame, max_latency_ms: float, latency: str = _P50) -> pd.Series:
    """The configuration with the best mean validation score among those within the latency
    budget. The test score is never looked at: it is reported beside the choice.

    Args:
        summary: one row per configuration, as :func:`analysis.ablation.config_summary` gives:
            ``config_id``, ``val_score_mean``, ``latency_ms_p50_mean`` (more columns are kept).
        max_latency_ms: the budget on the mean p50 latency (inclusive).
        latency: the column of mean p50 latencies to hold to the budget (default PyTorch's;
            ``latency_onnx_ms_p50_mean`` for ONNX Runtime, see :func:`latency_column`).

    Returns:
        The chosen row. Ties on the score go to the lower mean latency, then the smaller
        ``config_id``. Rows without a score or a latency never compete.

    Raises:
        UserInputError: a budget that is not a positive number, or a summary without rows
            that have both a score and a latency.
        NoConfigWithinBudget: no row within the budget (it carries the fastest row).
    """
    budget = check_budget(max_latency_ms)
    for col in ("config_id", _VAL, latency):
        if col not in summary.columns:
            raise UserInputError(
                f"summary has no column {col!r} (columns: {', '.join(map(str, summary.columns))})"
            )
    lat = pd.to_numeric(summary[latency], errors="coerce")
    score = pd.to_numeric(summary[_VAL], errors="coerce")
    data = summary.assign(_lat=lat, _score=score).loc[lat.notna() & score.notna()]
    if data.empty:
        raise UserInputError(
            f"no configuration has both a validation score and a {latency.removesuffix('_mean')}"
        )
    within = data.loc[data["_lat"] <= budget]
    if within.empty:
        fastest = data.sort_values(
            ["_lat", "_score", "config_id"], ascending=[True, False, True], kind="stable"
        ).iloc[0]
        raise NoConfigWithinBudget(budget, fastest.drop(["_lat", "_score"]), latency)
    best = within.sort_values(
        ["_score", "_lat", "config_id"], ascending=[False, True, True], kind="stable"
    ).iloc[0]
    return best.drop(["_lat", "_score"])


def pick_seed_run(trials: pd.DataFrame, config_id: str) -> pd.Series:
    """The finished trial of ``config_id`` whose student is exported: the best ``val_score``
    (ties: the smaller seed, then the smaller run id); a run without ``val_score`` comes last."""
    runs = trials.loc[trials["config_id"] == config_id]
    if runs.empty:
        raise UserInputError(f"no finished trial of configuration {config_id!r}")
    val = pd.to_numeric(runs[tr.METRIC_VAL], errors="coerce").fillna(-math.inf)
    seed = pd.to_numeric(runs["seed"], errors="coerce").fillna(math.inf)
    ranked = runs.assign(_val=val, _seed=seed).sort_values(
        ["_val", "_seed", "run_id"], ascending=[False, True, True], kind="stable"
    )
    return ranked.iloc[0].drop(["_val", "_seed"])


def default_model_name(study: str) -> str:
    """The registered model name a study's selections go to: ``<study>-student``."""
    return f"{study}-student"


def check_model_name(name: str) -> str:
    # MLflow's own rule (mlflow.utils.validation._validate_model_name), checked before anything
    # is written so that a bad name cannot leave an unregistered export behind.
    if not name or not name.strip() or any(c in name for c in "/:") or ".." in name:
        raise UserInputError(
            f"--model-name: {name!r} is not a valid registered-model name "
            "(expected non-empty, without '/', ':' or '..')"
        )
    return name


# --------------------------------------------------------------------------------------------
# Exporting and registering
# --------------------------------------------------------------------------------------------
def _copy_student(client: Any, run_id: str, out: Path) -> dict[str, Any]:
    """Download ``run_id``'s ``student/`` artifacts, check they rebuild a model, rename them to
    ``out``; returns the export's config. ``out`` never holds a partial folder."""
    from study import export

    names = [a.path for a in client.list_artifacts(run_id, tr.STUDENT_ARTIFACT_DIR)]
    if not any(n.endswith(export.WEIGHTS_FILE) for n in names):
        raise UserInputError(
            f"trial run {run_id} has no {tr.STUDENT_ARTIFACT_DIR}/ artifacts to export (it was run "
            "before trials logged their students; run the study again)"
        )
    with fileio.staging_folder(out) as tmp:
        # No progress bar: the command prints one report, not MLflow's download meter.
        with scoped_env(PROGRESS_ENV, "false"):
            local = Path(client.download_artifacts(run_id, tr.STUDENT_ARTIFACT_DIR, str(tmp)))
        config = export.read_config(local)
        export.load(local)  # the weights must fit the spec: refuse a broken export here
        export.move_into_place(local, out)
    return config


@contextlib.contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """Set the environment variable ``name`` to ``value`` for the ``with`` block."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _ensure_registered_model(client: Any, name: str, study: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        client.create_registered_model(
            name,
            tags={"study": study},
            description=f"Students selected from study {study!r} by `distill-study select`.",
        )
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":  # another select got there first
            raise


def _teacher_test_score(client: Any, teacher_run_id: str | None) -> float:
    from mlflow.exceptions import MlflowException

    if not teacher_run_id:
        return math.nan
    try:
        run = client.get_run(teacher_run_id)
    except MlflowException:
        return math.nan
    return float(run.data.metrics.get(tr.METRIC_TEST, math.nan))


def _hyperparameters(client: Any, run_id: str) -> dict[str, Any]:
    """The trial's params as values (:func:`study.tracking.decode_param`), without its seed."""
    params = client.get_run(run_id).data.params
    return {k: tr.decode_param(v) for k, v in sorted(params.items()) if k != tr.TAG_SEED}


def _float(row: pd.Series, col: str) -> float:
    value = pd.to_numeric(pd.Series([row.get(col)]), errors="coerce").iloc[0]
    return float(value)


def select_and_export(
    study: str,
    max_latency_ms: float,
    out_dir: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    model_name: str | None = None,
    runtime: str = "torch",
    latency_metric: str | None = None,
) -> SelectionResult:
    """Choose the best configuration of ``study`` within the latency budget, export its student
    to ``out_dir`` and register it as a new model version (see the module docstring).

    Args:
        study: the study name (= MLflow experiment).
        max_latency_ms: budget on the configuration's mean ``latency_ms_p50`` (inclusive).
        out_dir: the export folder to create; it may exist only if empty.
        tracking_uri: MLflow tracking URI (default: :func:`study.tracking.resolve_tracking_uri`).
        model_name: registered model name (default ``<study>-student``).
        runtime: whose latency the budget holds: ``torch`` (``latency_ms_p50``) or ``onnx``
            (``latency_onnx_ms_p50``, ONNX Runtime on CPU).
        latency_metric: instead, any latency of :data:`LATENCY_METRICS` (e.g.
            ``serve_b1_ms_p50``: one node served with its k-hop fetch).

    Returns:
        The :class:`SelectionResult`. The new version gets the alias ``challenger``
        (``distill-study promote`` decides whether it becomes the ``champion``).

    Raises:
        UserInputError: an unknown study, a study without finished trials, a bad budget or
            model name, a non-empty ``out_dir``, or a trial run without student artifacts.
        NoConfigWithinBudget: nothing fits the budget; nothing was written or registered.
    """
    from study.export import check_target

    budget = check_budget(max_latency_ms)
    latency = latency_column(runtime)
    if latency_metric is not None:
        choose("--latency-metric", latency_metric, LATENCY_METRICS)
        latency = f"{latency_metric}_mean"
    name = check_model_name(model_name if model_name is not None else default_model_name(study))
    out = Path(os.path.abspath(out_dir))
    check_target(out, "--out")
    uri = tr.resolve_tracking_uri(tracking_uri)
    choice = _choose(study, budget, uri, latency)
    client = tr.open_store(uri)  # load_runs has checked that the store exists
    teacher_score = _teacher_test_score(client, choice.teacher_run_id)
    hyper = _hyperparameters(client, choice.source_run_id)
    config = _copy_student(client, choice.source_run_id, out)
    sel_id, version = _register(client, study, choice, budget, name, out)
    client.log_param(sel_id, "latency_metric", latency_metric)
    return _result(study, choice, hyper, teacher_score, out, sel_id, name, version, config)


@dataclass(frozen=True)
class _Choice:
    """The configuration chosen and the run of it whose student is exported."""

    row: pd.Series  # the configuration's row of config_summary: means over seeds
    done: pd.DataFrame  # every finished trial of the study
    candidates: int  # configurations within the budget
    source_run_id: str
    teacher_run_id: str
    latency: str = _P50  # the column of mean p50 latencies the budget held

    @property
    def config_id(self) -> str:
        return str(self.row["config_id"])

    @property
    def method(self) -> str:
        return str(self.row.get("method"))

    @property
    def arch(self) -> str:
        return str(self.row.get("student_arch"))


def latency_column(runtime: str) -> str:
    """The summary column of mean p50 latencies under ``runtime`` (``torch`` or ``onnx``)."""
    if runtime not in tr.RUNTIME_LATENCY_P50:
        raise UserInputError(
            f"--runtime: {runtime!r} is not a runtime (valid: {', '.join(tr.RUNTIME_LATENCY_P50)})"
        )
    return f"{tr.RUNTIME_LATENCY_P50[runtime]}_mean"


def _choose(study: str, budget: float, uri: str, latency: str = _P50) -> _Choice:
    """Read the study's runs, choose the configuration (:func:`choose_config`) and its seed run
    (:func:`pick_seed_run`)."""
    from analysis.ablation import config_summary
    from analysis.runs import finished_trials, load_runs

    runs = load_runs(study, tracking_uri=uri)  # UserInputError for an unknown study
    done = finished_trials(runs)
    if done.empty:
        raise UserInputError(
            f"study {study!r} has no finished trials ({len(runs)} trial runs in the store)"
        )
    summary = config_summary(runs)
    if latency not in summary.columns:
        metric = latency.removesuffix("_mean")
        raise UserInputError(
            f"--runtime: no trial of study {study!r} logged {metric} (the study ran with "
            "latency.onnx: false, or before trials timed ONNX Runtime)"
        )
    row = choose_config(summary, budget, latency)
    within = int((pd.to_numeric(summary[latency], errors="coerce") <= budget).sum())
    seed_run = pick_seed_run(done, row["config_id"])
    return _Choice(
        row=row,
        done=done,
        candidates=within,
        source_run_id=str(seed_run["run_id"]),
        teacher_run_id=str(seed_run.get("teacher_run_id") or ""),
        latency=latency,
    )


def _register(
    client: Any, study: str, choice: _Choice, budget: float, name: str, out: Path
) -> tuple[str, str]:
    """Log the export as a selection run's ``model/`` artifacts and register a new version of
    ``name`` from them; returns ``(selection run id, model version)``. The run is marked
    FAILED if anything here fails."""
    exp = client.get_experiment_by_name(study)
    sel = client.create_run(
        exp.experiment_id,
        run_name=f"select-{choice.config_id}-{budget:g}ms",
        tags=_selection_tags(study, choice),
    )
    sel_id = sel.info.run_id
    status = "FAILED"
    try:
        _log_selection(client, sel_id, choice, budget, name)
        client.log_artifacts(sel_id, str(out), artifact_path=MODEL_ARTIFACT_DIR)
        _ensure_registered_model(client, name, study)
        source = client.get_run(sel_id).info.artifact_uri.rstrip("/") + f"/{MODEL_ARTIFACT_DIR}"
        tags = {**_version_tags(study, choice), **_lineage_tags(client, exp.experiment_id, budget)}
        version = client.create_model_version(name, source=source, run_id=sel_id, tags=tags)
        client.set_registered_model_alias(name, tr.ALIAS_CHALLENGER, str(version.version))
        status = "FINISHED"
    finally:
        client.set_terminated(sel_id, status=status)
    return sel_id, str(version.version)


def _selection_tags(study: str, choice: _Choice) -> dict[str, str]:
    return {
        tr.TAG_ROLE: ROLE_SELECTION,
        tr.TAG_STUDY: study,
        tr.TAG_CONFIG_ID: choice.config_id,
        tr.TAG_TEACHER_RUN: choice.teacher_run_id,
        tr.TAG_METHOD: choice.method,
        tr.TAG_STUDENT_ARCH: choice.arch,
        "source_run_id": choice.source_run_id,
    }


def _runtime(choice: _Choice) -> str:
    return next(k for k, v in tr.RUNTIME_LATENCY_P50.items() if f"{v}_mean" == choice.latency)


def _lineage_tags(client: Any, experiment_id: str, budget: float) -> dict[str, str]:
    """The version's budget and its study run (lineage: teacher run -> study run -> version),
    with the study run's pipeline round and data fingerprint where it has them."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_STUDY}'", max_results=1
    )
    tags = {tr.VTAG_MAX_LATENCY: f"{budget:g}"}
    if found:
        study_run = found[0]
        tags[tr.VTAG_STUDY_RUN] = study_run.info.run_id
        for key in (tr.TAG_PIPELINE_ROUND, tr.TAG_DATA_FINGERPRINT):
            if key in study_run.data.tags:
                tags[key] = study_run.data.tags[key]
    return tags


def _version_tags(study: str, choice: _Choice) -> dict[str, str]:
    onnx = f"{tr.METRIC_LATENCY_ONNX_P50}_mean"
    extra = (
        {}
        if not math.isfinite(_float(choice.row, onnx))
        else {tr.METRIC_LATENCY_ONNX_P50: f"{_float(choice.row, onnx):.6g}"}
    )
    return {
        **extra,
        tr.VTAG_RUNTIME: _runtime(choice),
        "study": study,
        "config_id": choice.config_id,
        "teacher_run_id": choice.teacher_run_id,
        "method": choice.method,
        "student_arch": choice.arch,
        tr.METRIC_LATENCY_P50: f"{_float(choice.row, _P50):.6g}",
        tr.METRIC_VAL: f"{_float(choice.row, _VAL):.6g}",
        tr.METRIC_TEST: f"{_float(choice.row, _TEST):.6g}",
    }


# Metrics of a selection run: the configuration's means over seeds, where finite.
_SELECTION_METRICS = (
    (tr.METRIC_VAL, _VAL),
    (tr.METRIC_TEST, _TEST),
    (tr.METRIC_LATENCY_P50, _P50),
    (tr.METRIC_LATENCY_P90, f"{tr.METRIC_LATENCY_P90}_mean"),
    (tr.METRIC_PARAMS, f"{tr.METRIC_PARAMS}_mean"),
)


def _log_selection(client: Any, sel_id: str, choice: _Choice, budget: float, name: str) -> None:
    """The selection run's params (what was asked and chosen) and metrics."""
    client.log_param(sel_id, "max_latency_ms", f"{budget:g}")
    client.log_param(sel_id, "config_id", choice.config_id)
    client.log_param(sel_id, "source_run_id", choice.source_run_id)
    client.log_param(sel_id, "model_name", name)
    for key, col in _SELECTION_METRICS:
        if math.isfinite(_float(choice.row, col)):
            client.log_metric(sel_id, key, _float(choice.row, col))


def _result(
    study: str,
    choice: _Choice,
    hyper: dict[str, Any],
    teacher_score: float,
    out: Path,
    sel_id: str,
    name: str,
    version: str,
    config: dict[str, Any],
) -> SelectionResult:
    from analysis.ablation import score_scale

    row = choice.row
    test = _float(row, _TEST)
    scale = score_scale(pd.concat([choice.done[tr.METRIC_TEST], pd.Series([teacher_score])]))
    return SelectionResult(
        study=study,
        config_id=choice.config_id,
        method=choice.method,
        student_arch=choice.arch,
        hyperparameters=hyper,
        n_seeds=int(row.get("n", 1)),
        test_score=test,
        val_score=_float(row, _VAL),
        latency_ms_p50=_float(row, _P50),
        latency_ms_p90=_float(row, f"{tr.METRIC_LATENCY_P90}_mean"),
        num_params=_float(row, f"{tr.METRIC_PARAMS}_mean"),
        teacher_run_id=choice.teacher_run_id,
        teacher_test_score=teacher_score,
        loss_points=(teacher_score - test) * scale,
        source_run_id=choice.source_run_id,
        out_dir=out,
        selection_run_id=sel_id,
        model_name=name,
        model_version=version,
        torchscript=bool(config.get("torchscript", {}).get("available")),
        candidates=choice.candidates,
        runtime=_runtime(choice),
        latency_onnx_ms_p50=_float(row, f"{tr.METRIC_LATENCY_ONNX_P50}_mean"),
        mlflow_model=(out / MLMODEL_FILE).is_file(),
    )


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def _score_text(value: Any) -> str:
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.2f}%" if 0.0 <= v <= 1.0 else f"{v:.2f}"


def _describe(row: pd.Series) -> str:
    return f"{row.get('student_arch')} student, method {row.get('method')}"


def describe_selection(result: SelectionResult) -> str:
    """The lines ``distill-study select`` prints about a selection."""
    hyper = ", ".join(f"{k}={v}" for k, v in result.hyperparameters.items())
    loss = "n/a" if not math.isfinite(result.loss_points) else f"{result.loss_points:.2f} points"
    lines = [
        f"chosen configuration {result.config_id} of study {result.study!r}: the best mean "
        f"validation score of the {result.candidates} configuration(s) within the budget",
        f"  method:          {result.method}",
        f"  student arch:    {result.student_arch}",
        f"  hyperparameters: {hyper}",
        f"  val score:       {_score_text(result.val_score)} (mean over {result.n_seeds} "
        "seed(s); chosen on this)",
        f"  test score:      {_score_text(result.test_score)} (mean over {result.n_seeds} "
        "seed(s); not used to choose)",
        f"  latency:         p50 {result.latency_ms_p50:.3f} ms, "
        f"p90 {result.latency_ms_p90:.3f} ms (PyTorch)"
        + (
            f"; ONNX Runtime p50 {result.latency_onnx_ms_p50:.3f} ms"
            if math.isfinite(result.latency_onnx_ms_p50)
            else ""
        )
        + f"; the budget held {result.runtime}'s",
        f"  parameters:      {result.num_params:,.0f}",
        f"  vs teacher:      teacher {_score_text(result.teacher_test_score)}, loss {loss} "
        f"(teacher run {result.teacher_run_id})",
        f"exported the student of run {result.source_run_id} (best val_score of the seeds) to "
        f"{result.out_dir} (TorchScript: {'yes' if result.torchscript else 'no'})",
        f"registered model {result.model_name!r} version {result.model_version} "
        f"(selection run {result.selection_run_id}), alias {tr.ALIAS_CHALLENGER!r}",
    ]
    if result.mlflow_model:
        uri = f"models:/{result.model_name}/{result.model_version}"
        lines.append(
            f"  an MLflow pyfunc model: mlflow.pyfunc.load_model({uri!r}), or serve it with "
            f"`mlflow models serve -m {uri} --env-manager local --host 127.0.0.1`"
        )
    else:
        lines.append(
            "  not an MLflow model (its trial ran before trials logged pyfunc models): load it "
            "with study.export.load"
        )
    return "\n".join(lines)
