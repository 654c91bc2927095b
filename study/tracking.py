"""MLflow names shared by the studies that write runs and the analysis that reads them.

The layout (the contract ``analysis`` relies on):
- experiment = the study name;
- one parent run per study: tag ``gds.role=study``, run name = study name;
- one teacher run per distinct teacher spec: tag ``gds.role=teacher``, checkpoint as artifact;
- one child run per trial: tags ``gds.role=trial``, ``mlflow.parentRunId``, ``method``,
  ``dataset``, ``seed``, ``config_id``, ``teacher_run_id``, ``device``; hyperparameters as params;
  per-epoch metrics; final metrics :data:`FINAL_METRICS`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
TAG_NODE = "gds.node_id"  # the Ray node a trial ran on

METRIC_VAL = "val_score"
METRIC_TEST = "test_score"
METRIC_LATENCY_P50 = "latency_ms_p50"
METRIC_LATENCY_P90 = "latency_ms_p90"
METRIC_PARAMS = "num_params"
METRIC_TRAIN_SECONDS = "train_seconds"
FINAL_METRICS = (
    METRIC_VAL,
    METRIC_TEST,
    METRIC_LATENCY_P50,
    METRIC_LATENCY_P90,
    METRIC_PARAMS,
    METRIC_TRAIN_SECONDS,
)
# Final metrics some trials log beside those: the split metrics behind test_score (AUROC for
# binary and multi-label tasks, mean class accuracy for point clouds) and the in-trial latency
# that study.calibration replaces.
EXTRA_METRICS = (
    "test_accuracy",
    "test_micro_f1",
    "test_auroc",
    "test_mean_class_accuracy",
    "latency_ms_p50_in_trial",
)
# Per-epoch metric keys (logged with step=epoch).
EPOCH_METRICS = ("train_loss", "distill_loss", "epoch_val_score")

TEACHER_CHECKPOINT_ARTIFACT = "teacher/teacher.pt"
# Each trial's trained student, as written by study.export (weights, config, TorchScript).
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


def download_artifact(tracking_uri: str, run_id: str, artifact_path: str, dest: Path) -> Path:
    """Download one artifact file of a run to ``dest`` atomically (a partial download never
    stands at ``dest``, so a machine-wide cache can be filled by several workers at once)."""
    import mlflow

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=tmp, tracking_uri=tracking_uri
        )
        os.replace(local, dest)
    return dest
