"""The production loop in one command: ``distill-study pipeline FILE --max-latency-ms X``.

One run is one **round** of the study file FILE (study name S):

1. The file is validated and its data loaded; the data's fingerprint
   (:func:`study.data.base.data_fingerprint`) is taken.
2. The round gets the next free study name ``S-r<N>`` (studies are claimed and read-only once
   finished, so every round is a study of its own) and a pipeline run in the experiment
   ``S-pipeline`` (tag ``gds.role=pipeline``, the round, the fingerprint, FILE).
3. The round's study runs (:func:`study.runner.run_study`): the teacher is reused when a teacher
   run of the same spec **and data** exists (its hash covers the fingerprint), else trained; new
   data therefore means a new teacher. The teacher's validation and test scores (the accuracy
   ceiling of its students) are logged on the pipeline run.
4. ``select`` under the budget exports the best student to ``OUT/S-r<N>`` and registers it as a
   new version of ``S-student`` with the alias ``challenger``.
5. ``promote`` compares it with the ``champion`` on this round's validation data and moves the
   alias only when it wins (:mod:`study.promote`).

Lineage: the pipeline run carries the teacher run, the study run and the model version; the study
run carries the round and fingerprint; the version carries the teacher run, the study, the study
run, the round, the fingerprint and the promotion record.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study import tracking as tr
from study.errors import UserInputError
from study.promote import PromoteResult, describe_promotion, promote
from study.select import SelectionResult, describe_selection

ROUND_PATTERN = "{study}-r{n}"
PIPELINE_EXPERIMENT = "{study}-pipeline"


@dataclass(frozen=True)
class PipelineResult:
    """What one round did: where, on which data, with which teacher, and what it registered."""

    study: str
    round: int
    round_study: str
    data_fingerprint: str
    pipeline_run_id: str
    teacher_run_id: str
    teacher_trained: bool  # False: a teacher run of the same spec and data was reused
    teacher_val_score: float
    teacher_test_score: float
    selection: SelectionResult
    promotion: PromoteResult


def next_round(client: Any | None, storage: Path, study: str) -> int:
    """1 + the highest round ``N`` of ``study-r<N>`` among MLflow experiments (``client``; None
    for a store not made yet) and study folders (1 for the first round)."""
    pattern = re.compile(rf"^{re.escape(study)}-r(\d+)$")
    names = [] if client is None else [e.name for e in client.search_experiments(max_results=50000)]
    if storage.is_dir():
        names += [p.name for p in storage.iterdir()]
    rounds = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    return max(rounds, default=0) + 1


def _pipeline_run(
    client: Any, study: str, round_study: str, n: int, fingerprint: str, params: dict[str, str]
) -> str:
    from study.runner import EXPERIMENT_KIND

    exp_name = PIPELINE_EXPERIMENT.format(study=study)
    exp = client.get_experiment_by_name(exp_name)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(exp_name, tags=dict([EXPERIMENT_KIND]))
    )
    run = client.create_run(
        exp_id,
        run_name=round_study,
        tags={
            tr.TAG_ROLE: tr.ROLE_PIPELINE,
            tr.TAG_STUDY: round_study,
            tr.TAG_PIPELINE_ROUND: str(n),
            tr.TAG_DATA_FINGERPRINT: fingerprint,
        },
    )
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return str(run.info.run_id)


def run_pipeline(
    path: str | os.PathLike,
    max_latency_ms: float,
    *,
    tracking_uri: str | None = None,
    storage: str | os.PathLike | None = None,
    address: str | None = None,
    data_root: str | None = None,
    model_name: str | None = None,
    out: str | os.PathLike | None = None,
    runtime: str = "torch",
) -> PipelineResult:
    """Run one round of the production loop for the study file ``path`` (module docstring).

    Args:
        path: the study file.
        max_latency_ms: the latency budget of ``select`` and ``promote``.
        tracking_uri, storage, address, data_root: as for ``distill-study run``.
        model_name: the registered model (default ``<study>-student``, shared by all rounds).
        out: the folder of the rounds' exports (default ``./exports``); this round's is
            ``out/<study>-r<N>`` and must not exist yet.
        runtime: ``torch`` or ``onnx``: whose latency the budget holds.

    Raises:
        UserInputError: bad input, found before anything starts.
        NoConfigWithinBudget: the round's study has no student within the budget; the round's
            study and pipeline run stay (the run FAILED, with the reason), nothing is registered.
    """
    from study.data.base import data_fingerprint
    from study.export import check_target
    from study.preflight import load_and_check
    from study.runner import load_study, run_study, storage_root, store_exists
    from study.select import (
        check_budget,
        check_model_name,
        default_model_name,
        latency_column,
        select_and_export,
    )

    budget = check_budget(max_latency_ms)
    latency_column(runtime)
    spec, _ = load_study(path)
    name = check_model_name(model_name or default_model_name(spec.name))
    task = load_and_check(spec, data_root)
    fingerprint = data_fingerprint(task)
    uri = tr.resolve_tracking_uri(tracking_uri)
    root = storage_root(storage)
    # A missing sqlite store is made only once every check has passed.
    n = next_round(tr.open_store(uri) if store_exists(uri) else None, root, spec.name)
    round_study = ROUND_PATTERN.format(study=spec.name, n=n)
    out_dir = Path(os.path.abspath(out or "exports")) / round_study
    check_target(out_dir, "--out")
    client = tr.open_store(uri)
    params = {
        "file": str(path),
        "max_latency_ms": f"{budget:g}",
        "runtime": runtime,
        "model_name": name,
    }
    run_id = _pipeline_run(client, spec.name, round_study, n, fingerprint, params)
    status = "FAILED"
    try:
        print(
            f"[gds] pipeline round {n} of {spec.name!r}: study {round_study!r}, data {fingerprint}"
        )
        outcome = run_study(
            path,
            tracking_uri=uri,
            storage=storage,
            address=address,
            data_root=data_root,
            name=round_study,
        )
        for key, value in ((tr.TAG_PIPELINE_ROUND, str(n)), (tr.TAG_DATA_FINGERPRINT, fingerprint)):
            client.set_tag(outcome.parent_run_id, key, value)
        teacher = client.get_run(outcome.teacher_run_id)
        trained = teacher.data.tags.get(tr.TAG_STUDY) == round_study
        t_val = float(teacher.data.metrics.get(tr.METRIC_VAL, math.nan))
        t_test = float(teacher.data.metrics.get(tr.METRIC_TEST, math.nan))
        client.set_tag(run_id, tr.TAG_TEACHER_RUN, outcome.teacher_run_id)
        client.set_tag(run_id, "gds.teacher_trained", str(trained).lower())
        client.set_tag(run_id, tr.VTAG_STUDY_RUN, outcome.parent_run_id)
        for metric, score in (("teacher_val_score", t_val), ("teacher_test_score", t_test)):
            if math.isfinite(score):
                client.log_metric(run_id, metric, score)
        if not outcome.complete:
            raise UserInputError(
                f"study {round_study!r} did not complete ({outcome.finished} of "
                f"{len(outcome.trials)} trials finished, {outcome.errors} errored); nothing "
                "was selected"
            )
        selection = select_and_export(
            round_study, budget, out_dir, tracking_uri=uri, model_name=name, runtime=runtime
        )
        version = selection.model_version
        for key, value in ((tr.TAG_PIPELINE_ROUND, str(n)), (tr.TAG_DATA_FINGERPRINT, fingerprint)):
            client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, "model_name", name)
        client.set_tag(run_id, "model_version", version)
        client.log_metric(run_id, "student_val_score", selection.val_score)
        if math.isfinite(selection.test_score):
            client.log_metric(run_id, "student_test_score", selection.test_score)
        promotion = promote(
            round_study,
            model_name=name,
            max_latency_ms=budget,
            runtime=runtime,
            tracking_uri=uri,
            task=task,
        )
        decision = tr.PROMOTED if promotion.promoted else tr.KEPT
        client.set_tag(run_id, f"{tr.VTAG_PROMOTE_PREFIX}decision", decision)
        client.set_tag(run_id, f"{tr.VTAG_PROMOTE_PREFIX}reason", promotion.reason[:500])
        client.set_tag(run_id, "champion_version", promotion.champion_after)
        status = "FINISHED"
    except BaseException as err:
        client.set_tag(run_id, tr.TAG_ERROR, str(err).splitlines()[0][:500] if str(err) else "")
        raise
    finally:
        client.set_terminated(run_id, status=status)
    return PipelineResult(
        study=spec.name,
        round=n,
        round_study=round_study,
        data_fingerprint=fingerprint,
        pipeline_run_id=run_id,
        teacher_run_id=outcome.teacher_run_id,
        teacher_trained=trained,
        teacher_val_score=t_val,
        teacher_test_score=t_test,
        selection=selection,
        promotion=promotion,
    )


def describe_pipeline(result: PipelineResult) -> str:
    """The lines ``distill-study pipeline`` prints after the study's own output."""
    teacher = "trained for this data" if result.teacher_trained else "reused (same spec and data)"
    return "\n".join(
        [
            f"pipeline round {result.round} of {result.study!r}: study {result.round_study!r} "
            f"on data {result.data_fingerprint} (pipeline run {result.pipeline_run_id})",
            f"teacher run {result.teacher_run_id}: {teacher}; validation score "
            f"{result.teacher_val_score:.4f}, test score {result.teacher_test_score:.4f} "
            "(the ceiling)",
            describe_selection(result.selection),
            describe_promotion(result.promotion),
        ]
    )
