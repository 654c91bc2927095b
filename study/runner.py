"""YAML -> Ray Tune ``Tuner`` (Optuna searcher, scheduler, resources, MLflow), and resume.

A study is validated completely before anything starts. Then: Ray (local by default), the MLflow
experiment and the study's parent run, the teacher (trained once per spec, or reused from any
earlier study by its hash), and the Tuner. The study's folder ``<storage>/<name>/`` holds Tune's
state and ``gds_context.json``, which is all ``resume`` needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study import allocator
from study import tracking as tr
from study.catalog import module_origin
from study.config import StudySpec, parse_study_spec, read_study_mapping, stable_hash, teacher_hash
from study.context import StudyContext, load_study_task, trial_device
from study.data.base import Task, data_fingerprint, io_channels
from study.errors import UserInputError
from study.latency import count_parameters
from study.latency_service import logged_figures, measure_figure, start_cache
from study.models import build_model
from study.preflight import load_and_check
from study.quiet import Worker, lock_dir
from study.search import JsonOptunaSearch, make_search, read_json
from study.studyfile import read_study_file
from study.teachers import load_teacher_weights, save_checkpoint
from study.train import evaluate, seed_everything, train_teacher, with_device
from study.trial import RESULT_ERROR, run_trial

CONTEXT_FILE = "gds_context.json"
DEFAULT_STORAGE = "~/ray_results"


#: In a trial's row of :class:`StudyOutcome`: the scheduler stopped it (see settle_stopped).
ROW_STOPPED_EARLY = "stopped_early"


@dataclass
class StudyOutcome:
    """What a finished (or interrupted) study leaves: where, and its trials' final rows.

    ``errors`` counts trials Tune saw fail (a crash past ``max_failures``); ``failed`` holds the
    trials that ended with a recorded reason (training diverged: run FAILED, ``gds.error``), as
    ``mlflow_run_id -> reason``. A diverged trial is a finding about its hyperparameters, not a
    broken study: the study is :attr:`complete` when no trial errored, every trial ended
    (finished or diverged) and at least one finished.
    """

    name: str
    path: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    teacher_run_id: str
    trials: list[dict[str, Any]]
    errors: int
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        """Trials that finished with a test score."""
        return sum(t.get(tr.METRIC_TEST) is not None for t in self.trials)

    @property
    def stopped_early(self) -> int:
        """Trials the scheduler (ASHA) stopped before ``max_t``: ended, but no final scores."""
        return sum(bool(t.get(ROW_STOPPED_EARLY)) for t in self.trials)

    @property
    def ended(self) -> bool:
        """Every trial finished, was stopped by the scheduler or failed with a recorded reason
        (none interrupted)."""
        return all(
            t.get(tr.METRIC_TEST) is not None or t.get(RESULT_ERROR) or t.get(ROW_STOPPED_EARLY)
            for t in self.trials
        )

    @property
    def complete(self) -> bool:
        return self.errors == 0 and self.ended and self.finished > 0

    @property
    def status(self) -> str:
        """The parent run's status: FINISHED when complete; FAILED when a trial errored or every
        trial failed; KILLED when interrupted (``resume`` continues it)."""
        if self.complete:
            return "FINISHED"
        return "FAILED" if self.errors or self.ended else "KILLED"


# ---------------------------------------------------------------- validation before anything starts


def storage_root(storage: str | os.PathLike | None) -> Path:
    """The folder that holds study folders (Tune's ``storage_path``), absolute."""
    return Path(storage or DEFAULT_STORAGE).expanduser().resolve()


def check_new_study(spec: StudySpec, storage: Path, tracking_uri: str) -> None:
    """Refuse to start a study whose name is taken: nothing a user already has is overwritten.

    Reads the study's folder, and MLflow when the store exists (a missing sqlite store is left
    uncreated). Only a check: :func:`run_study` repeats it under :func:`claim_name`, where it
    decides.
    """
    folder = storage / spec.name
    if folder.exists() and any(folder.iterdir()):
        raise UserInputError(
            f"{spec.source}: name: a study {spec.name!r} already exists in {folder}; "
            f"continue it with `distill-study resume {spec.name} --storage {storage}` "
            "or choose another name"
        )
    if not store_exists(tracking_uri):
        return
    client = tr.open_store(tracking_uri)
    exp = client.get_experiment_by_name(spec.name)
    if exp is not None and _study_runs(client, exp.experiment_id):
        raise UserInputError(
            f"{spec.source}: name: MLflow at {tracking_uri} already holds a study {spec.name!r}; "
            "choose another name (or delete that experiment)"
        )


def store_exists(tracking_uri: str) -> bool:
    """False for a sqlite store whose file is not there yet (asking MLflow would create it)."""
    path = tr.sqlite_path(tracking_uri)
    return path is None or path.exists()


def claim_lock_path(storage: Path, name: str) -> Path:
    """The lock file :func:`claim_name` holds for study ``name``, beside its folder."""
    return storage / f".gds-claim-{name}.lock"


@contextlib.contextmanager
def claim_name(storage: Path, name: str) -> Iterator[None]:
    """Hold study ``name``'s claim lock in ``storage`` (created, with ``storage``, if missing).

    While it is held, a second ``run`` of the same name waits; once the holder has made the
    study's MLflow run and folder, the waiter's :func:`check_new_study` refuses it. Other
    names are not held up. Shared only by runs that share ``storage``.
    """
    storage.mkdir(parents=True, exist_ok=True)
    waiting = f"[gds] another `run` is starting study {name!r} in {storage}; waiting for it"
    with tr.file_lock(claim_lock_path(storage, name), waiting):
        yield


def _study_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{tr.TAG_ROLE}` = '{tr.ROLE_STUDY}'"
    )


def user_modules(spec: StudySpec) -> list[str]:
    """The study's own modules Ray must ship to every worker: the files or packages beside the
    study file that its factories (dataset, teacher, student) import. Installed packages are
    not shipped: a cluster must have them installed like the project itself."""
    refs: list[tuple[str | None, str | None]] = [(spec.dataset.factory, spec.dataset.base_dir)]
    refs += [(m.factory, m.base_dir) for m in (spec.teacher.model, spec.student.model)]
    found = {module_origin(f, d) for f, d in refs if f is not None and d is not None}
    return sorted(str(p) for p in found if p is not None)


# ---------------------------------------------------------------- Ray, MLflow, teacher


#: The only address a local study's Ray listens on (README: "Ray's network listeners").
LOCAL_RAY_IP = "127.0.0.1"


@contextlib.contextmanager
def _loopback_node_ip() -> Iterator[None]:
    """While ``ray.init`` runs, let it keep a loopback node IP.

    ``ray.init(_node_ip_address="127.0.0.1")`` alone is not enough: Ray replaces a loopback
    address by the host's routable one (``services.resolve_ip_for_localhost``) unless Ray
    clusters are switched off, which ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does once, at
    import, into ``ray_constants.ENABLE_RAY_CLUSTER`` (too late for an environment variable
    here). With a routable node IP, Ray 2.60's GCS, raylet and core-worker gRPC servers listen
    on every interface; with 127.0.0.1 they and the runtime-env agent listen on loopback only.
    """
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield  # a Ray without the switch: the node IP is checked after start
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def start_ray(address: str | None = None, py_modules: list[str] | None = None) -> None:
    """Connect to ``address`` (or ``$RAY_ADDRESS``), else start a local Ray without a dashboard.

    A local Ray is a new one of this process's own (never another Ray already on the host) and
    listens on 127.0.0.1 only. ``py_modules`` (a user's module files or packages) travel to
    every worker through Ray's runtime environment, so that a multi-node study imports them on
    every node. When Ray is already running in this process (started by the caller) its runtime
    environment is kept and the modules are found through their folder on this machine's path
    instead.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k.startswith("GDS_") or k == tr.TRACKING_URI_ENV}
    env = {**allocator.env_for_workers(), **env}  # glibc reads these when a worker starts
    env = {**_zero_copy_tensors(), **env}
    runtime_env: dict[str, Any] = {"env_vars": env} if env else {}
    if py_modules:
        runtime_env["py_modules"] = list(py_modules)
    if address:
        ray.init(address=address, runtime_env=runtime_env or None, log_to_driver=True)
        return
    with _loopback_node_ip():
        # "local": a new Ray, even when ray_current_cluster names a Ray someone else started.
        ray.init(
            address="local",
            _node_ip_address=LOCAL_RAY_IP,
            include_dashboard=False,
            runtime_env=runtime_env or None,
            log_to_driver=True,
        )
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        print(
            f"[gds] warning: this Ray kept node IP {node_ip}, not {LOCAL_RAY_IP}: its servers "
            "may listen on every interface (README: Ray's network listeners)"
        )


#: Ray's switch (2.4x and later) for torch tensors read from the object store without a copy.
ZERO_COPY_TENSORS_ENV = "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"


def _zero_copy_tensors() -> dict[str, str]:
    """Switch on Ray's zero-copy torch tensors here and return the variable workers need.

    The study's dataset goes to trials through the object store (``tune.with_parameters``).
    By default Ray pickles tensors, so every trial worker unpickles its own copy of the graph;
    with the switch a worker's tensors are views of the object store's shared memory: one copy
    of the graph per machine, whatever the number of trials. Such tensors must not be written
    in place (nothing here does: training reads features, labels and edges). The driver reads
    the switch when Ray starts, from ``ray_constants`` (set at import, so set here directly);
    workers read it from their environment.
    """
    import warnings

    from ray._private import ray_constants

    if hasattr(ray_constants, ZERO_COPY_TENSORS_ENV):
        setattr(ray_constants, ZERO_COPY_TENSORS_ENV, True)
    with contextlib.suppress(ImportError):
        from ray._private.tensor_serialization_utils import ZeroCopyTensorsWarning

        # Said of every tensor put: the dataset's tensors are the read-only kind it asks for.
        warnings.filterwarnings("ignore", category=ZeroCopyTensorsWarning)
    return {ZERO_COPY_TENSORS_ENV: "1"}


# MLflow 3's UI shows an experiment of this kind as model training (runs), not GenAI traces.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def start_study_run(
    client: MlflowClient, spec: StudySpec, spec_text: str, num_trials: int
) -> tuple[str, str]:
    """The study's experiment (created if missing) and its parent run. The experiment carries
    ``mlflow.experimentKind=custom_model_development``, also when it already existed, so MLflow
    3's UI opens it on its runs instead of the GenAI traces page."""
    exp = client.get_experiment_by_name(spec.name)
    if exp is None:
        experiment_id = client.create_experiment(spec.name, tags=dict([EXPERIMENT_KIND]))
    else:
        experiment_id = exp.experiment_id
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    run = client.create_run(
        experiment_id,
        run_name=spec.name,
        tags={
            tr.TAG_ROLE: tr.ROLE_STUDY,
            tr.TAG_STUDY: spec.name,
            tr.TAG_DATASET: spec.dataset.label,
        },
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[
            Param("num_trials", str(num_trials)),
            Param("methods", ",".join(spec.methods)),
            Param("seeds", ",".join(map(str, spec.seeds))),
            Param("searcher", spec.searcher.algorithm),
            Param("objectives", ",".join(f"{o.metric}:{o.mode}" for o in spec.objectives)),
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(spec_text)
        client.log_artifact(run_id, str(path))
    return experiment_id, run_id


def find_teacher_run(client: MlflowClient, thash: str) -> str | None:
    """A finished teacher run with this spec hash in any experiment, if one exists."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string=(
            f"tags.`{tr.TAG_TEACHER_HASH}` = '{thash}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _log_teacher_run(
    client: MlflowClient,
    experiment_id: str,
    spec: StudySpec,
    thash: str,
    model: Any,
    task: Task,
    metrics: dict[str, float],
    device: str,
) -> str:
    run = client.create_run(
        experiment_id,
        run_name=f"teacher-{thash[:8]}",
        tags={
            tr.TAG_ROLE: tr.ROLE_TEACHER,
            tr.TAG_TEACHER_HASH: thash,
            tr.TAG_DATASET: spec.dataset.label,
            tr.TAG_STUDY: spec.name,
            tr.TAG_DEVICE: device,
            "arch": spec.teacher.model.label,
        },
    )
    run_id = run.info.run_id
    try:
        figure = measure_figure(model, task, spec, device)  # as the students' (for the plots)
        metrics = {**metrics, **figure.metrics(), tr.METRIC_PARAMS: float(count_parameters(model))}
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in figure.tags().items()],
            params=[
                Param(f"teacher.{k}", tr.encode_param(v)) for k, v in sorted(model.spec.items())
            ],
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(
                model.cpu(), Path(tmp) / "teacher.pt", dataset=spec.dataset.label, metrics=metrics
            )
            client.log_artifact(
                run_id,
                str(path),
                artifact_path=Path(tr.TEACHER_CHECKPOINT_ARTIFACT).parent.as_posix(),
            )
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def _train_teacher_task(
    spec: StudySpec, tracking_uri: str, experiment_id: str, thash: str, task: Task
) -> str:
    """Train the study's teacher (in a Ray task, on the trial resources) and log it as a run."""
    device = trial_device(spec.resources.gpu)
    seed_everything(spec.teacher.train.seed)  # the seed fixes the initial weights too
    model = build_model(
        spec.teacher.model.arch, **spec.teacher.model.build_kwargs(), **io_channels(task)
    )
    with Worker() as worker:  # training: a latency timed on this machine waits for an epoch end
        result = train_teacher(
            model,
            task,
            with_device(spec.teacher.train, device),
            progress=True,
            on_epoch=lambda *_: worker.pause_point(),
        )
    metrics = {
        tr.METRIC_VAL: result.val_score,
        tr.METRIC_TEST: result.test_score,
        tr.METRIC_TRAIN_SECONDS: result.train_seconds,
    }
    return _log_teacher_run(
        tr.open_store(tracking_uri), experiment_id, spec, thash, result.model, task, metrics, device
    )


def teacher_run_hash(spec: StudySpec, task: Task) -> str:
    """What a teacher run is found again by: its spec, a given checkpoint's bytes, and the data
    itself (another copy or split of a dataset gets its own teacher). A checkpoint enters beside
    the spec: the same file under other ``hidden`` names or options is another teacher run, since
    its spec is what trials rebuild."""
    weights = (
        hashlib.sha256(Path(spec.teacher.checkpoint).read_bytes()).hexdigest()
        if spec.teacher.checkpoint
        else None
    )
    source = {"spec": teacher_hash(spec), "weights": weights}
    return stable_hash({"teacher": source, "data": data_fingerprint(task)}, length=16)


def ensure_teacher(
    client: MlflowClient,
    spec: StudySpec,
    task: Task,
    tracking_uri: str,
    experiment_id: str,
) -> tuple[str, str]:
    """``(teacher_run_id, teacher_hash)``: reuse a finished teacher run of the same spec and
    data, else train (or, with ``teacher.checkpoint``, log) one."""
    thash = teacher_run_hash(spec, task)
    found = find_teacher_run(client, thash)
    if found is not None:
        print(f"[gds] reusing teacher run {found} (spec hash {thash})")
        return found, thash
    if spec.teacher.checkpoint:
        kwargs = {"arch": spec.teacher.model.arch, **spec.teacher.model.build_kwargs()}
        model = load_teacher_weights(spec.teacher.checkpoint, kwargs, **io_channels(task))
        metrics = {
            tr.METRIC_VAL: evaluate(model, task, "val")["score"],
            tr.METRIC_TEST: evaluate(model, task, "test")["score"],
        }
        return _log_teacher_run(
            client, experiment_id, spec, thash, model, task, metrics, "cpu"
        ), thash
    print(f"[gds] training the teacher once for this spec (hash {thash})")
    remote = ray.remote(_train_teacher_task).options(
        num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=0
    )
    # The task travels through Ray's object store: a user's graph file need not be on every node.
    run_id = ray.get(remote.remote(spec, tracking_uri, experiment_id, thash, task))
    return run_id, thash


# ---------------------------------------------------------------- the Tuner


def _trainable(spec: StudySpec, ctx: StudyContext, task: Task) -> Any:
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    # with_parameters puts ctx and the task in Ray's object store once: trials on every node
    # read the study's one loaded copy of the data.
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx, task=task), resources)


#: How many checkpoints before a trial's newest one :func:`_restore_lost_checkpoints` fills.
LOST_CHECKPOINTS = 2


def _restore_lost_checkpoints(folder: Path) -> int:
    """Put back the checkpoints a killed driver's saved state may still name.

    Tune deletes a trial's old checkpoint as soon as it registers a new one, but saves the
    experiment state a moment later: a driver killed in between leaves state naming a deleted
    checkpoint, and Tune then refuses to resume that trial ("does not exist on storage
    anymore"). The newest checkpoint is a later point of the same training, so the missing
    names just before it become copies of it: the trial resumes from its newest
    state (epochs it logged already are not logged again, see study.trial). Returns the count.
    """
    restored = 0
    for trial in (p for p in folder.iterdir() if p.is_dir()):
        kept = sorted(trial.glob("checkpoint_*"))
        if not kept:
            continue
        newest = int(kept[-1].name.removeprefix("checkpoint_"))
        for index in range(max(0, newest - LOST_CHECKPOINTS), newest):
            missing = trial / f"checkpoint_{index:06d}"
            if not missing.exists():
                shutil.copytree(kept[-1], missing)
                restored += 1
    return restored


def build_tuner(spec: StudySpec, ctx: StudyContext, storage: Path, task: Task) -> tune.Tuner:
    """The study as a ``Tuner``: searcher, optional ASHA, concurrency, resources, checkpoints.

    ASHA counts epochs: a trial with a scheduler reports once per epoch, then its final result,
    so ``training_iteration`` is epochs done until the final report (``max_t + 1``). A trial
    trains at most ``scheduler.max_t`` epochs (:meth:`~study.config.SchedulerSpec.epochs`); one
    the scheduler stops before is tagged ``gds.stopped_early`` (:mod:`study.trial`).
    """
    warning = spec.searcher.generations_warning()
    if warning:
        print(f"[gds] warning: {warning}")
    if any(m != tr.METRIC_VAL for m in spec.metrics):
        # Latency and size are measured once, after training: the per-epoch reports carry
        # val_score only, which Tune's strict check (every objective in every result) refuses.
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    search_alg, param_space, num_samples = make_search(spec)
    scheduler = None
    if spec.scheduler is not None:
        from ray.tune.schedulers import ASHAScheduler

        objective = spec.objectives[0]
        scheduler = ASHAScheduler(
            metric=objective.metric,
            mode=objective.mode,
            time_attr="training_iteration",
            max_t=spec.scheduler.epochs(spec.student.train.epochs) + 1,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return tune.Tuner(
        _trainable(spec, ctx, task),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=spec.searcher.max_concurrent,
            # One worker serves trial after trial: data, teacher and imports load once.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=str(storage),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=spec.fault_tolerance.max_failures),
            verbose=1,
        ),
    )


def smoke_mapping(data: dict[str, Any]) -> dict[str, Any]:
    """A study cut down to seconds: 2 epochs, at most 2 configurations, 1 seed, its own name."""
    data = dict(data)
    data["name"] = f"{data.get('name', 'study')}-smoke"
    for role in ("teacher", "student"):
        model = dict(data.get(role) or {})
        model["train"] = {**(model.get("train") or {}), "epochs": 2}
        data[role] = model
    searcher = dict(data.get("searcher") or {})
    if searcher.get("algorithm") != "grid":
        searcher["num_samples"] = min(2, int(searcher.get("num_samples", 2)))
    data["searcher"] = searcher
    data["seeds"] = list(data.get("seeds") or [0])[:1]
    data.pop("scheduler", None)
    return data


def load_study(
    path: str | os.PathLike, *, smoke: bool = False, name: str | None = None
) -> tuple[StudySpec, str]:
    """The validated spec of a study file and the YAML text it was validated from
    (:mod:`study.studyfile` reads it); ``name`` replaces the file's study name (a pipeline
    round's)."""
    source = str(path)
    text = read_study_file(path)
    data = read_study_mapping(text, source)
    if name is not None:
        data = {**data, "name": name}
        text = yaml.safe_dump(data, sort_keys=False)
    # The file as written is checked first: errors name its own keys, and smoke_mapping gets
    # a valid study, not a value it cannot handle.
    spec = parse_study_spec(data, source)
    if not smoke:
        return spec, text
    text = yaml.safe_dump(smoke_mapping(data), sort_keys=False)
    return parse_study_spec(read_study_mapping(text, source), source), text


def run_study(
    path: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    storage: str | os.PathLike | None = None,
    address: str | None = None,
    data_root: str | None = None,
    smoke: bool = False,
    name: str | None = None,
) -> StudyOutcome:
    """Validate ``path``, then run the study it describes to the end (see module docstring);
    ``name`` replaces the file's study name."""
    spec, text = load_study(path, smoke=smoke, name=name)
    uri = tr.resolve_tracking_uri(tracking_uri)
    root = storage_root(storage)
    # Everything that can be wrong is checked before Ray, MLflow or a folder is touched.
    task = load_and_check(spec, data_root)
    check_new_study(spec, root, uri)
    lock_dir()  # the quiet windows' locks: a folder another user owns is refused here
    folder = root / spec.name
    # Claiming the name is atomic: under the lock the check is repeated and this study's
    # MLflow run, folder and context are made, so a second `run` of the name started at the
    # same moment waits here, then is refused, having started and written nothing.
    with claim_name(root, spec.name):
        check_new_study(spec, root, uri)
        client = tr.open_store(uri)
        start_ray(address, user_modules(spec))
        experiment_id, parent_run_id = start_study_run(client, spec, text, spec.num_trials)
        try:
            teacher_run_id, thash = ensure_teacher(client, spec, task, uri, experiment_id)
            client.set_tag(parent_run_id, tr.TAG_TEACHER_RUN, teacher_run_id)
            ctx = StudyContext(
                spec=spec,
                spec_text=text,
                tracking_uri=uri,
                experiment_id=experiment_id,
                parent_run_id=parent_run_id,
                teacher_run_id=teacher_run_id,
                teacher_hash=thash,
                data_root=data_root,
            )
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONTEXT_FILE).write_text(ctx.to_json())
            tuner = build_tuner(spec, ctx, root, task)
        except BaseException:
            client.set_terminated(parent_run_id, status="FAILED")
            raise
    return _fit_and_close(tuner, spec, ctx, folder, client)


#: What an earlier version left: the searcher pickled by Ray's ``OptunaSearch.save``.
LEGACY_SEARCHER_STATE = "searcher-state-*.pkl"


def check_trusted_folder(folder: Path) -> None:
    """Refuse a study folder that anyone but the current user could have written.

    ``Tuner.restore`` unpickles ``tuner.pkl``, the experiment state and the search generator's
    state, and unpickling runs whatever code the file names. So the folder, everything in it and
    the folders above it must be the user's (or root's, above) and writable by no one else:
    group write is allowed for the user's own private group (Debian's umask 002), a folder above
    may be shared if sticky (``/tmp``). The searcher's own state must be the JSON this version
    writes; a pickled one from an earlier version is not loaded.
    """
    import grp
    import pwd
    import stat

    uid = os.geteuid()

    def private_group(gid: int, owner: int) -> bool:
        try:
            user, group = pwd.getpwuid(owner), grp.getgrgid(gid)
        except KeyError:
            return False
        return (
            user.pw_gid == gid
            and group.gr_name == user.pw_name
            and set(group.gr_mem) <= {user.pw_name}
        )

    def others_write(st: os.stat_result) -> str | None:
        if st.st_mode & stat.S_IWOTH:
            return "is writable by others"
        if st.st_mode & stat.S_IWGRP and not private_group(st.st_gid, st.st_uid):
            return f"is writable by group {st.st_gid}"
        return None

    def refuse(path: Path, why: str) -> UserInputError:
        return UserInputError(
            f"{folder}: refusing to resume: {path} {why}; resume unpickles Ray's state from "
            "this folder, so it must be yours and writable by you alone"
        )

    real = folder.resolve()
    # Above the study: whoever can rename entries there can swap the study folder.
    for parent in dict.fromkeys([*folder.parents, *real.parents]):
        st = parent.stat()
        if st.st_uid not in (uid, 0):
            raise refuse(parent, f"is owned by uid {st.st_uid}, not by you (uid {uid}) or root")
        if not st.st_mode & stat.S_ISVTX and (why := others_write(st)):
            raise refuse(parent, why)

    def walk_error(err: OSError) -> None:
        raise refuse(Path(err.filename or real), f"cannot be read ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(real, onerror=walk_error):
        here = Path(dirpath)
        entries = ([real] if here == real else []) + [here / n for n in dirnames + filenames]
        for path in entries:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise refuse(path, "is a symbolic link")
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise refuse(path, "is not a plain file or folder")
            if st.st_uid != uid:
                raise refuse(path, f"is owned by uid {st.st_uid}, not by you (uid {uid})")
            if why := others_write(st):
                raise refuse(path, why)

    legacy = sorted(real.glob(LEGACY_SEARCHER_STATE))
    if legacy:
        raise UserInputError(
            f"{legacy[0]}: a searcher state pickled by an earlier version; resume does not "
            "unpickle it (start the study again under a new name)"
        )
    for path in sorted(real.glob(JsonOptunaSearch.CKPT_FILE_TMPL.format("*"))):
        try:
            read_json(path)
        except ValueError as err:
            raise UserInputError(
                f"{path}: not the JSON searcher state this version writes ({type(err).__name__});"
                " resume does not load it"
            ) from None


def read_context(name: str, storage: str | os.PathLike | None) -> tuple[StudyContext, Path]:
    """The context a study was started with, from its folder under ``storage``.

    The folder is checked first (:func:`check_trusted_folder`): nothing in it is read before.
    """
    root = storage_root(storage)
    folder = root / name
    if folder.is_dir():
        check_trusted_folder(folder)
    if not (folder / CONTEXT_FILE).is_file() or not tune.Tuner.can_restore(str(folder)):
        known = (
            sorted(p.parent.name for p in root.glob(f"*/{CONTEXT_FILE}")) if root.is_dir() else []
        )
        raise UserInputError(
            f"{root}: no resumable study named {name!r} (found: {', '.join(known) or 'none'}); "
            "pass the --storage the study was started with"
        )
    return StudyContext.from_json((folder / CONTEXT_FILE).read_text()), folder


class StudyAlreadyFinished(UserInputError):  # noqa: N818 - an outcome the CLI reports
    """``resume`` of a study that has finished: nothing to continue and nothing is changed."""


def check_not_finished(client: MlflowClient, ctx: StudyContext) -> None:
    """Raise :class:`StudyAlreadyFinished` when the study run is FINISHED and every planned trial
    has a trial run that ended (FINISHED, FAILED or KILLED); only reads the store."""
    parent = client.get_run(ctx.parent_run_id)
    if parent.info.status != "FINISHED":
        return
    trials = client.search_runs(
        [ctx.experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_PARENT}` = '{ctx.parent_run_id}' "
            f"and tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
        ),
        max_results=50000,
    )
    planned = int(parent.data.params.get("num_trials", "0") or 0)
    if len(trials) < planned or any(r.info.status == "RUNNING" for r in trials):
        return
    done = sum(r.info.status == "FINISHED" for r in trials)
    raise StudyAlreadyFinished(
        f"study {ctx.spec.name!r} has finished ({done} of {len(trials)} trials finished); a "
        f"finished study is read-only, nothing was changed (read it with `distill-study report "
        f"{ctx.spec.name}` or `distill-study select {ctx.spec.name}`)"
    )


def resume_study(
    name: str,
    *,
    storage: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
) -> StudyOutcome:
    """Continue an interrupted study: finished trials stay, interrupted ones go on from their
    checkpoints, and every trial keeps its one MLflow run.

    A finished study is read-only: when its study run is FINISHED and every trial run has
    ended, :class:`StudyAlreadyFinished` is raised before Ray starts or anything is written
    (no metric, param or tag), so the figures a report has read stay.
    """
    ctx, folder = read_context(name, storage)
    if tracking_uri and tracking_uri != ctx.tracking_uri:
        raise UserInputError(
            f"--tracking-uri: study {name!r} logs to {ctx.tracking_uri}, not {tracking_uri}; "
            "a resumed study keeps its store"
        )
    client = tr.open_store(ctx.tracking_uri)
    check_not_finished(client, ctx)
    spec = ctx.spec
    task = load_study_task(spec, ctx.data_root)
    start_ray(address, user_modules(spec))
    client.update_run(ctx.parent_run_id, status="RUNNING")
    _restore_lost_checkpoints(folder)
    settle_stopped(folder, client, ctx)  # in case the driver died before it could
    tuner = tune.Tuner.restore(
        str(folder),
        trainable=_trainable(spec, ctx, task),
        resume_unfinished=True,
        resume_errored=True,
    )
    return _fit_and_close(tuner, spec, ctx, folder, client)


def settle_stopped(
    folder: Path,
    client: MlflowClient,
    ctx: StudyContext,
    rows: list[dict[str, Any]] | None = None,
) -> None:
    """Tell trials the scheduler stopped from trials a Ctrl-C interrupted, by Tune's saved
    trial status (TERMINATED: it ended). A trial cannot tell the two apart (Tune stops both the
    same way), so with a scheduler it tags its run ``gds.stopped_early`` either way; an
    interrupted one gets its run back to KILLED, untagged, so that ``resume`` continues it.
    ``rows`` (the trials' last results) of stopped trials get ``ROW_STOPPED_EARLY``."""
    if ctx.spec.scheduler is None:
        return
    statuses = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(folder)).trials}
    for row in rows or []:
        ended = statuses.get(str(row.get("trial_id"))) == "TERMINATED"
        if ended and row.get(tr.METRIC_TEST) is None and not row.get(RESULT_ERROR):
            row[ROW_STOPPED_EARLY] = True
    tagged = client.search_runs(
        [ctx.experiment_id],
        filter_string=(
            f"tags.`{tr.TAG_PARENT}` = '{ctx.parent_run_id}' "
            f"and tags.`{tr.TAG_STOPPED_EARLY}` = 'true'"
        ),
        max_results=50_000,
    )
    for run in tagged:
        if statuses.get(run.data.tags.get(tr.TAG_TRIAL_ID, "")) != "TERMINATED":
            client.delete_tag(run.info.run_id, tr.TAG_STOPPED_EARLY)
            client.set_terminated(run.info.run_id, status="KILLED")


def _fit_and_close(
    tuner: tune.Tuner, spec: StudySpec, ctx: StudyContext, folder: Path, client: MlflowClient
) -> StudyOutcome:
    status = "KILLED"
    # The study's latency figures; a resumed study starts from those its trials logged. The
    # handle lives until the trials are done.
    cache = start_cache(
        ctx.parent_run_id, logged_figures(client, ctx.experiment_id, ctx.parent_run_id)
    )
    try:
        results = tuner.fit()
        # ResultGrid is indexable but declares no __iter__.
        rows = [
            dict(r.metrics or {}, config=r.config)
            for r in (results[i] for i in range(len(results)))
        ]
        settle_stopped(folder, client, ctx, rows)
        errors = len(results.errors)
        failed = {
            str(r.get("mlflow_run_id", "")): str(r[RESULT_ERROR])
            for r in rows
            if r.get(RESULT_ERROR)
        }
        outcome = StudyOutcome(
            spec.name,
            folder,
            ctx.tracking_uri,
            ctx.experiment_id,
            ctx.parent_run_id,
            ctx.teacher_run_id,
            rows,
            errors,
            failed,
        )
        client.set_tag(ctx.parent_run_id, tr.TAG_FAILED_TRIALS, str(len(failed)))
        if failed:
            print(
                f"[gds] {len(failed)} of {len(rows)} trials failed (runs FAILED, the reason in "
                f"their tag {tr.TAG_ERROR}; the analysis counts them and leaves them out), e.g.: "
                f"{next(iter(failed.values()))}"
            )
        status = outcome.status
        return outcome
    finally:
        ray.kill(cache)
        client.set_terminated(ctx.parent_run_id, status=status)


def list_studies(storage: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The studies under ``storage`` with their progress (trials finished / planned) from MLflow."""
    root = storage_root(storage)
    out = []
    for ctx_file in sorted(root.glob(f"*/{CONTEXT_FILE}")) if root.is_dir() else []:
        ctx = json.loads(
            ctx_file.read_text()
        )  # no re-validation: listing must not fail on one file
        try:
            if not store_exists(ctx["tracking_uri"]):  # opening it would create an empty one
                raise FileNotFoundError(ctx["tracking_uri"])
            client = tr.open_store(ctx["tracking_uri"])
            planned = int(client.get_run(ctx["parent_run_id"]).data.params.get("num_trials", "0"))
            parent_status = client.get_run(ctx["parent_run_id"]).info.status
            runs = client.search_runs(
                [ctx["experiment_id"]],
                filter_string=(
                    f"tags.`{tr.TAG_PARENT}` = '{ctx['parent_run_id']}' "
                    f"and tags.`{tr.TAG_ROLE}` = '{tr.ROLE_TRIAL}'"
                ),
                max_results=5000,
            )
        except Exception as exc:  # an unreachable store should not hide the other studies
            out.append(
                {
                    "study": ctx_file.parent.name,
                    "status": f"unreachable ({type(exc).__name__})",
                    "finished": 0,
                    "running": 0,
                    "failed": 0,
                    "planned": 0,
                    "tracking_uri": ctx["tracking_uri"],
                }
            )
            continue
        statuses = [r.info.status for r in runs]
        out.append(
            {
                "study": ctx_file.parent.name,
                "status": parent_status,
                "finished": statuses.count("FINISHED"),
                "running": statuses.count("RUNNING"),
                "failed": statuses.count("FAILED") + statuses.count("KILLED"),
                "planned": planned,
                "tracking_uri": ctx["tracking_uri"],
            }
        )
    return out


def mlflow_ui_hint(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this study's store (bound to localhost)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
