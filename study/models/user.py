"""A user's own model class in a study, unchanged: its hidden features are read by forward hooks.

A study file names a factory and the submodules whose outputs FitNet, AT and LSP match::

    teacher: {factory: "my_models:teacher", options: {hidden_channels: 64},
              hidden: [conv1, conv2], checkpoint: teacher.pt}

The factory is called with ``options``, plus ``in_channels`` and ``out_channels`` from the task
where its signature takes them, and returns a ``torch.nn.Module`` whose ``forward(x,
edge_index)`` returns ``[N, C]`` logits. :class:`HookedModel` wraps it so that it returns a
:class:`~study.models.base.ModelOutput` like the built-in models, with ``hidden`` the outputs of
the named submodules (``model.named_modules()`` names) in the order given.

Attention (for ``edge_attention``): a user model exposes it when it is built of PyG ``GATConv``
or ``GATv2Conv`` layers; a hook reads each one's attention over its incoming edges, in the
order the layers run (:mod:`study.models.attention`), so the class needs no change and no key
names them. A model without such layers has no attention: ``edge_attention`` then refuses it as
a student, and needs ``teacher_source: gradient`` for it as a teacher.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from study.catalog import check_options, import_factory
from study.errors import UserInputError, one_line, state_dict_mismatch
from study.models.attention import AttentionRecorder
from study.models.base import ModelOutput

#: What ``spec["arch"]`` says for a user model, so that checkpoints and exports tell it apart.
USER_ARCH = "factory"


class HookedModel(nn.Module):
    """``module`` with forward hooks on ``hidden`` submodules; returns :class:`ModelOutput`.

    Args:
        module: the user's model; ``module(x, edge_index)`` returns ``[N, C]`` logits.
        hidden: submodule names (as in ``module.named_modules()``) whose outputs are ``[N, F]``
            node features; an empty list is allowed for methods that read no hidden features.
        spec: what rebuilds it (``build_model(**spec)``), recorded with checkpoints.

    The user's ``state_dict`` keys sit under ``module.``; :meth:`load_user_state_dict` loads a
    plain ``module.state_dict()`` as the user saved it.
    """

    def __init__(self, module: nn.Module, hidden: Sequence[str], spec: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.hidden_names = list(hidden)
        self.spec = spec
        named = dict(module.named_modules())
        missing = [name for name in self.hidden_names if name not in named]
        if missing:
            valid = ", ".join(n for n in named if n) or "none"
            raise UserInputError(
                f"{type(module).__name__} has no submodule {missing[0]!r} (valid: {valid})",
                key="hidden",
            )
        self._captured: dict[str, Tensor] = {}
        self._recording = False
        #: Reads the attention of the user's GATConv/GATv2Conv layers when a method asks.
        self.attention_recorder = AttentionRecorder(module)
        for name in self.hidden_names:
            named[name].register_forward_hook(_Capture(self, name))

    def forward(self, x: Tensor, edge_index: Tensor) -> ModelOutput:
        """``x [N, F_in]``, ``edge_index [2, E]`` -> logits ``[N, C]`` and the hooked features."""
        self._captured.clear()
        self._recording = True
        self.attention_recorder.start()
        try:
            logits = self.module(x, edge_index)
        finally:
            self._recording = False
        if not isinstance(logits, Tensor):
            raise UserInputError(
                f"{type(self.module).__name__}.forward returned a {type(logits).__name__}; "
                "expected a [N, C] logits tensor",
                key="factory",
            )
        hidden = []
        for name in self.hidden_names:
            out = self._captured.get(name)
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise UserInputError(
                    f"submodule {name!r} of {type(self.module).__name__} gave {shape} in a "
                    f"forward on {x.shape[0]} nodes; expected [{x.shape[0]}, F] node features",
                    key="hidden",
                )
            hidden.append(out)
        self._captured.clear()  # no reference to activations outlives the forward
        attention = self.attention_recorder.take()
        return ModelOutput(logits=logits, hidden=hidden or [logits], attention=attention)

    def load_user_state_dict(self, state: Mapping[str, Any], source: str) -> None:
        """Load the user's own ``state_dict`` (keys as ``module.state_dict()`` has them)."""
        try:
            self.module.load_state_dict(state)
        except RuntimeError as exc:
            raise UserInputError(
                f"{source}: checkpoint keys do not fit {type(self.module).__name__} "
                f"built from its factory and options ({state_dict_mismatch(exc)})",
                key="checkpoint",
            ) from None


class _Capture:
    """A forward hook that files a submodule's output under its name. An object, not a closure:
    ``copy.deepcopy`` of the model then hooks the copy's submodules to the copy."""

    def __init__(self, owner: HookedModel, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        if not self.owner._recording:
            return  # the submodule was called outside the wrapper's forward
        if self.name in self.owner._captured:
            # A shared layer applied twice: which call's output is "the" feature is ambiguous.
            raise UserInputError(
                f"submodule {self.name!r} ran twice in one forward (a shared layer?); name a "
                "submodule that runs once per forward",
                key="hidden",
            )
        self.owner._captured[self.name] = output


def build_user_model(
    factory: str,
    *,
    in_channels: int,
    out_channels: int,
    options: Mapping[str, Any] | None = None,
    hidden: Sequence[str] = (),
    base_dir: str | os.PathLike[str] | None = None,
) -> HookedModel:
    """Call the user's factory and wrap its model (see the module docstring).

    Raises:
        UserInputError: a module that does not import, a missing function, options the
            function does not take, something other than an ``nn.Module`` returned, or a
            ``hidden`` name that is not a submodule.
    """
    options = dict(options or {})
    try:
        function = import_factory(factory, base_dir)
    except UserInputError as exc:
        raise UserInputError(str(exc), key="factory") from None
    check_options(function, options, "options", reserved=("in_channels", "out_channels"))
    kwargs = dict(options)
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if key in params or takes_any:
            kwargs.setdefault(key, value)
    try:
        module = function(**kwargs)
    except Exception as exc:  # the user's constructor: one line, not a traceback
        raise UserInputError(
            f"{factory} failed with options {options} ({one_line(exc)})", key="options"
        ) from None
    if not isinstance(module, nn.Module):
        raise UserInputError(
            f"{factory} returned a {type(module).__name__}, expected a torch.nn.Module",
            key="factory",
        )
    spec = {
        "arch": USER_ARCH,
        "factory": factory,
        "options": options,
        "hidden": list(hidden),
        "base_dir": None if base_dir is None else str(base_dir),
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
    }
    return HookedModel(module, hidden, spec)
