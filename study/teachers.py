"""Teacher checkpoints: save, load safely, and where a machine caches them.

Which teacher a study reuses is decided by the runner from MLflow (a finished teacher run with
the same spec and data hash); this module only handles the files.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` accepts::

    {"format": "gds-teacher/1", "arch": "gat", "spec": {...build_model kwargs...},
     "dataset": "cora", "state_dict": {...}, "metrics": {"test_score": 0.81, ...}}

The spec travels with the weights, so a checkpoint rebuilds its own model and a mismatch with
the data (another architecture, other feature or class counts) is caught in one clear line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study.errors import UserInputError, state_dict_mismatch, unsafe_load_reason
from study.fileio import atomic_write
from study.models import build_model
from study.models.user import USER_ARCH, HookedModel
from study.paths import user_cache_dir

CHECKPOINT_FORMAT = "gds-teacher/1"


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    dataset: str,
    metrics: dict[str, float] | None = None,
) -> Path:
    """Write ``model`` (with its ``spec``) to ``path`` atomically; never leaves a partial file."""
    path = Path(path)
    spec: dict[str, Any] = dict(getattr(model, "spec"))  # noqa: B009 - set by build_model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": spec["arch"],
        "spec": spec,
        "dataset": dataset,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def _load_weights_only(path: Path) -> Any:
    if not path.is_file():
        raise UserInputError(f"{path}: teacher checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign formats
        raise UserInputError(
            f"{path}: not a teacher checkpoint torch.load(weights_only=True) can read "
            f"({unsafe_load_reason(exc)})"
        ) from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; one-line errors for anything else."""
    path = Path(path)
    payload = _load_weights_only(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserInputError(
            f"{path}: not a graph-distill-study teacher checkpoint "
            f"(expected format {CHECKPOINT_FORMAT!r}; "
            "write one with `distill-study teacher`)"
        )
    return payload


def load_teacher(
    path: str | os.PathLike,
    *,
    in_channels: int | None = None,
    out_channels: int | None = None,
    arch: str | None = None,
    dataset: str | None = None,
    types: Mapping[str, int] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a teacher; check it fits the data it is about to be used on.

    Args:
        path: a checkpoint written by :func:`save_checkpoint`.
        in_channels / out_channels: the dataset's feature and class counts, checked if given.
        arch: the architecture the caller expects (``gat``, ``dgcnn``), checked if given.
        dataset: the dataset the caller uses, checked if given.
        types: a typed graph's type counts (:func:`study.data.base.io_channels`), checked
            against a relation-aware teacher's spec if given.

    Returns:
        ``(model in eval mode, checkpoint dict without the weights)``.
    """
    payload = read_checkpoint(path)
    spec = dict(payload["spec"])
    if arch is not None and payload["arch"] != arch:
        raise UserInputError(
            f"{path}: arch: checkpoint holds a {payload['arch']!r} teacher, expected {arch!r}"
        )
    if dataset is not None and payload["dataset"] != dataset:
        raise UserInputError(
            f"{path}: checkpoint was trained on {payload['dataset']!r}, "
            f"expected dataset {dataset!r}"
        )
    checks = [("in_channels", in_channels), ("out_channels", out_channels)]
    if types is not None and "num_relations" in spec:
        checks += [(k, types.get(k)) for k in ("num_node_types", "num_relations")]
    for key, want in checks:
        if want is not None and spec.get(key) != want:
            raise UserInputError(
                f"{path}: spec.{key}: checkpoint has {spec.get(key)}, the data needs {want}"
            )
    model = build_model(**spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise UserInputError(
            f"{path}: weights do not fit a {payload['arch']} built from its spec "
            f"({state_dict_mismatch(exc)})"
        ) from None
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model.eval(), meta


def load_teacher_weights(
    path: str | os.PathLike,
    model_kwargs: dict[str, Any],
    *,
    in_channels: int,
    out_channels: int,
    types: Mapping[str, int] | None = None,
) -> nn.Module:
    """The study's teacher from ``teacher.checkpoint``: a checkpoint of this project (which
    carries its own spec; checked against the data) or the user's plain ``state_dict`` of the
    model ``build_model(**model_kwargs)`` builds (a user factory's model or a built-in one).

    Raises:
        UserInputError: an unreadable file, or weights that do not fit the model.
    """
    path = Path(path)
    payload = _load_weights_only(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        arch = model_kwargs.get("arch")
        model, _ = load_teacher(
            path,
            in_channels=in_channels,
            out_channels=out_channels,
            arch=arch or USER_ARCH,
            types=types,
        )
        study_spec = build_model(
            **model_kwargs, in_channels=in_channels, out_channels=out_channels, types=types
        )
        _check_same_spec(path, getattr(model, "spec"), getattr(study_spec, "spec"))  # noqa: B009
        return model
    if not isinstance(payload, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in payload.items()
    ):
        raise UserInputError(
            f"{path}: expected a state_dict (a mapping of parameter names to tensors, as "
            f"torch.save(model.state_dict(), path) writes) or a checkpoint of "
            f"`distill-study teacher`, got a {type(payload).__name__}"
        )
    model = build_model(
        **model_kwargs, in_channels=in_channels, out_channels=out_channels, types=types
    )
    if isinstance(model, HookedModel):
        model.load_user_state_dict(payload, str(path))
    else:
        try:
            model.load_state_dict(payload)
        except RuntimeError as exc:
            raise UserInputError(
                f"{path}: weights do not fit the teacher ({state_dict_mismatch(exc)})",
                key="checkpoint",
            ) from None
    return model.eval()


def _check_same_spec(path: Path, held: dict[str, Any], wanted: dict[str, Any]) -> None:
    """A checkpoint that carries its own spec must be the teacher the study file describes: a
    study saying width 128 would otherwise report a width-16 teacher as its own."""
    # Where a user module was found says nothing of the model, and dropout acts in training
    # only (the teacher is frozen).
    ignored = {"base_dir", "dropout"}
    differ = sorted(
        k for k in held.keys() | wanted.keys() if k not in ignored and held.get(k) != wanted.get(k)
    )
    if differ:
        shown = ", ".join(f"{k} {held.get(k)!r} (the study: {wanted.get(k)!r})" for k in differ)
        raise UserInputError(
            f"{path}: the checkpoint holds another teacher than the study file describes: {shown}",
            key="checkpoint",
        )


def teacher_cache_path(teacher_hash: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where a teacher with this spec hash is kept on this machine."""
    base = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "teachers"
    return base / f"{teacher_hash}.pt"
