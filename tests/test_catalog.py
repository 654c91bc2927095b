"""The catalogs: names from one place, lazy factories, plugins through entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from study.catalog import Catalog, Entry, check_options, import_factory, module_origin
from study.catalogs import DATASETS, KERNELS, METHODS, MODELS
from study.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


def test_reading_the_catalogs_imports_no_torch() -> None:
    code = (
        "import sys, study.catalogs as c\n"
        "names = [e.name for cat in (c.DATASETS, c.MODELS, c.METHODS, c.KERNELS) for e in cat]\n"
        "defaults = [e.defaults() for e in c.METHODS]\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(len(names))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    sizes = (DATASETS, MODELS, METHODS, KERNELS)
    assert int(out.stdout) == sum(len(c.names()) for c in sizes)


def test_every_builtin_factory_imports_and_is_callable() -> None:
    for catalog in (DATASETS, MODELS, METHODS, KERNELS):
        for entry in catalog:
            assert callable(entry.load()), f"{catalog.kind} {entry.name}: {entry.factory}"
            for preset in entry.info.get("presets", {}).values():
                assert callable(import_factory(preset))


def test_a_miss_lists_the_valid_names() -> None:
    with pytest.raises(
        UserInputError, match=r"unknown method 'lspp' \(valid: at, edge_attention, fitnet, kd"
    ):
        METHODS.get("lspp")


def test_defaults_come_from_the_schema_by_study_file_names() -> None:
    assert METHODS.get("lsp").defaults()["lambda"] == 100.0
    assert METHODS.get("kd").defaults() == {"temperature": 4.0, "alpha": 0.9}
    assert KERNELS.get("rbf").param_names() == ("sigma",)
    assert METHODS.get("none").defaults() == {}


def test_register_refuses_a_taken_name_and_a_bad_factory() -> None:
    cat = Catalog("thing", "no.such.group", [Entry("a", "first", "math:sqrt")])
    with pytest.raises(ValueError, match="registered twice"):
        cat.register(Entry("a", "again", "math:floor"))
    with pytest.raises(ValueError, match="not 'm:f'"):
        cat.register(Entry("b", "bad", "math.sqrt"))
    assert cat.get("a").load()(9.0) == 3.0


def _write_plugin(root: Path, value: str) -> None:
    """An installed distribution, as pip leaves one: a module and its dist-info entry points."""
    (root / "gds_toy_plugin.py").write_text(
        textwrap.dedent(
            """
            from study.catalog import Entry
            from study.catalogs import SBMOptions
            TOY = Entry("toy_sbm", "a plugin dataset", "study.data.synthetic:synthetic_sbm",
                        SBMOptions, {"kind": "node", "files": False})
            NOT_AN_ENTRY = 42
            """
        )
    )
    dist = root / "gds_toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gds-toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[graph_distill_study.datasets]\ntoy = {value}\n")


def test_a_plugin_entry_point_adds_a_dataset(tmp_path: Path) -> None:
    _write_plugin(tmp_path, "gds_toy_plugin:TOY")
    code = (
        "from study.catalogs import DATASETS\n"
        "from study.data.registry import load_task\n"
        "print(DATASETS.names()[-1], load_task('toy_sbm', num_nodes=200).num_classes)\n"
    )
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["toy_sbm", "4"]


def test_a_broken_plugin_names_itself(tmp_path: Path) -> None:
    _write_plugin(tmp_path, "gds_toy_plugin:NOT_AN_ENTRY")
    code = "from study.catalogs import DATASETS\nDATASETS.get('cora')\n"
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert out.returncode != 0
    assert "entry point 'toy'" in out.stderr and "expected a study.catalog.Entry" in out.stderr


@pytest.fixture
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """import_factory puts a study's folder on sys.path for the process: undo it after."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


def test_import_factory_finds_a_module_beside_the_study(
    tmp_path: Path, clean_imports: None
) -> None:
    (tmp_path / "gds_user_mod_a.py").write_text("def build(width=4):\n    return width * 2\n")
    assert import_factory("gds_user_mod_a:build", tmp_path)(width=3) == 6
    assert module_origin("gds_user_mod_a:build", tmp_path) == tmp_path / "gds_user_mod_a.py"
    assert module_origin("json:dumps", tmp_path) is None
    with pytest.raises(UserInputError, match="has no 'nope'"):
        import_factory("gds_user_mod_a:nope", tmp_path)
    with pytest.raises(UserInputError, match="cannot import module 'gds_no_such_mod'"):
        import_factory("gds_no_such_mod:f", tmp_path)
    with pytest.raises(UserInputError, match="expected 'module:function'"):
        import_factory("gds_user_mod_a.build", tmp_path)


def test_check_options_names_the_refused_key() -> None:
    def build(in_channels: int, width: int = 4) -> None: ...

    check_options(build, {"width": 8}, "student.options")
    with pytest.raises(UserInputError) as err:
        check_options(build, {"widht": 8}, "student.options")
    assert err.value.key == "student.options.widht"
    assert "valid: in_channels, width" in str(err.value)


def test_a_module_of_the_same_name_in_another_folder_is_refused(
    tmp_path: Path, clean_imports: None
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, value in ((first, 1), (second, 2)):
        folder.mkdir()
        (folder / "gds_same_name.py").write_text(f"def f():\n    return {value}\n")
    assert import_factory("gds_same_name:f", first)() == 1
    # Python would hand back a's module; the workers would get b's file: refused instead.
    with pytest.raises(UserInputError, match="already imported from .*/a/gds_same_name.py"):
        import_factory("gds_same_name:f", second)
    assert import_factory("gds_same_name:f", first)() == 1


PLUGIN_MODEL = """
from torch import nn
from torch_geometric.nn import GCNConv
from study.models.base import ModelOutput

class Deep(nn.Module):
    def __init__(self, in_channels, out_channels, num_layers=2, hidden_dim=8):
        super().__init__()
        sizes = [in_channels] + [hidden_dim] * (num_layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(sizes, sizes[1:]))
        self.spec = {"arch": "deep_gcn", "in_channels": in_channels,
                     "out_channels": out_channels, "num_layers": num_layers,
                     "hidden_dim": hidden_dim}

    def forward(self, x, edge_index):
        hidden = []
        for conv in self.convs:
            x = conv(x, edge_index)
            hidden.append(x)
        return ModelOutput(logits=x, hidden=hidden[:-1] or hidden)
"""


@pytest.fixture
def model_plugin(tmp_path: Path, clean_imports: None):
    from pydantic import Field

    from study.catalogs import Params

    class DeepParams(Params):
        num_layers: int = Field(2, ge=1)
        hidden_dim: int = Field(8, ge=1)

    (tmp_path / "gds_plugin_models.py").write_text(PLUGIN_MODEL)
    sys.path.insert(0, str(tmp_path))
    entry = Entry(
        "deep_gcn", "a plugin architecture", "gds_plugin_models:Deep", DeepParams, {"kind": "node"}
    )
    MODELS.register(entry)
    yield entry
    del MODELS._entries[entry.name]


def test_a_model_plugin_brings_its_own_sizes_as_study_keys(model_plugin: Entry) -> None:
    from study.config import parse_study_spec, resolve_trial
    from study.models import build_model
    from tests.studies import tiny_study

    study = tiny_study(
        "plugin",
        student={"arch": "deep_gcn", "num_layers": 3, "train": {"epochs": 2}},
        search={"student.hidden_dim": {"choice": [4, 16]}},
        methods=["none"],
    )
    spec = parse_study_spec(study, "plugin.yaml")
    assert spec.student.model.sizes == {"num_layers": 3, "hidden_dim": 8}  # the schema default
    plan = resolve_trial(spec, {"method": "none", "seed": 0, "student.hidden_dim": 16})
    assert plan.params["student.hidden_dim"] == 16 and plan.params["student.num_layers"] == 3
    model = build_model(
        plan.student.arch, **plan.student.build_kwargs(), in_channels=8, out_channels=4
    )
    assert len(model.convs) == 3 and model.convs[0].out_channels == 16
    with pytest.raises(UserInputError, match="student.num_layers: expected an integer >= 1"):
        parse_study_spec({**study, "student": {"arch": "deep_gcn", "num_layers": 0}}, "p.yaml")
