"""Teacher checkpoints: round trip, safe loading, one-line refusals, atomic saves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

import study.teachers as teachers
from study.errors import UserInputError
from study.models import build_model
from study.teachers import (
    CHECKPOINT_FORMAT,
    load_teacher,
    read_checkpoint,
    save_checkpoint,
)

IN, OUT = 6, 3


def _gat(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("gat", in_channels=IN, out_channels=OUT, width=4, depth=2, heads=2)


def _dgcnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "dgcnn", in_channels=3, out_channels=OUT, width=4, depth=2, k=4, emb_dims=8, mlp=[8]
    )


def _graph(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, IN, generator=g)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 2], [1, 2, 3, 4, 5, 6, 7, 8, 0, 7]])
    return x, edge_index


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ---------------------------------------------------------------- round trip and format


def test_gat_round_trip_gives_the_same_logits(tmp_path: Path) -> None:
    model = _gat().eval()
    x, ei = _graph()
    path = save_checkpoint(model, tmp_path / "t.pt", dataset="toy", metrics={"test_score": 0.5})
    loaded, meta = load_teacher(path, in_channels=IN, out_channels=OUT, arch="gat", dataset="toy")
    assert not loaded.training
    assert torch.equal(loaded(x, ei).logits, model(x, ei).logits)
    assert meta["metrics"] == {"test_score": 0.5}
    assert meta["dataset"] == "toy" and meta["arch"] == "gat"
    assert "state_dict" not in meta


def test_dgcnn_round_trip_keeps_batchnorm_statistics(tmp_path: Path) -> None:
    model = _dgcnn()
    points = torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(0))
    model.train()(points)  # moves the BatchNorm running statistics away from their defaults
    model.eval()
    path = save_checkpoint(model, tmp_path / "d.pt", dataset="shapes")
    loaded, _ = load_teacher(path, arch="dgcnn", in_channels=3, out_channels=OUT)
    assert torch.equal(loaded(points[:2]).logits, model(points[:2]).logits)


def test_checkpoint_is_a_plain_weights_only_dict(tmp_path: Path) -> None:
    model = _gat()
    path = save_checkpoint(model, tmp_path / "t.pt", dataset="toy", metrics={"acc": 1})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["arch"] == "gat"
    assert payload["spec"] == model.spec
    assert payload["metrics"] == {"acc": 1.0}
    assert set(payload["state_dict"]) == set(model.state_dict())
    assert read_checkpoint(path)["dataset"] == "toy"


# ---------------------------------------------------------------- refusals


class _Trap:
    """Unpickling this opens (creates) ``marker``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile(path: Path, marker: Path) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": "gat",
        "spec": dict(_gat().spec),
        "dataset": "toy",
        "state_dict": _gat().state_dict(),
        "metrics": {"x": _Trap(marker)},
    }
    torch.save(payload, path)
    return path


def test_hostile_pickle_is_refused_without_running_code(tmp_path: Path) -> None:
    # The trap is real: a full unpickle runs it.
    armed = tmp_path / "armed"
    torch.load(_hostile(tmp_path / "probe.pt", armed), weights_only=False)
    assert armed.exists()

    marker = tmp_path / "pwned"
    path = _hostile(tmp_path / "evil.pt", marker)
    with pytest.raises(UserInputError) as err:
        load_teacher(path)
    assert not marker.exists()
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError):
        read_checkpoint(path)
    assert not marker.exists()


def test_plain_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_gat().state_dict(), path)
    with pytest.raises(UserInputError, match="not a graph-distill-study teacher checkpoint") as e:
        load_teacher(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04truncated"])
def test_garbage_file_is_refused_in_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(UserInputError) as e:
        load_teacher(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(UserInputError, match="not found") as e:
        load_teacher(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "key", "have", "want"),
    [
        ({"in_channels": 50}, "in_channels", str(IN), "50"),
        ({"out_channels": 121}, "out_channels", str(OUT), "121"),
        ({"arch": "dgcnn"}, "arch", "gat", "dgcnn"),
        ({"dataset": "cora"}, "dataset", "toy", "cora"),
    ],
)
def test_mismatch_names_the_key_and_both_values(
    tmp_path: Path, kwargs: dict, key: str, have: str, want: str
) -> None:
    path = save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    with pytest.raises(UserInputError) as e:
        load_teacher(path, **kwargs)
    msg = str(e.value)
    assert key in msg and have in msg and want in msg
    assert str(path) in msg
    assert "\n" not in msg


def test_matching_expectations_pass(tmp_path: Path) -> None:
    path = save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    model, _ = load_teacher(path, in_channels=IN, out_channels=OUT, arch="gat", dataset="toy")
    assert model.spec == _gat().spec


@pytest.mark.parametrize("damage", ["drop_key", "wrong_shape", "extra_key"])
def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    payload = torch.load(path, weights_only=True)
    sd = payload["state_dict"]
    name = sorted(sd)[0]
    if damage == "drop_key":
        del sd[name]
    elif damage == "wrong_shape":
        sd[name] = torch.zeros(*[s + 1 for s in sd[name].shape])
    else:
        sd["convs.9.bogus"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="weights do not fit") as e:
        load_teacher(path)
    assert str(path) in str(e.value)
    assert "\n" not in str(e.value)


def test_spec_that_builds_nothing_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    payload = torch.load(path, weights_only=True)
    payload["spec"]["arch"] = "transformer"
    torch.save(payload, path)
    with pytest.raises(UserInputError, match="transformer"):
        load_teacher(path)


# ---------------------------------------------------------------- atomic save


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    save_checkpoint(_gat(1), tmp_path / "t.pt", dataset="toy")  # replace an existing one
    assert _leftovers(tmp_path, set()) == ["t.pt"]
    # The replacement is the second model.
    x, ei = _graph()
    loaded, _ = load_teacher(tmp_path / "t.pt")
    assert torch.equal(loaded(x, ei).logits, _gat(1).eval()(x, ei).logits)


def test_save_creates_missing_parent_folders(tmp_path: Path) -> None:
    path = save_checkpoint(_gat(), tmp_path / "a" / "b" / "t.pt", dataset="toy")
    assert path.is_file() and load_teacher(path)[1]["dataset"] == "toy"


def test_failed_save_keeps_the_old_file_and_no_partial_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(_gat(), tmp_path / "t.pt", dataset="toy")
    before = path.read_bytes()

    def broken_save(obj: object, f: str | os.PathLike) -> None:
        Path(f).write_bytes(b"half a checkpoint")  # a crash mid-write
        raise OSError("disk full")

    monkeypatch.setattr(teachers.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_gat(1), path, dataset="toy")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(tmp_path, set()) == ["t.pt"]

    fresh = tmp_path / "new.pt"
    monkeypatch.setattr(teachers.torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(_gat(1), fresh, dataset="toy")
    assert not fresh.exists()
    assert _leftovers(tmp_path, set()) == ["t.pt"]
