"""MLflow runs of one or more studies -> tidy pandas DataFrames (one row per run).

The only module of :mod:`analysis` that talks to MLflow. It reads the layout written by the
studies (see :mod:`study.tracking`): experiment = study name, trial runs tagged
``gds.role=trial``, teacher runs tagged ``gds.role=teacher``.

MLflow stores params as strings; :func:`load_runs` types them back with
:func:`study.tracking.decode_param` (``"100.0"`` -> float, ``"16"`` -> int, ``"true"``/``"True"``
-> bool, ``"null"``/``"None"`` -> NA, anything else stays a string), then per column (a column
mixing ints and floats becomes float; see :func:`type_param_column`).

Runs are read with ``MlflowClient(uri).search_runs`` (paged), the client form of
``mlflow.search_runs``: it takes the tracking URI as an argument instead of changing MLflow's
process-wide tracking URI, so reading a report never redirects a caller's own logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd

from study.errors import UserInputError
from study.tracking import (
    CLASS_TABLE_ARTIFACT,
    EPOCH_METRICS,
    FINAL_METRICS,
    METRIC_TEST,
    ROLE_TEACHER,
    ROLE_TRIAL,
    TAG_CONFIG_ID,
    TAG_DATASET,
    TAG_DEVICE,
    TAG_ERROR,
    TAG_LATENCY_QUIET,
    TAG_LATENCY_STABLE,
    TAG_METHOD,
    TAG_ROLE,
    TAG_SEED,
    TAG_STUDENT_ARCH,
    TAG_TEACHER_HASH,
    TAG_TEACHER_RUN,
    decode_param,
    open_store,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "TRIAL_COLUMNS",
    "TEACHER_COLUMNS",
    "HISTORY_COLUMNS",
    "FINISHED",
    "load_runs",
    "load_history",
    "load_teachers",
    "finished_trials",
    "failed_trials",
    "display_uri",
    "type_param_column",
]

FINISHED = "FINISHED"
#: Statuses of trial runs that ended without counting (a diverged trial is FAILED with a reason).
FAILED_STATUSES = ("FAILED", "KILLED")
# Identity columns of a trial row, in order; the tag each one is read from. ``error`` is the
# one-line reason a failed trial recorded (``gds.error``), NA for the others.
_TRIAL_TAGS = {
    "method": TAG_METHOD,
    "dataset": TAG_DATASET,
    "seed": TAG_SEED,
    "config_id": TAG_CONFIG_ID,
    "teacher_run_id": TAG_TEACHER_RUN,
    "device": TAG_DEVICE,
    "student_arch": TAG_STUDENT_ARCH,
    "error": TAG_ERROR,
    "latency_stable": TAG_LATENCY_STABLE,
    "latency_quiet": TAG_LATENCY_QUIET,
}
TRIAL_COLUMNS = ("study", "run_id", "run_name", "status", *_TRIAL_TAGS)
_TEACHER_TAGS = {"dataset": TAG_DATASET, "device": TAG_DEVICE, "teacher_hash": TAG_TEACHER_HASH}
TEACHER_COLUMNS = ("study", "run_id", "run_name", "status", *_TEACHER_TAGS)
HISTORY_COLUMNS = ("run_id", "key", "step", "value")


# --------------------------------------------------------------------------------------------
# Typing MLflow's string params
# --------------------------------------------------------------------------------------------
def _kind(text: Any) -> tuple[str, Any]:
    """One param string -> (kind, value), kind in {"na", "bool", "int", "float", "str"}.

    Lists and dicts count as "str": a column keeps their text (hashable, groupable).
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return "na", None
    value = decode_param(str(text).strip())
    if value is None:
        return "na", None
    if isinstance(value, bool):  # before int: bool is an int
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    return "str", value


def type_param_column(values: Sequence[Any]) -> pd.Series:
    """Type one column of MLflow param strings (``None`` where a run lacks the param).

    All bools -> ``bool`` (``boolean`` if some are NA); all ints -> ``int64`` (``Int64`` with NA);
    ints and floats -> ``float64`` (NA -> NaN); anything else, including a mix of numbers and
    words, keeps the original strings (NA where missing). Each value is read with
    :func:`study.tracking.decode_param`, so ``null`` and the legacy ``None`` are NA.
    """
    parsed = [_kind(v) for v in values]
    kinds = {k for k, _ in parsed} - {"na"}
    has_na = any(k == "na" for k, _ in parsed)
    vals = [v for _, v in parsed]
    if not kinds:
        return pd.Series([pd.NA] * len(vals), dtype="object")
    if kinds == {"bool"}:
        return pd.Series(vals, dtype="boolean" if has_na else "bool")
    if kinds == {"int"}:
        return pd.Series(vals, dtype="Int64" if has_na else "int64")
    if kinds <= {"int", "float"}:
        return pd.Series([np.nan if v is None else float(v) for v in vals], dtype="float64")
    # A mixed column keeps what the user wrote (e.g. "10" next to "auto"), not Python reprs;
    # strings as decoded (a logged "16" is stored quoted), lists and dicts as their text.
    texts = [
        None if k == "na" else v if isinstance(v, str) else str(t).strip()
        for (k, v), t in zip(parsed, values, strict=True)
    ]
    return pd.Series(texts, dtype="object")


# --------------------------------------------------------------------------------------------
# MLflow access
# --------------------------------------------------------------------------------------------
def display_uri(uri: str) -> str:
    """The tracking URI with any ``user:password@`` removed, safe to print in messages/reports."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return parts._replace(netloc=f"***@{host}").geturl()
    return uri


def _client(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri``; a sqlite URI must name an existing file.

    MLflow would otherwise create an empty database at a mistyped path and report "no study".
    """
    if uri.startswith("sqlite:///"):
        # SQLAlchemy form: sqlite:///relative/path.db or sqlite:////absolute/path.db.
        path = Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))
        if str(path) not in ("", ":memory:") and not path.exists():
            raise UserInputError(
                f"no MLflow store at {path} (tracking URI {uri!r}; pass --tracking-uri or set "
                "MLFLOW_TRACKING_URI)"
            )
    return open_store(uri)  # imports MLflow late: importing analysis stays cheap


def _known_studies(client: MlflowClient) -> list[str]:
    names = [e.name for e in client.search_experiments(max_results=1000)]
    return sorted(n for n in names if n != "Default")


def _experiment(client: MlflowClient, name: str, uri: str) -> Any:
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        known = ", ".join(_known_studies(client)) or "none"
        raise UserInputError(f"no study named {name!r} in {display_uri(uri)} (known: {known})")
    return exp


def _search(client: MlflowClient, experiment_id: str, role: str) -> list:
    """Every active run of the experiment with tag ``gds.role == role`` (all pages)."""
    from mlflow.entities import ViewType

    runs: list = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{role}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _frame(
    records: list[dict], params: list[dict], metrics: list[dict], id_cols: Sequence[str]
) -> pd.DataFrame:
    """Assemble identity columns, typed params and float metrics into one frame."""
    n = len(records)
    out: dict[str, Any] = {
        c: pd.Series([r.get(c) for r in records], dtype="object") for c in id_cols
    }
    metric_names = list(FINAL_METRICS) + sorted(
        {k for m in metrics for k in m} - set(FINAL_METRICS) - set(EPOCH_METRICS)
    )
    param_names = sorted({k for p in params for k in p})
    for name in param_names:
        col = name
        # A tag column (method, seed, ...) wins; a param that shadows a metric gets a prefix.
        if name in out:
            continue
        if name in metric_names:
            col = f"param.{name}"
        out[col] = type_param_column([p.get(name) for p in params])
    for name in metric_names:
        out[name] = pd.Series([m.get(name, np.nan) for m in metrics], dtype="float64")
    df = pd.DataFrame(out, index=pd.RangeIndex(n))
    for col in id_cols:
        if col == "seed":
            df[col] = type_param_column(df[col].tolist())
        else:
            df[col] = df[col].astype("object").where(df[col].notna(), None)
    return df


def _rows(study: str, runs: Iterable, tags: dict[str, str]) -> tuple[list, list, list]:
    records, params, metrics = [], [], []
    for run in runs:
        rtags = run.data.tags
        rec = {
            "study": study,
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
        }
        for col, tag in tags.items():
            # Fall back to the param of the same name (a trial logs method and seed as both).
            rec[col] = rtags.get(tag, run.data.params.get(col))
        records.append(rec)
        params.append(dict(run.data.params))
        metrics.append(dict(run.data.metrics))
    return records, params, metrics


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
@overload
def load_runs(
    studies: str | Sequence[str],
    *,
    tracking_uri: str | None = ...,
    include_history: Literal[False] = ...,
) -> pd.DataFrame: ...


@overload
def load_runs(
    studies: str | Sequence[str],
    *,
    tracking_uri: str | None = ...,
    include_history: Literal[True],
) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def load_runs(
    studies: str | Sequence[str],
    *,
    tracking_uri: str | None = None,
    include_history: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The trial runs of one or more studies as one tidy DataFrame, one row per trial run.

    Every status is included (FINISHED, FAILED, RUNNING, KILLED); use :func:`finished_trials`
    for the runs that count and :func:`failed_trials` for the ones that failed.

    Args:
        studies: A study name (= MLflow experiment name) or several.
        tracking_uri: MLflow tracking URI; default from :func:`study.tracking.resolve_tracking_uri`.
        include_history: Also read the per-epoch metrics of every run (one MLflow call per run
            and key, so slow on big studies).

    Returns:
        ``runs``, or the tuple ``(runs, history)`` when ``include_history`` is true, ``history``
        as from :func:`load_history`. ``runs`` has the columns :data:`TRIAL_COLUMNS` (``seed``
        an integer), then every hyperparameter param, typed (NA where a trial's method lacks it),
        then every final metric as float (:data:`study.tracking.FINAL_METRICS` always present).

    Raises:
        UserInputError: a study name that is not an experiment in the store, or a sqlite URI
            whose file does not exist.
    """
    names = [studies] if isinstance(studies, str) else list(dict.fromkeys(studies))
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    records: list = []
    params: list = []
    metrics: list = []
    for name in names:
        exp = _experiment(client, name, uri)
        r, p, m = _rows(name, _search(client, exp.experiment_id, ROLE_TRIAL), _TRIAL_TAGS)
        records += r
        params += p
        metrics += m
    runs = _frame(records, params, metrics, TRIAL_COLUMNS)
    if include_history:
        return runs, _history(client, runs["run_id"].tolist(), EPOCH_METRICS)
    return runs


def _history(client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
    rows: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    for run_id in run_ids:
        for key in keys:
            for m in client.get_metric_history(run_id, key):
                rows["run_id"].append(run_id)
                rows["key"].append(key)
                rows["step"].append(int(m.step))
                rows["value"].append(float(m.value))
    df = pd.DataFrame(
        {
            "run_id": pd.Series(rows["run_id"], dtype="object"),
            "key": pd.Series(rows["key"], dtype="object"),
            "step": pd.Series(rows["step"], dtype="int64"),
            "value": pd.Series(rows["value"], dtype="float64"),
        }
    )
    return df.sort_values(["run_id", "key", "step"], kind="stable").reset_index(drop=True)


def load_history(
    run_ids: Sequence[str],
    *,
    tracking_uri: str | None = None,
    keys: Sequence[str] = EPOCH_METRICS,
) -> pd.DataFrame:
    """Per-epoch metric histories of some runs, long format.

    Args:
        run_ids: MLflow run ids (e.g. the best trials of :func:`load_runs`).
        tracking_uri: MLflow tracking URI; default as in :func:`load_runs`.
        keys: Metric keys to read (default: ``train_loss``, ``distill_loss``, ``epoch_val_score``).

    Returns:
        Columns ``run_id``, ``key``, ``step`` (int, the epoch), ``value`` (float), sorted by
        run, key and step. Keys a run never logged are simply absent.
    """
    uri = resolve_tracking_uri(tracking_uri)
    return _history(_client(uri), list(run_ids), list(keys))


def load_class_tables(run_ids: Sequence[str], *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The per-class tables some trial runs logged (``study.per_class.TABLE_ARTIFACT``).

    Returns:
        One row per (run, split, class): ``run_id`` and the table's columns (``split``,
        ``class``, ``class_name``, ``train_count``, ``support``, ``precision``, ``recall``,
        ``f1``). Runs that logged no table are absent; a table logged twice by a retried trial
        (MLflow appends) keeps its last rows.
    """
    import json
    import os
    import tempfile

    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    frames = []
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # no progress bar per downloaded table
    before = os.environ.get(quiet)
    os.environ[quiet] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        for run_id in run_ids:
            names = {f.path for f in client.list_artifacts(run_id)}
            if CLASS_TABLE_ARTIFACT not in names:
                continue
            path = client.download_artifacts(run_id, CLASS_TABLE_ARTIFACT, tmp)
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            frame = pd.DataFrame(data["data"], columns=data["columns"])
            frame = frame.drop_duplicates(["split", "class"], keep="last")
            frames.append(frame.assign(run_id=run_id))
    if before is None:
        os.environ.pop(quiet, None)
    else:
        os.environ[quiet] = before
    if not frames:
        return pd.DataFrame(columns=["run_id", "split", "class", "class_name", "train_count",
                                     "support", "precision", "recall", "f1"])  # fmt: skip
    out = pd.concat(frames, ignore_index=True)
    return out[["run_id", *[c for c in out.columns if c != "run_id"]]]


def load_teachers(study: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The teacher runs of a study: one row per teacher, typed like :func:`load_runs`.

    Columns :data:`TEACHER_COLUMNS`, the teacher's params, and its metrics (``test_score``,
    ``num_params``, ``latency_ms_p50``, ... as float; NaN where not logged).

    Raises:
        UserInputError: an unknown study (see :func:`load_runs`).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    exp = _experiment(client, study, uri)
    r, p, m = _rows(study, _search(client, exp.experiment_id, ROLE_TEACHER), _TEACHER_TAGS)
    return _frame(r, p, m, TEACHER_COLUMNS)


def finished_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The trials that count: status FINISHED and a ``test_score`` logged.

    Every table and front of :mod:`analysis` is built from these only; a FAILED trial (e.g. one
    whose training diverged, whatever scores it may have logged) never enters them: it is
    counted by :func:`failed_trials`.
    """
    if runs.empty:
        return runs.copy()
    mask = (runs["status"] == FINISHED) & runs[METRIC_TEST].notna()
    return runs.loc[mask].reset_index(drop=True)


def failed_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The trials that ended without counting: status FAILED or KILLED (their reason, where
    recorded, in the ``error`` column). RUNNING trials (an interrupted study) are neither."""
    if runs.empty:
        return runs.copy()
    return runs.loc[runs["status"].isin(FAILED_STATUSES)].reset_index(drop=True)
