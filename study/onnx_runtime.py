"""Latency under ONNX Runtime on CPU: the runtime a student may be deployed with.

:func:`onnx_latency` exports the model's logits (:func:`study.export.logits_only`) to ONNX with
``torch.onnx.export`` and times ``InferenceSession.run`` on the same input as the PyTorch figure,
with the same rules and statistics (:func:`study.latency.measure_latency`: warm-up until stable,
repeats, p50/p90): only the callable timed differs. The session runs on CPU with
``intra_op_num_threads = threads`` and one inter-op thread, as PyTorch is timed with
``torch.set_num_threads(threads)``.

The exporter: the TorchScript-based one (``dynamo=False``) first, since it exports PyG's GAT
(whose self-loop handling ``torch.export`` cannot trace in torch 2.13) and is 2-5x faster; then
``torch.export`` (``dynamo=True``, needs ``onnxscript``). The ONNX logits must match the eager
ones (``rtol=1e-4, atol=1e-5``) or no figure is given. GCN, GraphSAGE, GAT and MLP students export;
a model that does not gives :class:`OnnxUnavailable` with the reason, and the trial logs no ONNX
figure (tag ``gds.onnx``).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from study.export import logits_only
from study.latency import LatencyResult, measure_latency


class OnnxUnavailable(Exception):  # noqa: N818 - an outcome the trial records
    """The model could not be exported to ONNX or run under ONNX Runtime (reason in the text)."""


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX Runtime session of a model and the feeds of one input."""

    session: object
    feeds: dict[str, np.ndarray]
    exporter: str

    def run(self) -> np.ndarray:
        """One inference on the stored input: the logits."""
        return self.session.run(None, self.feeds)[0]  # type: ignore[attr-defined]


def export_onnx(model: nn.Module, inputs: Sequence[Tensor], *, threads: int = 1) -> OnnxModel:
    """Export ``model``'s logits on ``inputs`` (CPU copies) to ONNX and open a CPU session.

    Raises:
        OnnxUnavailable: onnxruntime is missing, both exporters fail, or the ONNX logits differ
            from the eager ones.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise OnnxUnavailable(f"onnxruntime is not installed ({err})") from None
    wrapper = logits_only(copy.deepcopy(model).cpu()).eval()  # the caller's model stays put
    args = tuple(t.detach().cpu() for t in inputs)
    names = (
        ["points"] if len(args) == 1 else ["x", "edge_index", "edge_type", "node_type"][: len(args)]
    )
    with torch.no_grad():
        expected = wrapper(*args).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # ORT's shape warnings on PyG's scatter are not errors
    reasons = []
    for dynamo in (False, True):
        try:
            blob = _export_bytes(wrapper, args, names, dynamo=dynamo)
            session = ort.InferenceSession(
                blob, sess_options=options, providers=["CPUExecutionProvider"]
            )
            # An input the graph does not read (an MLP's edge_index) is dropped by the exporter.
            wanted = {i.name for i in session.get_inputs()}
            feeds = {n: a.numpy() for n, a in zip(names, args, strict=True) if n in wanted}
            got = session.run(None, feeds)[0]
        except Exception as err:  # noqa: BLE001 - any failure means: try the other exporter
            reasons.append(f"{'dynamo' if dynamo else 'torchscript'}: {_first_line(err)}")
            continue
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            diff = float(np.abs(got - expected).max())
            reasons.append(f"{'dynamo' if dynamo else 'torchscript'}: logits differ by {diff:.3g}")
            continue
        return OnnxModel(session, feeds, "dynamo" if dynamo else "torchscript")
    raise OnnxUnavailable("; ".join(reasons))


def _export_bytes(
    wrapper: nn.Module, args: tuple[Tensor, ...], names: list[str], *, dynamo: bool
) -> bytes:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamo=dynamo,
            verbose=False,
        )
        return path.read_bytes()


def onnx_latency(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 1,
) -> LatencyResult:
    """Time ``model`` under ONNX Runtime on CPU on ``inputs`` (module docstring).

    Raises:
        OnnxUnavailable: the model does not export or run (see :func:`export_onnx`).
    """
    return time_onnx(export_onnx(model, inputs, threads=threads), repeats, warmup, threads)


def time_onnx(onnx_model: OnnxModel, repeats: int, warmup: int, threads: int) -> LatencyResult:
    """Time ``onnx_model.run`` with :func:`study.latency.measure_latency`'s rules."""
    # measure_latency times the callable; the module passed is only put in eval mode.
    return measure_latency(
        nn.Identity(),
        onnx_model.run,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        device="cpu",
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def prepare_onnx(
    model: nn.Module, inputs: Sequence[Tensor], threads: int
) -> tuple[OnnxModel | None, dict[str, str]]:
    """Export ``model`` for ONNX Runtime (work: outside a quiet window); the tag
    :data:`study.tracking.TAG_ONNX` says "measured" or why there will be no figure."""
    from study import tracking as tr

    try:
        return export_onnx(model, inputs, threads=threads), {tr.TAG_ONNX: "measured"}
    except OnnxUnavailable as err:
        return None, {tr.TAG_ONNX: f"unavailable: {err}"[:500]}


def onnx_metrics(
    onnx_model: OnnxModel, repeats: int, warmup: int, threads: int
) -> dict[str, float]:
    """Time an exported model (inside the caller's quiet window): its p50/p90 metrics."""
    from study import tracking as tr

    lat = time_onnx(onnx_model, repeats, warmup, threads)
    return {tr.METRIC_LATENCY_ONNX_P50: lat.p50_ms, tr.METRIC_LATENCY_ONNX_P90: lat.p90_ms}
