"""`distill-study promote`: the champion alias moves only to a challenger that wins on the same
validation data within the budget; the comparison is recorded on the model version.

A real sqlite MLflow store (tests.mlflow_fixtures) holds study ``promo`` on ``synthetic_sbm``
(its study.yaml logged as a study run logs it): a trained GCN student and an untrained one, each
logged as trials log theirs. `select` registers them; `promote` re-scores them on the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import export
from study import tracking as tr
from study.cli import main
from study.data import load_task
from study.data.base import io_channels
from study.models import build_model
from study.promote import Contender, decide
from study.pyfunc_model import add_task_pyfunc
from study.train import TrainConfig, evaluate, seed_everything, train_teacher
from tests.mlflow_fixtures import fill_study
from tests.studies import tiny_study

STUDY = "promo"
MODEL = f"{STUDY}-student"
P = tr.VTAG_PROMOTE_PREFIX


# --------------------------------------------------------------------------------------------
# The rule, on numbers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("new", "old", "promoted", "why"),
    [
        (Contender("2", 0.8, 1.0), None, True, "no champion"),
        (Contender("2", 0.8, 1.0), Contender("1", 0.7, 0.5), True, "beats"),
        (Contender("2", 0.7, 1.0), Contender("1", 0.7, 0.5), False, "does not beat"),  # a tie
        (Contender("2", 0.6, 1.0), Contender("1", 0.7, 0.5), False, "does not beat"),
        (Contender("2", 0.9, 3.0), Contender("1", 0.7, 0.5), False, "over 2 ms"),
        (Contender("2", 0.9, 3.0), None, False, "over 2 ms"),
        (Contender("2", 0.5, 1.0), Contender("1", math.nan, 1.0, "7 features"), True, "cannot"),
        (Contender("2", math.nan, 1.0, "broken"), None, False, "could not be evaluated"),
    ],
)
def test_decide(new: Contender, old: Contender | None, promoted: bool, why: str) -> None:
    got, reason = decide(new, old, 2.0)
    assert got is promoted and why in reason


# --------------------------------------------------------------------------------------------
# A real store
# --------------------------------------------------------------------------------------------
@dataclass
class Promo:
    uri: str
    root: Path
    val: dict[str, float]  # config -> the student's validation score, computed here


@pytest.fixture(scope="module")
def promo(tmp_path_factory: pytest.TempPathFactory) -> Promo:
    """``good`` (GCN trained 20 epochs; logged val .9, 2 ms) and ``bad`` (untrained; .5, 1 ms)."""
    root = tmp_path_factory.mktemp("promote")
    uri = f"sqlite:///{root}/mlflow.db"
    study = tiny_study(STUDY)
    task = load_task(study["dataset"]["name"], **study["dataset"]["options"])

    def trial(cfg: str, val: float, lat: float) -> dict:
        metrics = {tr.METRIC_VAL: val, tr.METRIC_TEST: val, tr.METRIC_LATENCY_P50: lat}
        return {"method": "none", "dataset": "synthetic_sbm", "config_id": cfg,
                "student_arch": "gcn", "params": {"cfg": cfg}, "metrics": metrics}  # fmt: skip

    ids = fill_study(uri, STUDY, [trial("good", 0.9, 2.0), trial("bad", 0.5, 1.0)])
    client = MlflowClient(uri)
    spec_file = root / "study.yaml"
    spec_file.write_text(yaml.safe_dump(study, sort_keys=False))
    client.log_artifact(ids["parent_run_id"], str(spec_file))  # as runner.start_study_run does
    val = {}
    for run_id, cfg, epochs in zip(ids["trial_run_ids"], ["good", "bad"], [30, 0], strict=True):
        seed_everything(0)
        model = build_model("gcn", width=8, depth=2, dropout=0.0, **io_channels(task))
        if epochs:
            model = train_teacher(model, task, TrainConfig(epochs=epochs, lr=0.01)).model
        folder = export.export_student(model, root / cfg, metadata={"cfg": cfg})
        add_task_pyfunc(folder, task, model)
        client.log_artifacts(run_id, str(folder), artifact_path=tr.STUDENT_ARTIFACT_DIR)
        val[cfg] = evaluate(export.load(folder), task, "val")["score"]
    assert val["good"] > val["bad"], "the trained student should win on validation data"
    return Promo(uri=uri, root=root, val=val)


def _cli(promo: Promo, *args: str) -> int:
    return main([*args, "--tracking-uri", promo.uri])


def _select(promo: Promo, budget: float, out: str, *extra: str) -> int:
    where = ["--out", str(promo.root / out), *extra]
    return _cli(promo, "select", STUDY, "--max-latency-ms", str(budget), *where)


def _version(client: MlflowClient, alias: str) -> str:
    return str(client.get_model_version_by_alias(MODEL, alias).version)


def test_promote_decides_both_ways_and_records_it(promo: Promo, capsys) -> None:
    client = MlflowClient(promo.uri)

    # 1. The first challenger (the untrained student) becomes champion: there is none yet.
    assert _select(promo, 1.5, "v1") == 0
    assert _cli(promo, "promote", STUDY) == 0
    assert "promoted to champion: there was no champion yet" in capsys.readouterr().out
    assert _version(client, tr.ALIAS_CHAMPION) == "1"

    # 2. The trained student wins on the same validation data: the champion moves.
    assert _select(promo, 3.0, "v2") == 0
    assert _version(client, tr.ALIAS_CHALLENGER) == "2"
    assert _cli(promo, "promote", STUDY) == 0
    assert "version 2 promoted to champion" in capsys.readouterr().out
    assert _version(client, tr.ALIAS_CHAMPION) == "2"
    tags = client.get_model_version(MODEL, "2").tags
    assert tags[f"{P}decision"] == tr.PROMOTED and tags[f"{P}champion_version"] == "1"
    assert float(tags[f"{P}challenger_val_score"]) == pytest.approx(promo.val["good"], abs=1e-6)
    assert float(tags[f"{P}champion_val_score"]) == pytest.approx(promo.val["bad"], abs=1e-6)
    assert float(tags[f"{P}challenger_latency_ms_p50"]) > 0
    assert float(tags[f"{P}champion_latency_ms_p50"]) > 0
    assert tags[f"{P}max_latency_ms"] == "3"  # the budget it was selected under
    assert client.get_model_version(MODEL, "1").tags[f"{P}replaced_by"] == "2"

    # 3. The untrained student again (select --promote): it loses, the champion stays.
    assert _select(promo, 1.5, "v3", "--promote") == 0
    assert "version 3 not promoted: validation score" in capsys.readouterr().out
    assert _version(client, tr.ALIAS_CHAMPION) == "2"
    tags = client.get_model_version(MODEL, "3").tags
    assert tags[f"{P}decision"] == tr.KEPT and tags[f"{P}champion_version"] == "2"
    assert float(tags[f"{P}challenger_val_score"]) < float(tags[f"{P}champion_val_score"])

    # 4. Over the budget: kept, whatever its score.
    assert _select(promo, 3.0, "v4") == 0
    assert _cli(promo, "promote", STUDY, "--max-latency-ms", "0.000001") == 0
    assert "is over 1e-06 ms" in capsys.readouterr().out
    assert _version(client, tr.ALIAS_CHAMPION) == "2"
    assert client.get_model_version(MODEL, "4").tags[f"{P}decision"] == tr.KEPT

    # Bad input: one line naming what was wrong, exit 2, nothing written.
    before = {v.version: dict(v.tags) for v in client.search_model_versions(f"name='{MODEL}'")}
    assert _cli(promo, "promote", STUDY, "--model-name", "nope") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and MODEL in err
    assert _cli(promo, "promote", STUDY, "--max-latency-ms", "-1") == 2
    assert "--max-latency-ms" in capsys.readouterr().err
    after = {v.version: dict(v.tags) for v in client.search_model_versions(f"name='{MODEL}'")}
    assert after == before and _version(client, tr.ALIAS_CHAMPION) == "2"
