"""Student export: files, exact round trip, TorchScript logits, refusing to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from study.errors import UserInputError
from study.export import (
    CONFIG_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    export_student,
    load,
    load_torchscript,
    logits_only,
)
from study.models import build_model, count_parameters

NODE_MODELS = {
    "gat": {"width": 4, "depth": 2, "heads": 2},
    "gcn": {"width": 4, "depth": 3},
    "sage": {"width": 4, "depth": 2},
    "mlp": {"width": 4, "depth": 2},
}


def _graph(num_nodes: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, 5, generator=gen)
    src = torch.arange(num_nodes)
    dst = (src + 1) % num_nodes
    return x, torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])


def _model(arch: str, dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, in_channels=5, out_channels=3, dropout=dropout, **NODE_MODELS[arch])


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("arch", list(NODE_MODELS))
def test_round_trip_gives_identical_predictions(tmp_path: Path, arch: str) -> None:
    x, edge_index = _graph()
    model = _model(arch, dropout=0.3)  # left in train mode: export must not care or change it
    meta = {"dataset": "synthetic_sbm", "method": "lsp", "val_score": 0.5}
    out = export_student(model, tmp_path / arch, metadata=meta, example_inputs=(x, edge_index))

    assert out == tmp_path / arch
    assert {p.name for p in out.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, TORCHSCRIPT_FILE}
    assert _leftovers(tmp_path) == []
    assert model.training
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["spec"] == model.spec and config["metadata"] == meta
    assert config["num_parameters"] == count_parameters(model)
    state = torch.load(out / WEIGHTS_FILE, weights_only=True)
    assert set(state) == set(model.state_dict())

    loaded = load(out)
    model.eval()
    assert not loaded.training and loaded.spec == model.spec
    want, got = model(x, edge_index), loaded(x, edge_index)
    assert torch.equal(got.logits, want.logits)
    assert all(torch.equal(a, b) for a, b in zip(got.hidden, want.hidden, strict=True))

    info = config["torchscript"]
    assert info["available"] and info["returns"] == "logits"
    assert info["inputs"] == ["x", "edge_index"]
    script = load_torchscript(out)
    torch.testing.assert_close(script(x, edge_index), want.logits)
    # Not tied to the example's size: a bigger graph with other edges gives the eager logits.
    x2, edge_index2 = _graph(num_nodes=11, seed=1)
    torch.testing.assert_close(script(x2, edge_index2), model(x2, edge_index2).logits)


def test_mlp_torchscript_ignores_the_graph(tmp_path: Path) -> None:
    x, edge_index = _graph()
    model = _model("mlp").eval()
    out = export_student(model, tmp_path / "mlp", metadata={}, example_inputs=(x, edge_index))
    script = load_torchscript(out)
    empty = torch.empty(2, 0, dtype=torch.long)
    torch.testing.assert_close(script(x, empty), model(x).logits)


def test_point_cloud_model_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(
        "dgcnn", in_channels=3, out_channels=4, width=8, depth=2, k=4, emb_dims=16, mlp=[8]
    ).eval()
    points = torch.randn(2, 12, 3)
    out = export_student(model, tmp_path / "dgcnn", metadata={}, example_inputs=points)
    assert torch.equal(load(out)(points).logits, model(points).logits)
    info = json.loads((out / CONFIG_FILE).read_text())["torchscript"]
    assert info["available"] and info["inputs"] == ["points"]
    other = torch.randn(3, 16, 3)
    torch.testing.assert_close(load_torchscript(out)(other), model(other).logits)


def test_without_torchscript_the_reason_is_recorded(tmp_path: Path, monkeypatch) -> None:
    x, edge_index = _graph()
    model = _model("gcn").eval()

    def broken_trace(*args, **kwargs):
        raise RuntimeError("tracing is broken here\nsecond line")

    monkeypatch.setattr(torch.jit, "trace", broken_trace)
    out = export_student(model, tmp_path / "a", metadata={}, example_inputs=(x, edge_index))
    info = json.loads((out / CONFIG_FILE).read_text())["torchscript"]
    assert info["available"] is False
    assert "script: " in info["reason"]
    assert "trace: RuntimeError: tracing is broken here" in info["reason"]
    assert not (out / TORCHSCRIPT_FILE).exists()
    assert torch.equal(load(out)(x, edge_index).logits, model(x, edge_index).logits)
    with pytest.raises(UserInputError, match="no TorchScript module.*tracing is broken here"):
        load_torchscript(out)

    # Without example inputs there is nothing to trace with; the export still succeeds.
    monkeypatch.undo()
    out = export_student(model, tmp_path / "b", metadata={})
    info = json.loads((out / CONFIG_FILE).read_text())["torchscript"]
    assert info["available"] is False and "no example_inputs" in info["reason"]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    model = _model("mlp")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="exists and is not empty; not overwriting"):
        export_student(model, full, metadata={})
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert (full / "keep.txt").read_text() == "mine"

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserInputError, match="is not a folder"):
        export_student(model, a_file, metadata={})

    first = export_student(model, tmp_path / "twice", metadata={"run": 1})
    with pytest.raises(UserInputError, match="not overwriting"):
        export_student(model, first, metadata={"run": 2})
    assert json.loads((first / CONFIG_FILE).read_text())["metadata"] == {"run": 1}

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_student(model, empty, metadata={}) / WEIGHTS_FILE).is_file()
    assert _leftovers(tmp_path) == []


def test_bad_input_leaves_nothing_behind(tmp_path: Path) -> None:
    model = _model("gcn")
    with pytest.raises(UserInputError, match="metadata is not JSON-serialisable"):
        export_student(model, tmp_path / "m", metadata={"score": torch.tensor(1.0)})
    with pytest.raises(UserInputError, match="has no .spec"):
        export_student(torch.nn.Linear(2, 2), tmp_path / "m", metadata={})
    with pytest.raises(UserInputError, match="example_inputs of type str"):
        export_student(model, tmp_path / "m", metadata={}, example_inputs="x")
    assert list(tmp_path.iterdir()) == []


def test_load_checks_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="config.json: missing"):
        load(tmp_path)
    out = export_student(_model("sage"), tmp_path / "s", metadata={})
    config = json.loads((out / CONFIG_FILE).read_text())
    config["spec"]["width"] = 6  # weights no longer fit the architecture
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="does not fit the spec"):
        load(out)
    config["format"] = "something-else/9"
    (out / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="format 'something-else/9'"):
        load(out)


def test_logits_only_picks_the_wrapper_by_forward_arguments() -> None:
    x, edge_index = _graph()
    model = _model("gat").eval()
    assert torch.equal(logits_only(model)(x, edge_index), model(x, edge_index).logits)
    dgcnn = build_model(
        "dgcnn", in_channels=3, out_channels=4, width=8, depth=2, k=4, emb_dims=16, mlp=[8]
    ).eval()
    points = torch.randn(2, 12, 3)
    assert torch.equal(logits_only(dgcnn)(points), dgcnn(points).logits)
