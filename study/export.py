"""Export a trained student to a folder that rebuilds it without the study that trained it.

The folder holds three files::

    weights.pt               the state dict (CPU tensors; ``torch.load(..., weights_only=True)``)
    config.json              {"format": "gds-student/1", "spec": model.spec, "metadata": {...},
                              "num_parameters": ..., "torch_version": ..., "torchscript": {...}}
    model.torchscript.pt     TorchScript of the model, where the model allows it

:func:`load` rebuilds the eager model from ``spec`` with :func:`~study.models.build_model`, so it
returns the full :class:`~study.models.base.ModelOutput` (hidden features too).
The TorchScript module (:func:`load_torchscript`) needs only torch to run, but it returns the
**logits only**: ``ModelOutput`` is a dataclass, which TorchScript cannot compile (torch 2.13),
so the model is wrapped in :class:`LogitsOnly` (node models, called as ``(x, edge_index)``; the
MLP ignores ``edge_index`` but still takes one) or :class:`PointLogitsOnly` (DGCNN, called as
``(points)``) before ``torch.jit.script``, and, when scripting fails, ``torch.jit.trace`` on the
``example_inputs``. A trace records the operations run on that example: it is checked against the
eager model there, and serves other inputs of the same kind (graph sizes vary fine for the models
here), but control flow that depends on the data is frozen. When neither works, config.json says
why under ``"torchscript": {"available": false, "reason": ...}`` and the export still succeeds.
TorchScript is deprecated upstream in favour of ``torch.export``; it is kept here because it is
what serving stacks load today.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from study import fileio
from study.errors import UserInputError
from study.models import build_model, count_parameters
from study.models.base import reads_types

EXPORT_FORMAT = "gds-student/1"
WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
TORCHSCRIPT_FILE = "model.torchscript.pt"


class LogitsOnly(nn.Module):
    """A node model whose forward returns only the logits tensor, so TorchScript can compile it.

    Args:
        model: a model called as ``model(x, edge_index)`` that returns a ``ModelOutput``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """``[N, C]`` logits of ``x [N, F]`` over ``edge_index [2, E]``."""
        return self.model(x, edge_index).logits


class TypedLogitsOnly(nn.Module):
    """A relation-aware node model's logits (:mod:`study.models.rgcn`), called as
    ``(x, edge_index, edge_type, node_type)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: Tensor, edge_index: Tensor, edge_type: Tensor, node_type: Tensor
    ) -> Tensor:
        """``[N, C]`` logits of ``x [N, F]`` over typed edges ``edge_index [2, E]``,
        ``edge_type [E]``, with ``node_type [N]``."""
        return self.model(x, edge_index, edge_type, node_type).logits


class PointLogitsOnly(nn.Module):
    """A point-cloud model (DGCNN) whose forward returns only the logits tensor.

    Args:
        model: a model called as ``model(points)`` that returns a ``ModelOutput``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, points: Tensor) -> Tensor:
        """``[B, C]`` logits of ``points [B, P, 3]``."""
        return self.model(points).logits


def logits_only(model: nn.Module) -> nn.Module:
    """Wrap ``model`` in :class:`LogitsOnly` or :class:`PointLogitsOnly`, by its forward's
    positional arguments (one: a point-cloud model; two or more: a node model)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(model.forward).parameters.values()
    takes = sum(p.kind in positional for p in params)
    if reads_types(model):
        return TypedLogitsOnly(model)
    return LogitsOnly(model) if takes >= 2 else PointLogitsOnly(model)


def export_student(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    metadata: Mapping[str, Any],
    example_inputs: Tensor | tuple[Tensor, ...] | None = None,
) -> Path:
    """Write ``model`` to a new folder ``out_dir``: weights, config and (where possible)
    TorchScript.

    The files are written into a temporary folder beside ``out_dir`` and renamed at the end
    (:func:`study.fileio.staging_folder`), so ``out_dir`` never holds a partial export. The
    model itself is left untouched (a CPU copy in eval mode is exported).

    Args:
        model: a model built by :func:`~study.models.build_model` (it must carry ``model.spec``).
        out_dir: the folder to create; it may exist only if empty.
        metadata: JSON-serialisable facts to keep beside the spec (dataset, method, scores...).
        example_inputs: the forward arguments to trace with when scripting fails, e.g.
            ``(x [N, F], edge_index [2, E])`` or ``points [B, P, 3]``; also used to check that
            the TorchScript module reproduces the eager logits. Without it only scripting is
            tried.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        UserInputError: ``out_dir`` exists and is not an empty folder, the model has no spec,
            or ``metadata`` is not JSON-serialisable.
    """
    out = Path(os.path.abspath(out_dir))  # "." and "x/.." get a name for the sibling below
    check_target(out)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or "arch" not in spec:
        raise UserInputError(
            f"{type(model).__name__} has no .spec: export models built by study.models.build_model"
        )
    config: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "spec": spec,
        "metadata": dict(metadata),
        "num_parameters": count_parameters(model),
        "torch_version": torch.__version__,
    }
    try:
        json.dumps(config)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"metadata is not JSON-serialisable: {err}") from None

    cpu_model = copy.deepcopy(model).cpu().eval()
    inputs = _as_tuple(example_inputs)
    try:
        with fileio.staged_folder(out) as tmp:
            state = {k: v.detach().cpu().clone() for k, v in cpu_model.state_dict().items()}
            torch.save(state, tmp / WEIGHTS_FILE)
            config["torchscript"] = _write_torchscript(cpu_model, inputs, tmp / TORCHSCRIPT_FILE)
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    except FileExistsError as err:
        raise _filled_meanwhile(out, err) from None
    return out


def load(out_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported model from its config and weights, in eval mode.

    Args:
        out_dir: a folder written by :func:`export_student`.
        device: where to put the model.

    Returns:
        The eager model (its forward returns a full ``ModelOutput``), with ``model.spec`` set.
    """
    folder = Path(out_dir)
    config = read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise UserInputError(f"{weights}: missing (not a complete export)")
    model = build_model(**config["spec"])
    state = torch.load(weights, map_location=device, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserInputError(
            f"{weights}: does not fit the spec in {CONFIG_FILE}: {first}"
        ) from None
    return model.to(device).eval()


def load_torchscript(
    out_dir: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> torch.jit.ScriptModule:
    """Load the TorchScript module of an export, in eval mode.

    It returns the logits tensor only (``[N, C]`` from ``(x, edge_index)`` for node models,
    ``[B, C]`` from ``(points)`` for DGCNN), not a ``ModelOutput``.

    Raises:
        UserInputError: the export has no TorchScript module (the reason is in the message).
    """
    folder = Path(out_dir)
    info = read_config(folder).get("torchscript", {})
    if not info.get("available"):
        reason = info.get("reason", "not recorded")
        raise UserInputError(f"{folder}: the export has no TorchScript module ({reason})")
    module = torch.jit.load(str(folder / TORCHSCRIPT_FILE), map_location=device)
    return module.eval()


def read_config(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of an export, checked for its format."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: missing (is {Path(out_dir)} an export folder?)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UserInputError(f"{path}: format {found!r} (expected {EXPORT_FORMAT!r})")
    return config


def check_target(out: Path, key: str | None = None) -> None:
    """Refuse an ``out`` folder that exists and is not empty (or is not a folder); ``key`` (a
    flag such as ``--out``) starts the message when given."""
    where = f"{key}: {out}" if key else f"{out}:"
    if out.is_dir():
        if any(out.iterdir()):
            raise UserInputError(f"{where} exists and is not empty; not overwriting it")
    elif out.exists():
        raise UserInputError(f"{where} exists and is not a folder; not overwriting it")


def move_into_place(folder: Path, out: Path) -> None:
    """Rename the complete export ``folder`` to ``out`` (:func:`study.fileio.move_into_place`);
    an ``out`` filled by someone else meanwhile is a :class:`UserInputError` and left as it is."""
    try:
        fileio.move_into_place(folder, out)
    except FileExistsError as err:
        raise _filled_meanwhile(out, err) from None


def _filled_meanwhile(out: Path, err: FileExistsError) -> UserInputError:
    return UserInputError(f"{out}: filled up while exporting; not overwriting it ({err.strerror})")


def _as_tuple(example_inputs: Tensor | tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, Tensor):
        return (example_inputs.cpu(),)
    if isinstance(example_inputs, (tuple, list)) and all(
        isinstance(t, Tensor) for t in example_inputs
    ):
        return tuple(t.cpu() for t in example_inputs)
    raise UserInputError(
        f"example_inputs of type {type(example_inputs).__name__}: expected a tensor or a "
        "tuple of tensors (the forward arguments)"
    )


def _write_torchscript(
    model: nn.Module, inputs: tuple[Tensor, ...] | None, path: Path
) -> dict[str, Any]:
    """Script, else trace, ``model``'s logits; save it to ``path``; say what happened."""
    wrapper = logits_only(model).eval()
    names = list(inspect.signature(wrapper.forward).parameters)
    info: dict[str, Any] = {"returns": "logits", "inputs": names}
    reasons: list[str] = []
    # The eager logits on the example inputs, which a compiled module must reproduce.
    reference: tuple[tuple[Tensor, ...], Tensor] | None = None
    if inputs is not None:
        with torch.no_grad():
            reference = (inputs, wrapper(*inputs))
    # torch.jit is deprecated upstream and warns on every call; the outcome goes in config.json.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("script", "trace"):
            if method == "trace" and inputs is None:
                reasons.append("trace: no example_inputs were given")
                break
            try:
                if method == "script":
                    compiled = torch.jit.script(wrapper)
                else:
                    with torch.no_grad():
                        compiled = torch.jit.trace(wrapper, inputs, check_trace=False)
                if reference is not None:
                    _check_same(compiled, *reference)
                torch.jit.save(compiled, str(path))
            except Exception as err:  # noqa: BLE001 - any failure means: try the next way
                reasons.append(f"{method}: {_first_line(err)}")
                path.unlink(missing_ok=True)
                continue
            info.update(available=True, method=method, file=TORCHSCRIPT_FILE)
            if method == "trace" and inputs is not None:  # a trace always has inputs
                info["script_error"] = reasons[0]
                info["traced_on_shapes"] = [list(t.shape) for t in inputs]
            return info
    info.update(available=False, reason="; ".join(reasons))
    return info


def _check_same(compiled: nn.Module, inputs: tuple[Tensor, ...], expected: Tensor) -> None:
    with torch.no_grad():
        got = compiled(*inputs)
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        diff = (got - expected).abs().max().item()
        raise RuntimeError(f"its logits differ from the eager model's (max abs diff {diff:.3g})")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return text[:300]
