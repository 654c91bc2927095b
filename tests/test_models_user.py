"""A user's own model class, unchanged: hidden features by forward hooks, its own state_dict."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch_geometric.nn import GCNConv

from study.errors import UserInputError
from study.models import build_model
from study.models.user import HookedModel, build_user_model
from study.teachers import load_teacher_weights
from tests.graphs import small_graph

USER_MODULE = """
import torch
from torch import nn
from torch_geometric.nn import GCNConv

class TwoLayer(nn.Module):
    def __init__(self, in_channels, out_channels, hidden_channels=8):
        super().__init__()
        self.conv1 = GCNConv(in_channels, hidden_channels)
        self.act = nn.ReLU()
        self.conv2 = GCNConv(hidden_channels, out_channels)

    def forward(self, x, edge_index):
        return self.conv2(self.act(self.conv1(x, edge_index)), edge_index)

def build(in_channels, out_channels, hidden_channels=8):
    return TwoLayer(in_channels, out_channels, hidden_channels)

def fixed_width(hidden_channels=8):
    return TwoLayer(5, 3, hidden_channels)

def not_a_module(in_channels, out_channels):
    return 42

class Mean(nn.Module):
    def forward(self, h):
        return h.mean(0, keepdim=True)

class Pooled(nn.Module):
    # a graph-level summary beside node features: its "pool" output is [1, F], not [N, F]
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = GCNConv(in_channels, 8)
        self.pool = Mean()
        self.head = nn.Linear(8, out_channels)

    def forward(self, x, edge_index):
        h = self.conv1(x, edge_index)
        return self.head(h + self.pool(h))
"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One folder for the module: a process keeps the first module of a name (see catalog).
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "gds_user_models_a.py").write_text(USER_MODULE)
    return folder


def test_hooks_return_the_named_submodules_outputs(user_dir: Path) -> None:
    x, edge_index = small_graph()
    model = build_user_model(
        "gds_user_models_a:build",
        in_channels=5,
        out_channels=3,
        options={"hidden_channels": 6},
        hidden=["act", "conv1"],
        base_dir=user_dir,
    )
    out = model(x, edge_index)
    inner = model.module
    pre = inner.conv1(x, edge_index)
    assert torch.allclose(out.logits, inner(x, edge_index))
    assert torch.allclose(out.hidden[0], pre.relu()) and torch.allclose(out.hidden[1], pre)
    assert [h.shape for h in out.hidden] == [torch.Size([7, 6])] * 2
    out.hidden[0].sum().backward()  # hidden features carry the student's gradients
    assert inner.conv1.lin.weight.grad is not None


def test_the_factory_gets_in_and_out_channels_only_when_it_takes_them(user_dir: Path) -> None:
    fixed = build_user_model(
        "gds_user_models_a:fixed_width", in_channels=5, out_channels=3, base_dir=user_dir
    )
    assert fixed.spec["options"] == {} and fixed.module.conv2.out_channels == 3


def test_spec_rebuilds_the_model_and_deepcopy_hooks_the_copy(user_dir: Path) -> None:
    x, edge_index = small_graph()
    model = build_user_model(
        "gds_user_models_a:build",
        in_channels=5,
        out_channels=3,
        hidden=["conv1"],
        base_dir=user_dir,
    )
    again = build_model(**model.spec)
    assert isinstance(again, HookedModel) and again.spec == model.spec
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.module.conv1.lin.weight.add_(1.0)
    got, want = clone(x, edge_index).hidden[0], model(x, edge_index).hidden[0]
    assert not torch.allclose(got, want)  # the copy's hook reads the copy's layer
    assert torch.allclose(got, clone.module.conv1(x, edge_index))


@pytest.mark.parametrize(
    ("factory", "options", "hidden", "key", "pattern"),
    [
        ("gds_user_models_a:build", {}, ["conv9"], "hidden", r"no submodule 'conv9' \(valid:"),
        ("gds_user_models_a:build", {"widht": 4}, [], "options.widht", r"takes no option"),
        ("gds_user_models_a:nope", {}, [], "factory", r"has no 'nope'"),
        ("gds_no_such_module_x:build", {}, [], "factory", r"cannot import module"),
        ("gds_user_models_a:not_a_module", {}, [], "factory", r"returned a int, expected"),
        ("gds_user_models_a:build", {"hidden_channels": -1}, [], "options", r"failed with"),
    ],
)
def test_bad_user_models_name_the_key(
    user_dir: Path, factory: str, options: dict, hidden: list[str], key: str, pattern: str
) -> None:
    with pytest.raises(UserInputError, match=pattern) as err:
        build_user_model(
            factory,
            in_channels=5,
            out_channels=3,
            options=options,
            hidden=hidden,
            base_dir=user_dir,
        )
    assert err.value.key == key


def test_a_hidden_module_that_gives_no_node_features_is_refused(user_dir: Path) -> None:
    x, edge_index = small_graph()
    model = build_user_model(
        "gds_user_models_a:Pooled",
        in_channels=5,
        out_channels=3,
        hidden=["conv1.lin", "pool"],
        base_dir=user_dir,
    )
    with pytest.raises(UserInputError, match=r"submodule 'pool' of Pooled gave \(1, 8\)") as err:
        model(x, edge_index)
    assert err.value.key == "hidden" and "expected [7, F]" in str(err.value)


def test_a_hidden_module_that_runs_twice_is_refused(user_dir: Path) -> None:
    x, edge_index = small_graph()
    model = build_user_model(
        "gds_user_models_a:build", in_channels=5, out_channels=3, hidden=["act"], base_dir=user_dir
    )
    inner = model.module
    inner.forward = lambda x, e: inner.conv2(inner.act(inner.act(inner.conv1(x, e))), e)
    with pytest.raises(UserInputError, match="'act' ran twice in one forward") as err:
        model(x, edge_index)
    assert err.value.key == "hidden"
    inner.forward = lambda x, e: inner.conv2(inner.act(inner.conv1(x, e)), e)
    assert model(x, edge_index).hidden[0].shape == (7, 8)  # the next forward starts afresh


def test_the_users_state_dict_loads_and_a_mismatch_is_one_line(user_dir: Path) -> None:
    kwargs = {"factory": "gds_user_models_a:build", "hidden": ["conv1"], "base_dir": user_dir}
    trained = build_user_model(
        "gds_user_models_a:build", in_channels=5, out_channels=3, base_dir=user_dir
    ).module
    torch.save(trained.state_dict(), user_dir / "teacher.pt")
    model = load_teacher_weights(user_dir / "teacher.pt", kwargs, in_channels=5, out_channels=3)
    assert torch.equal(model.module.conv1.lin.weight, trained.conv1.lin.weight)
    assert not model.training
    wider = nn.Sequential(GCNConv(5, 16))
    torch.save(wider.state_dict(), user_dir / "other.pt")
    with pytest.raises(UserInputError, match="checkpoint keys do not fit TwoLayer") as err:
        load_teacher_weights(user_dir / "other.pt", kwargs, in_channels=5, out_channels=3)
    assert err.value.key == "checkpoint" and "\n" not in str(err.value)
    torch.save([1, 2], user_dir / "list.pt")
    with pytest.raises(UserInputError, match="expected a state_dict"):
        load_teacher_weights(user_dir / "list.pt", kwargs, in_channels=5, out_channels=3)


def test_a_project_checkpoint_must_be_the_teacher_the_study_describes(tmp_path: Path) -> None:
    from study.teachers import save_checkpoint

    trained = build_model("gcn", in_channels=5, out_channels=3, width=16, depth=2, dropout=0.5)
    save_checkpoint(trained, tmp_path / "t.pt", dataset="cora")
    same = {"arch": "gcn", "width": 16, "depth": 2, "dropout": 0.1}  # dropout: training only
    model = load_teacher_weights(tmp_path / "t.pt", same, in_channels=5, out_channels=3)
    assert model.spec["width"] == 16
    wider = {"arch": "gcn", "width": 128, "depth": 3, "dropout": 0.5}
    with pytest.raises(UserInputError, match=r"depth 2 \(the study: 3\), width 16") as err:
        load_teacher_weights(tmp_path / "t.pt", wider, in_channels=5, out_channels=3)
    assert err.value.key == "checkpoint"
