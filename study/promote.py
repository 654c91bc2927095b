"""Champion and challenger: move a registered model's ``champion`` alias only to a better student.

``distill-study select`` registers each chosen student as a new version with the alias
``challenger``. ``distill-study promote STUDY`` (:func:`promote`) then decides:

1. Both versions (``challenger``, and ``champion`` when there is one) are downloaded and rebuilt
   from their export files (:func:`study.export.load`, weights read with ``weights_only=True``).
2. Both are scored on the **validation** split of STUDY's dataset (the same data for both, the
   study's own metric, :func:`study.train.evaluate`); the test split is never read. Both are
   timed side by side on the study's latency input, with its latency settings, under the
   challenger's runtime (PyTorch, or ONNX Runtime when it was selected with ``--runtime onnx``).
3. :func:`decide`: the challenger becomes champion when its latency is within the budget and
   there is no champion, the champion cannot run on this data (another feature width or class
   count), or the challenger's validation score is strictly higher. Otherwise the champion stays.
4. The comparison is recorded on the challenger's version as tags ``gds.promote.*`` (both
   scores, both latencies, the budget, the runtime, the decision and why); a replaced champion's
   version gets ``gds.promote.replaced_by``.

The budget is ``--max-latency-ms``, else the one the challenger was selected under (its version
tag ``max_latency_ms``). Bad input (an unknown model, no challenger, a bad budget, a study whose
data cannot be loaded) is refused before anything is written.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study import tracking as tr
from study.errors import UserInputError

__all__ = ["Contender", "PromoteResult", "decide", "promote", "describe_promotion"]


@dataclass(frozen=True)
class Contender:
    """One version measured for the decision: validation score and p50 latency (NaN when it
    could not be measured; ``error`` then says why)."""

    version: str
    val_score: float
    latency_ms_p50: float
    error: str = ""


@dataclass(frozen=True)
class PromoteResult:
    """What :func:`promote` compared, decided and recorded."""

    model_name: str
    study: str
    challenger: Contender
    champion: Contender | None
    max_latency_ms: float
    runtime: str
    promoted: bool
    reason: str
    champion_after: str
    tags: dict[str, str] = field(default_factory=dict)


def decide(
    challenger: Contender, champion: Contender | None, max_latency_ms: float
) -> tuple[bool, str]:
    """``(promote?, why)`` from the two measurements (rules in the module docstring)."""
    lat = challenger.latency_ms_p50
    if challenger.error or not math.isfinite(challenger.val_score):
        return False, f"the challenger could not be evaluated ({challenger.error or 'no score'})"
    if not math.isfinite(lat) or lat > max_latency_ms:
        return False, f"the challenger's latency p50 {lat:.3f} ms is over {max_latency_ms:g} ms"
    if champion is None:
        return True, "there was no champion yet"
    if champion.error or not math.isfinite(champion.val_score):
        return True, f"the champion cannot run on this validation data ({champion.error})"
    if challenger.val_score > champion.val_score:
        return True, (
            f"validation score {challenger.val_score:.4f} beats the champion's "
            f"{champion.val_score:.4f}"
        )
    return False, (
        f"validation score {challenger.val_score:.4f} does not beat the champion's "
        f"{champion.val_score:.4f}"
    )


# --------------------------------------------------------------------------------------------
# Reading the registry and the study
# --------------------------------------------------------------------------------------------
def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _check_model(client: Any, name: str, key: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise UserInputError(
            f"{key}: no registered model {name!r} (found: {', '.join(known) or 'none'}); "
            "`distill-study select` registers one"
        ) from None


def study_spec(client: Any, study: str) -> Any:
    """The validated spec of ``study``, from the ``study.yaml`` its study run logged."""
    from study.config import parse_study_text

    exp = client.get_experiment_by_name(study)
    runs = (
        client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_STUDY}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if exp is not None
        else []
    )
    if not runs:
        raise UserInputError(f"study {study!r}: no study run in the MLflow store")
    from study.select import PROGRESS_ENV, scoped_env

    with tempfile.TemporaryDirectory() as tmp, scoped_env(PROGRESS_ENV, "false"):
        path = client.download_artifacts(runs[0].info.run_id, "study.yaml", tmp)
        text = Path(path).read_text()
    return parse_study_text(text, f"study {study!r} (its logged study.yaml)")


def _download(client: Any, name: str, version: str, dest: Path) -> Path:
    import mlflow.artifacts

    from study.select import PROGRESS_ENV, scoped_env

    source = client.get_model_version_download_uri(name, version)
    with scoped_env(PROGRESS_ENV, "false"):  # the command prints one report, not a meter
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest))
    return Path(local)


def measure(client: Any, name: str, version: Any, task: Any, spec: Any, runtime: str) -> Contender:
    """Score a version on ``task``'s validation split and time it (never the test split)."""
    from study import export
    from study.context import study_latency
    from study.train import evaluate

    number = str(version.version)
    with tempfile.TemporaryDirectory() as tmp:
        # A registry, network or file error is no verdict on the model: it propagates (and
        # nothing moves). Only a model that loads but cannot run on this data is an outcome.
        model = export.load(_download(client, name, number, Path(tmp)))
    try:
        score = float(evaluate(model, task, "val", with_auroc=False)["score"])
    except (RuntimeError, ValueError, IndexError) as err:  # shapes, channels, classes
        return Contender(number, math.nan, math.nan, _first_line(err))
    if runtime == "onnx":
        from study.context import latency_input
        from study.onnx_runtime import OnnxUnavailable, onnx_latency

        try:
            lat = onnx_latency(
                model,
                latency_input(task, model=model),
                repeats=spec.latency.repeats,
                warmup=spec.latency.warmup,
                threads=spec.latency.threads,
            ).p50_ms
        except OnnxUnavailable as err:
            return Contender(number, score, math.nan, f"no ONNX Runtime latency: {err}")
    else:
        lat = study_latency(model, task, spec, "cpu").p50_ms
    return Contender(number, score, lat)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


# --------------------------------------------------------------------------------------------
# Deciding and recording
# --------------------------------------------------------------------------------------------
def promote(
    study: str,
    *,
    model_name: str | None = None,
    max_latency_ms: float | None = None,
    runtime: str | None = None,
    tracking_uri: str | None = None,
    data_root: str | None = None,
    task: Any = None,
) -> PromoteResult:
    """Compare the ``challenger`` of ``model_name`` with its ``champion`` on ``study``'s
    validation data and move ``champion`` when the challenger wins (module docstring).

    Args:
        study: the study whose dataset (validation split) and latency settings are used.
        model_name: the registered model (default ``<study>-student``).
        max_latency_ms: the budget (default: the challenger's ``max_latency_ms`` tag).
        runtime: ``torch`` or ``onnx`` (default: the challenger's ``gds.runtime`` tag, else
            ``torch``).
        tracking_uri: MLflow tracking URI (default :func:`study.tracking.resolve_tracking_uri`).
        data_root: datasets folder (default ``$GDS_DATA_ROOT``).
        task: the study's dataset already loaded (the pipeline passes it), else loaded here.

    Raises:
        UserInputError: an unknown model or study, no challenger, a bad budget or runtime.
    """
    from study.context import load_study_task
    from study.select import check_budget, default_model_name, latency_column

    uri = tr.resolve_tracking_uri(tracking_uri)
    path = tr.sqlite_path(uri)
    if path is not None and not path.exists():
        raise UserInputError(f"--tracking-uri: {uri} has no MLflow store (no file {path})")
    client = tr.open_store(uri)
    name = model_name or default_model_name(study)
    _check_model(client, name, "--model-name" if model_name else f"study {study!r} (its model)")
    challenger = _alias_version(client, name, tr.ALIAS_CHALLENGER)
    if challenger is None:
        raise UserInputError(
            f"registered model {name!r} has no {tr.ALIAS_CHALLENGER!r} alias: "
            "`distill-study select` sets it on the version it registers"
        )
    budget_given = (
        max_latency_ms if max_latency_ms is not None else challenger.tags.get(tr.VTAG_MAX_LATENCY)
    )
    if budget_given is None:
        raise UserInputError(
            f"--max-latency-ms: required (version {challenger.version} of {name!r} records no "
            f"{tr.VTAG_MAX_LATENCY} tag)"
        )
    budget = check_budget(budget_given)
    run_time = runtime or challenger.tags.get(tr.VTAG_RUNTIME, "torch")
    latency_column(run_time)  # refuses an unknown runtime
    champion = _alias_version(client, name, tr.ALIAS_CHAMPION)
    spec = study_spec(client, study)
    if task is None:
        task = load_study_task(spec, data_root)

    if champion is not None and str(champion.version) == str(challenger.version):
        nothing = Contender(str(champion.version), math.nan, math.nan)
        why = f"version {champion.version} is already the champion; nothing to decide"
        return PromoteResult(
            name, study, nothing, nothing, budget, run_time, False, why, nothing.version
        )
    new = measure(client, name, challenger, task, spec, run_time)
    old = None if champion is None else measure(client, name, champion, task, spec, run_time)
    promoted, reason = decide(new, old, budget)
    tags = _promotion_tags(study, new, old, budget, run_time, promoted, reason)
    for key, value in tags.items():
        client.set_model_version_tag(name, new.version, key, value)
    after = old.version if old is not None else ""
    if promoted:
        client.set_registered_model_alias(name, tr.ALIAS_CHAMPION, new.version)
        if old is not None:
            client.set_model_version_tag(
                name, old.version, f"{tr.VTAG_PROMOTE_PREFIX}replaced_by", new.version
            )
        after = new.version
    return PromoteResult(name, study, new, old, budget, run_time, promoted, reason, after, tags)


def _promotion_tags(
    study: str,
    new: Contender,
    old: Contender | None,
    budget: float,
    runtime: str,
    promoted: bool,
    reason: str,
) -> dict[str, str]:
    p = tr.VTAG_PROMOTE_PREFIX
    nan = float("nan")
    return {
        f"{p}decision": tr.PROMOTED if promoted else tr.KEPT,
        f"{p}reason": reason[:500],
        f"{p}validation_data": f"study {study} (validation split)",
        f"{p}max_latency_ms": f"{budget:g}",
        f"{p}runtime": runtime,
        f"{p}challenger_val_score": f"{new.val_score:.6g}",
        f"{p}challenger_latency_ms_p50": f"{new.latency_ms_p50:.6g}",
        f"{p}champion_version": old.version if old is not None else "none",
        f"{p}champion_val_score": f"{old.val_score if old is not None else nan:.6g}",
        f"{p}champion_latency_ms_p50": f"{old.latency_ms_p50 if old is not None else nan:.6g}",
        f"{p}at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe_promotion(result: PromoteResult) -> str:
    """The lines ``distill-study promote`` prints."""

    def row(who: str, c: Contender | None) -> str:
        if c is None:
            return f"  {who}: none"
        note = f" ({c.error})" if c.error else ""
        return (
            f"  {who}: version {c.version}, validation score {c.val_score:.4f}, latency p50 "
            f"{c.latency_ms_p50:.3f} ms{note}"
        )

    verdict = "promoted to champion" if result.promoted else "not promoted"
    if result.champion is not None and result.champion.version == result.challenger.version:
        return f"{result.model_name!r}: {result.reason}"
    return "\n".join(
        [
            f"{result.model_name!r}: challenger version {result.challenger.version} {verdict}: "
            f"{result.reason}",
            row("challenger", result.challenger),
            row("champion  ", result.champion),
            f"  budget: {result.max_latency_ms:g} ms ({result.runtime}); validation data of "
            f"study {result.study!r}",
            f"  champion now: version {result.champion_after or 'none'}",
        ]
    )
