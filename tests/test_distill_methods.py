"""Methods built from the catalog: defaults, validation messages, weights and schedules, and a
third-party method and kernel registered the way a plugin would, trained through the same door."""

from __future__ import annotations

import copy
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from study.catalog import Entry
from study.catalogs import KERNELS, METHODS, Params
from study.data.synthetic import synthetic_sbm
from study.distill import (
    AttentionTransfer,
    DistillMethod,
    FitNet,
    KnowledgeDistillation,
    LocalStructurePreserving,
    NoDistillation,
    build_method,
    lsp_loss,
)
from study.errors import UserInputError
from study.models import build_model
from study.train import distill_student
from study.train_config import DistillConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("method", "cls", "weights"),
    [
        ("none", NoDistillation, (1.0, 0.0)),
        ("kd", KnowledgeDistillation, (0.1, 0.9)),
        ("fitnet", FitNet, (1.0, 1.0)),
        ("at", AttentionTransfer, (1.0, 1000.0)),
        ("lsp", LocalStructurePreserving, (1.0, 100.0)),
    ],
)
def test_missing_parameters_take_the_catalog_defaults(method: str, cls: type, weights) -> None:
    built = build_method(DistillConfig(method))
    assert type(built) is cls
    assert built.weights() == pytest.approx(weights)
    assert built.needs_teacher == (method != "none")
    assert built.needs_teacher_logits == (method == "kd")


def test_lsp_takes_its_kernels_parameters_beside_its_own() -> None:
    built = build_method(DistillConfig("lsp", {"kernel": "poly", "degree": 3, "lambda": 7.0}))
    assert isinstance(built, LocalStructurePreserving)
    assert built.kernel_params == {"degree": 3.0, "c": 0.0}  # c from the catalog's default
    assert built.weights() == (1.0, 7.0)
    rbf = build_method(DistillConfig("lsp"))
    assert isinstance(rbf, LocalStructurePreserving) and rbf.kernel_params == {"sigma": 1.0}


def test_layer_map_from_yaml_lists() -> None:
    built = build_method(DistillConfig("fitnet", {"layer_map": [[0, 1], [-1, -1]]}))
    assert isinstance(built, FitNet) and built.layer_map == ((0, 1), (-1, -1))
    adapters = built.make_adapters([3, 5], [7, 11])
    assert [(a.linear.in_features, a.linear.out_features) for a in adapters] == [(3, 11), (5, 11)]


def test_lsp_until_epoch_switches_the_term_off() -> None:
    built = build_method(DistillConfig("lsp", {"lsp_until_epoch": 2}))
    assert [built.active(e) for e in range(4)] == [True, True, False, False]
    assert all(build_method(DistillConfig("lsp")).active(e) for e in (0, 10**6))


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        (DistillConfig("kd", {"lambda": 1.0}), ["'lambda'", "temperature", "alpha"]),
        (DistillConfig("lsp", {"lambda_": 1.0}), ["'lambda_'", "lambda", "sigma", "direction"]),
        (DistillConfig("lsp", {"kernel": "linear", "sigma": 2.0}), ["'sigma'", "'linear'"]),
        (DistillConfig("none", {"alpha": 0.5}), ["'alpha'", "none"]),
        (DistillConfig("kd", {"alpha": 1.5}), ["alpha", "1.5"]),
        (DistillConfig("lsp", {"sigma": 0.0}), ["sigma", "greater than 0"]),
        (DistillConfig("lsp", {"kernel": "poly", "degree": 2.5}), ["degree", "whole number"]),
        (DistillConfig("at", {"lambda": "3"}), ["lambda", "'3'"]),
        (DistillConfig("lsp", {"kernel": "gauss"}), ["'gauss'", "rbf", "l1_official"]),
        (DistillConfig("lspp"), ["'lspp'", "lsp", "fitnet"]),
    ],
)
def test_bad_parameters_name_themselves_in_one_line(cfg: DistillConfig, words: list[str]) -> None:
    with pytest.raises(UserInputError) as info:
        build_method(cfg)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# ---------------------------------------------------------------- a third-party method and kernel

PLUGIN = '''
import torch
import torch.nn.functional as F

from study.distill.methods import DistillMethod


class L2Logits(DistillMethod):
    """Mean squared difference of the logits, weighted by lambda."""

    needs_teacher_logits = True

    def __init__(self, params):
        self.lambda_ = params.lambda_

    def weights(self):
        return 1.0, self.lambda_

    def term(self, student, teacher, **_):
        return F.mse_loss(student.logits, teacher.logits)


def not_a_method(params):
    return object()


def cosine_kernel(z_target, z_source, scale=1.0):
    return scale * F.cosine_similarity(z_target, z_source, dim=-1)
'''


class L2LogitsParams(Params):
    lambda_: float = Field(1.0, alias="lambda", ge=0)


class CosineParams(Params):
    scale: float = Field(1.0, gt=0)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A plugin module on the path and its entries in the catalogs, removed after the test."""
    (tmp_path / "gds_toy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    entries = [
        (METHODS, Entry("l2_logits", "toy", "gds_toy_plugin:L2Logits", L2LogitsParams)),
        (METHODS, Entry("broken", "toy", "gds_toy_plugin:not_a_method", L2LogitsParams)),
        (KERNELS, Entry("cosine", "toy", "gds_toy_plugin:cosine_kernel", CosineParams)),
    ]
    for catalog, entry in entries:
        catalog.register(entry)
    try:
        yield
    finally:
        for catalog, entry in entries:
            del catalog._entries[entry.name]
    assert "l2_logits" not in METHODS and "cosine" not in KERNELS


def _gat(seed: int, width: int, heads: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "gat", in_channels=8, out_channels=3, width=width, depth=2, heads=heads, dropout=0.0
    )


def test_a_registered_method_trains_through_the_same_door(plugin: None) -> None:
    task = synthetic_sbm(
        num_nodes=40, num_classes=3, num_features=8, train_per_class=4, val=10, test=10, seed=2
    )
    teacher, student = _gat(5, 8, 2).eval(), _gat(1, 4, 1)
    initial = copy.deepcopy(student).train()
    cfg = DistillConfig("l2_logits", {"lambda": 2.0})
    assert isinstance(build_method(cfg), DistillMethod)
    result = distill_student(student, teacher, task, TrainConfig(epochs=2), cfg)
    g = task.train[0]
    with torch.no_grad():
        s_logits = initial(g.x, g.edge_index).logits
        t_logits = teacher(g.x, g.edge_index).logits
    hard = F.cross_entropy(s_logits[g.mask], g.y[g.mask]).item()
    term = ((s_logits - t_logits) ** 2).mean().item()  # over every node, as the method says
    first = result.history[0]
    assert first["distill_loss"] == pytest.approx(term, rel=1e-5)
    assert first["train_loss"] == pytest.approx(hard + 2.0 * term, rel=1e-5)
    with pytest.raises(UserInputError, match="'alpha'.*valid: lambda"):
        build_method(DistillConfig("l2_logits", {"alpha": 0.5}))


def test_a_factory_that_builds_no_method_is_refused(plugin: None) -> None:
    with pytest.raises(UserInputError, match="broken.*DistillMethod"):
        build_method(DistillConfig("broken"))


def test_a_registered_kernel_is_evaluated_generically(plugin: None) -> None:
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z_t = torch.randn(4, 5, generator=g, dtype=torch.float64)
    edge_index = torch.tensor([[1, 2, 3, 0, 2], [0, 0, 0, 1, 1]])
    got = lsp_loss(z_s, z_t, edge_index, kernel="cosine", scale=3.0)

    # Independent: per target, softmax of 3 * cosine over its sources, KL(student || teacher).
    def ls(z: torch.Tensor, sources: list[int], i: int) -> torch.Tensor:
        k = torch.stack([3.0 * F.cosine_similarity(z[i], z[j], dim=0) for j in sources])
        return torch.softmax(k, dim=0)

    kls = []
    for i, sources in ((0, [1, 2, 3]), (1, [0, 2])):
        p, q = ls(z_s, sources, i), ls(z_t, sources, i)
        kls.append((p * (p.log() - q.log())).sum())
    torch.testing.assert_close(got, torch.stack(kls).mean())
    built = build_method(DistillConfig("lsp", {"kernel": "cosine", "scale": 3.0}))
    assert isinstance(built, LocalStructurePreserving) and built.kernel_params == {"scale": 3.0}
    with pytest.raises(UserInputError, match="scale"):
        build_method(DistillConfig("lsp", {"kernel": "cosine", "scale": -1.0}))
