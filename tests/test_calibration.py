"""study.calibration: the teacher's model spec comes from its checkpoint artifact."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.calibration import teacher_model_spec
from study.models import build_model
from study.teachers import save_checkpoint, teacher_cache_path


def test_teacher_spec_from_the_checkpoint_rebuilds_the_model(tmp_path: Path) -> None:
    teacher = build_model("gat", in_channels=5, out_channels=3, width=4, depth=2, heads=2)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("c", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    # Params as text that would not rebuild it: the spec must not be read from them.
    client.log_param(run_id, "teacher.heads", "not a number")
    ckpt = save_checkpoint(teacher, tmp_path / "teacher.pt", dataset="tiny")
    client.log_artifact(run_id, str(ckpt), Path(tr.TEACHER_CHECKPOINT_ARTIFACT).parent.as_posix())

    assert not teacher_cache_path(run_id).exists()
    spec = teacher_model_spec(uri, run_id)
    assert spec == teacher.spec
    assert teacher_cache_path(run_id).is_file()  # downloaded into the machine cache
    rebuilt = build_model(**spec)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in teacher.parameters()]

    # From the cache next time: the store is no longer needed.
    (tmp_path / "mlflow.db").unlink()
    assert teacher_model_spec(uri, run_id) == teacher.spec
    assert isinstance(torch.load(teacher_cache_path(run_id), weights_only=True), dict)
