"""MLflow names shared by the studies that write runs and the analysis that reads them.

The layout (the contract ``analysis`` relies on):
- experiment = the study name;
- one parent run per study: tag ``gds.role=study``, run name = study name;
- one teacher run per distinct teacher spec: tag ``gds.role=teacher``, checkpoint as artifact;
- one child run per trial: tags ``gds.role=trial``, ``mlflow.parentRunId``, ``method``,
  ``dataset``, ``seed``, ``config_id``, ``teacher_run_id``, ``device``; hyperparameters as params;
  per-epoch metrics; final metrics :data:`FINAL_METRICS`; a trial whose training diverged ends
  FAILED with the tag ``gds.error`` (its reason) and no final metrics.

MLflow stores a param as text: values are written with :func:`encode_param` and read back with
:func:`decode_param`, the only pair that turns values into param text and back.

Every process opens a store with :func:`open_store` before its first MLflow call: a new sqlite
store is created once, under a lock, however many processes start at once.

Nothing here imports torch or Ray (``analysis`` imports this module); MLflow is imported late.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from study.fileio import atomic_write

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"

TAG_ROLE = "gds.role"
ROLE_STUDY = "study"
ROLE_TEACHER = "teacher"
ROLE_TRIAL = "trial"
TAG_PARENT = "mlflow.parentRunId"
TAG_METHOD = "method"
TAG_DATASET = "dataset"
TAG_SEED = "seed"
TAG_CONFIG_ID = "config_id"
TAG_TEACHER_RUN = "teacher_run_id"
TAG_DEVICE = "device"
TAG_TRIAL_ID = "gds.trial_id"
TAG_STUDY = "gds.study"
TAG_TEACHER_HASH = "gds.teacher_hash"
TAG_STUDENT_ARCH = "student_arch"
TAG_STOPPED_EARLY = "gds.stopped_early"  # a trial the scheduler stopped: no final scores
TAG_NODE = "gds.node_id"  # the Ray node a trial ran on
TAG_WORKER_PID = "gds.worker_pid"  # the process that last (re)started the trial, on that node
# The latency figure's key in the study's cache (study.latency_service.signature), and whether
# this trial measured it ("measured") or read the figure another trial measured ("cached").
TAG_LATENCY_SIGNATURE = "gds.latency_signature"
TAG_LATENCY_SOURCE = "gds.latency_source"
# Whether a figure's p50 reached latency.tolerance, and whether it was timed with the trials
# paused ("true"/"false"; study.latency.LatencyResult.as_tags).
TAG_LATENCY_STABLE = "latency_stable"
TAG_LATENCY_QUIET = "latency_quiet"
# Why a trial run ended FAILED, one line (e.g. "training diverged at epoch 3: ..."); the
# analysis leaves such runs out of every table and front and counts them with this reason.
TAG_ERROR = "gds.error"
# On the study's parent run: how many of its trials failed (their runs FAILED, with TAG_ERROR).
TAG_FAILED_TRIALS = "gds.failed_trials"

METRIC_VAL = "val_score"
METRIC_TEST = "test_score"
METRIC_LATENCY_P50 = "latency_ms_p50"
METRIC_LATENCY_P90 = "latency_ms_p90"
METRIC_PARAMS = "num_params"
METRIC_TRAIN_SECONDS = "train_seconds"
# The same input timed under ONNX Runtime on CPU (study.onnx_runtime, once per architecture
# through study.latency_service), and the trial tag that says "measured" or why there is none.
METRIC_LATENCY_ONNX_P50 = "latency_onnx_ms_p50"
METRIC_LATENCY_ONNX_P90 = "latency_onnx_ms_p90"
TAG_ONNX = "gds.onnx"
# The PyTorch p50 of each timing window (study.latency_service.measure_figure), comma-separated
# in order, and how far they spread: (max - min) / median. The figure is their median window.
TAG_LATENCY_WINDOWS = "gds.latency_windows_ms"
METRIC_LATENCY_WINDOW_SPREAD = "latency_ms_p50_window_spread"
# What a study measures once per architecture beside the PyTorch figure, logged by each trial
# (study.latency_service.Figure): a resumed study reads them back.
EXTRA_LATENCY_METRICS: tuple[str, ...] = (
    METRIC_LATENCY_ONNX_P50,
    METRIC_LATENCY_ONNX_P90,
    METRIC_LATENCY_WINDOW_SPREAD,
)
EXTRA_LATENCY_TAGS = (TAG_ONNX, TAG_LATENCY_WINDOWS)
FINAL_METRICS = (
    METRIC_VAL,
    METRIC_TEST,
    METRIC_LATENCY_P50,
    METRIC_LATENCY_P90,
    METRIC_PARAMS,
    METRIC_TRAIN_SECONDS,
)
# Final metrics some trials log beside those: the split metrics behind test_score (AUROC for
# every classification task, mean class accuracy for point clouds, per-class summaries) and
# the bounds of the latency p50's 95% confidence interval.
METRIC_LATENCY_CI_LOW = "latency_ms_p50_ci_low"
METRIC_LATENCY_CI_HIGH = "latency_ms_p50_ci_high"
EXTRA_METRICS: tuple[str, ...] = (
    "test_accuracy",
    "test_micro_f1",
    "test_auroc",
    "test_mean_class_accuracy",
    METRIC_LATENCY_CI_LOW,
    METRIC_LATENCY_CI_HIGH,
    METRIC_LATENCY_ONNX_P50,
    METRIC_LATENCY_ONNX_P90,
    METRIC_LATENCY_WINDOW_SPREAD,
    # study.per_class: per split, macro-F1 and the worst class's recall; AUROC of validation.
    "test_macro_f1",
    "test_worst_class_recall",
    "val_macro_f1",
    "val_worst_class_recall",
    "val_auroc",
)
# The runtimes `select --runtime` chooses on: runtime -> the trial metric of its p50 latency.
RUNTIME_LATENCY_P50 = {"torch": METRIC_LATENCY_P50, "onnx": METRIC_LATENCY_ONNX_P50}

# Model Registry: the aliases select and promote move, and the model-version tags they write.
ALIAS_CHALLENGER = "challenger"
ALIAS_CHAMPION = "champion"
VTAG_STUDY_RUN = "gds.study_run_id"  # the study's parent run (lineage: teacher -> study -> version)
VTAG_RUNTIME = "gds.runtime"
VTAG_MAX_LATENCY = "max_latency_ms"
# promote's record of its comparison, on the challenger's version (gds.promote.<key>).
VTAG_PROMOTE_PREFIX = "gds.promote."
PROMOTED = "promoted"
KEPT = "kept"
# Pipeline runs (one per round, in the experiment <study>-pipeline); the round and the data's
# fingerprint also tag the round's study run and model version.
ROLE_PIPELINE = "pipeline"
TAG_PIPELINE_ROUND = "gds.pipeline_round"
TAG_DATA_FINGERPRINT = "gds.data_fingerprint"

#: Serving latency of node-task models (study.serving_latency): the time to answer B target
#: nodes, the k-hop neighbourhood fetch included, per B and statistic.
SERVE_BATCH_SIZES = (1, 256)


def serve_metric(batch: int, stat: str = "p50") -> str:
    """The metric key of serving latency for ``batch`` targets: ``serve_b1_ms_p50`` etc."""
    return f"serve_b{batch}_ms_{stat}"


METRIC_SERVE_B1_P50 = serve_metric(1)
METRIC_SERVE_B256_P50 = serve_metric(256)
SERVE_METRICS = tuple(serve_metric(b, s) for b in SERVE_BATCH_SIZES for s in ("p50", "p90"))
EXTRA_METRICS = (*EXTRA_METRICS, *SERVE_METRICS)
EXTRA_LATENCY_METRICS = (*EXTRA_LATENCY_METRICS, *SERVE_METRICS)
# Per-epoch metric keys (logged with step=epoch).
EPOCH_METRICS = ("train_loss", "distill_loss", "epoch_val_score")

TEACHER_CHECKPOINT_ARTIFACT = "teacher/teacher.pt"
# Each trial's per-class table (study.per_class: recall, precision, F1 per class and split).
CLASS_TABLE_ARTIFACT = "per_class.json"
# Each trial's trained student, as written by study.export (weights, config, TorchScript), and
# an MLflow pyfunc model in the same folder (study.pyfunc_model: MLmodel, input example).
STUDENT_ARTIFACT_DIR = "student"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    Always absolute, so that Ray workers in other working directories write to the same store.
    """
    if uri:
        return uri
    if os.environ.get(TRACKING_URI_ENV):
        return os.environ[TRACKING_URI_ENV]
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other URIs and in-memory ones.

    SQLAlchemy's form: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path in ("", ":memory:") else Path(path)


def store_lock_path(uri: str) -> Path | None:
    """The lock file :func:`open_store` holds while it opens ``uri``: ``<db file>.lock`` beside a
    sqlite store, None for other URIs."""
    path = sqlite_path(uri)
    return None if path is None else path.with_name(path.name + ".lock")


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Another process asking for it waits, printing ``waiting`` (when given) once. The lock
    belongs to the open file, so a holder that dies never leaves it taken. Where the file can
    neither be created nor opened (a read-only folder) nothing is locked: nothing can be
    created there to race over either.
    """
    fd = None
    if os.name != "nt":  # flock is POSIX; a Windows laptop reading reports goes unlocked
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # a lock file of another user
            try:
                fd = os.open(path, flags | os.O_CLOEXEC, 0o666)
                break
            except OSError:
                continue
    if fd is None:
        yield
        return
    import fcntl

    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def open_store(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` whose store is ready: call it before any other MLflow
    call on a store.

    MLflow builds the store in the client's constructor: on a new sqlite file it creates the
    tables, runs every schema migration and adds the Default experiment, unguarded. Two
    processes doing that at once break the file for good (``table _alembic_tmp_... already
    exists``), so for a ``sqlite:///`` URI this holds :func:`store_lock_path` meanwhile: a
    second process waits, then finds the store made. Other URIs (a server, PostgreSQL) are
    opened as they are. MLflow keeps one store per URI and process, so a second call is cheap.
    An out-of-date store is not upgraded here: MLflow refuses it and names
    ``mlflow db upgrade``, which wants a backup first.
    """
    from mlflow.tracking import MlflowClient

    lock = store_lock_path(uri)
    if lock is None:
        return MlflowClient(tracking_uri=uri)
    waiting = f"[gds] waiting for another process to set up the MLflow store {sqlite_path(uri)}"
    with file_lock(lock, waiting):
        return MlflowClient(tracking_uri=uri)


def download_artifact(tracking_uri: str, run_id: str, artifact_path: str, dest: Path) -> Path:
    """Download one artifact file of a run to ``dest`` atomically (a partial download never
    stands at ``dest``, so a machine-wide cache can be filled by several workers at once)."""
    import mlflow

    open_store(tracking_uri)  # the first MLflow call of a worker process may be this one

    def download(tmp: Path) -> None:
        # MLflow names the file after the artifact: fetch it beside ``tmp``, then take its place.
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}.") as folder:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifact_path,
                dst_path=folder,
                tracking_uri=tracking_uri,
            )
            os.replace(local, tmp)

    return atomic_write(dest, download)


# --------------------------------------------------------------------------------------------
# Params: values <-> MLflow's text
# --------------------------------------------------------------------------------------------
# How runs logged before encode_param (with ``str(value)``) spelt what JSON spells otherwise.
_LEGACY = {
    "True": True,
    "False": False,
    "None": None,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
}


def encode_param(value: Any) -> str:
    """The text to log as an MLflow param for ``value``; :func:`decode_param` reads it back.

    JSON for everything (``16``, ``0.0001``, ``100.0``, ``true``, ``null``, ``[[-1, -1]]``,
    ``{"a": 1}``), so ints stay ints and floats floats, except a string, which stays plain
    text (``rbf``, not ``"rbf"``, in the MLflow UI) unless it would read back as something else
    (``"16"``, ``"true"``, ``"None"`` are quoted). Tuples become lists.

    Raises:
        TypeError: a value JSON cannot hold (e.g. an object, a set).
    """
    if isinstance(value, str):
        plain = _decode(value)
        return value if isinstance(plain, str) and plain == value else json.dumps(value)
    return json.dumps(value)


def decode_param(text: str) -> Any:
    """The value an MLflow param's text stands for: the inverse of :func:`encode_param`.

    JSON is parsed; the Python spellings of runs logged before :func:`encode_param` (``True``,
    ``False``, ``None``, ``nan``, ``inf``, and containers such as ``[True, None]`` or
    ``{'a': 1}``) are read as such; any other text is the string itself.
    """
    return _decode(text)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text in _LEGACY:
        return _LEGACY[text]
    if text[:1] in "[{(" and text.strip():
        # A legacy str() of a container holding Python literals; literal_eval never runs code.
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return text
        return list(value) if isinstance(value, tuple) else value
    return text
