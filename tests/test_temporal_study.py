"""A real local Ray study on synthetic_temporal, logging to a tmp MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from study import tracking as tr
from study.mapped import open_arrays
from study.runner import run_study
from tests.studies import write_study

SAMPLED = {"batch_size": 64, "num_neighbors": [4, 3]}


@pytest.mark.ray
def test_temporal_study_on_a_local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDS_CACHE_DIR", str(tmp_path / "cache"))  # workers get GDS_* too
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    gcn = {"arch": "gcn", "width": 8, "depth": 2, "dropout": 0.0}
    path = write_study(
        tmp_path,
        "temporal",
        dataset={
            "name": "synthetic_temporal",
            "options": {"num_nodes": 200, "num_features": 8},
            "split": {"train_until": 0.5, "val_until": 0.75},
        },
        teacher={**gcn, "train": {"epochs": 3, "lr": 0.01}},
        # Sampled mini-batches: the study's shared teacher outputs and the sampler must come
        # from the train snapshot (tests/test_temporal_leakage.py records that in-process).
        student={**gcn, "width": 4, "train": {**SAMPLED, "epochs": 3, "lr": 0.01}},
        methods=["kd", "lsp"],
        search={},
        searcher={"algorithm": "grid", "max_concurrent": 2, "seed": 0},
    )
    try:
        outcome = run_study(path, tracking_uri=uri, storage=tmp_path / "studies")
    finally:
        ray.shutdown()
    assert outcome.complete and len(outcome.trials) == 2, outcome.trials
    client = MlflowClient(uri)
    methods = set()
    for row in outcome.trials:
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags[tr.TAG_DATASET] == "synthetic_temporal"
        methods.add(run.data.tags[tr.TAG_METHOD])
        for key in (tr.METRIC_VAL, tr.METRIC_TEST):
            assert 0.0 <= run.data.metrics[key] <= 1.0
        history = client.get_metric_history(run.info.run_id, "distill_loss")
        assert history and all(m.value >= 0 for m in history)
    assert methods == {"kd", "lsp"}
    # One teacher-output file for the study: the train snapshot's nodes (all of them; the
    # snapshot drops edges, not nodes).
    (cached,) = (p for p in (tmp_path / "cache" / "teacher-outputs").iterdir() if p.is_dir())
    assert open_arrays(cached)["logits"].tensor.shape == (200, 4)
