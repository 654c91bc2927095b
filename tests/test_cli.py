"""The command line, in-process through ``study.cli.main``: real Cora runs, and bad input that
must end in exit code 2 with one line on stderr before anything is written."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import get_args

import pytest
import torch

from study.catalogs import KERNELS, METHODS, Direction
from study.cli import main
from study.models import build_model
from study.teachers import save_checkpoint

CORA_FEATURES, CORA_CLASSES = 1433, 7
FAST = ["--no-progress", "--json"]


pytestmark = pytest.mark.usefixtures("one_thread")  # two cores shared with other runs


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cora_teacher(gds_data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 3-epoch Cora teacher written by ``distill-study teacher``: (path, exit code, stdout)."""
    path = tmp_path_factory.mktemp("cli") / "cora_teacher.pt"
    argv = ["teacher", "--dataset", "cora", "--data-root", str(gds_data_root)]
    code, out, _ = _run([*argv, "--epochs", "3", "--out", str(path), *FAST])
    return path, code, out


def _assert_usage_error(capsys: pytest.CaptureFixture, code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------- the console script


def test_console_script_is_installed() -> None:
    exe = shutil.which("distill-study")
    assert exe is not None, "distill-study is not on PATH (pip install -e .)"
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("teacher", "distill", "validate", "run", "resume", "list", "report"):
        assert command in done.stdout


# ---------------------------------------------------------------- real runs on Cora


def test_teacher_on_cora_writes_a_checkpoint_and_json(cora_teacher) -> None:
    path, code, out = cora_teacher
    assert code == 0
    metrics = json.loads(out)
    for key in ("val_score", "test_score"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_params"] > 0 and isinstance(metrics["num_params"], int)
    assert metrics["checkpoint"] == str(path)
    payload = torch.load(path, weights_only=True)
    assert payload["dataset"] == "cora"
    assert payload["spec"]["in_channels"] == CORA_FEATURES
    assert payload["spec"]["out_channels"] == CORA_CLASSES
    assert payload["metrics"]["test_score"] == pytest.approx(metrics["test_score"])
    n = sum(v.numel() for k, v in payload["state_dict"].items())
    assert n == metrics["num_params"]  # GAT has no buffers: every entry is a parameter


@pytest.mark.parametrize("method", ["none", "kd", "fitnet", "at", "lsp", "edge_attention"])
def test_distill_on_cora_every_method(
    cora_teacher, gds_data_root: Path, capsys: pytest.CaptureFixture, method: str
) -> None:
    path, code, _ = cora_teacher
    assert code == 0
    argv = ["distill", "--dataset", "cora", "--data-root", str(gds_data_root)]
    code = main([*argv, "--teacher", str(path), "--method", method, "--epochs", "2", *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads(captured.out)
    assert metrics["method"] == method
    # The method really ran: its loss term is positive, and absent for the student alone.
    assert (metrics["distill_loss"] > 0.0) == (method != "none"), metrics["distill_loss"]
    assert 0.0 <= metrics["test_score"] <= 1.0
    assert 0.0 <= metrics["val_score"] <= 1.0
    teacher_score = torch.load(path, weights_only=True)["metrics"]["test_score"]
    assert metrics["teacher_test_score"] == pytest.approx(teacher_score)
    assert 0 < metrics["num_params"]


def test_same_seed_gives_the_same_teacher(tmp_path: Path) -> None:
    """``--seed`` must fix the whole run, initial weights included, whatever ran before."""

    def teacher(name: str, seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(1000 + len(name))  # another RNG history before each run
        out = tmp_path / f"{name}.pt"
        argv = ["teacher", "--dataset", "synthetic_sbm", "--epochs", "1", "--out", str(out)]
        code, _, err = _run([*argv, "--seed", str(seed), *FAST])
        assert code == 0, err
        return torch.load(out, weights_only=True)["state_dict"]

    a, b, c = teacher("a", 0), teacher("bb", 0), teacher("ccc", 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- bad input


def _distill_argv(teacher: Path, *extra: str) -> list[str]:
    return ["distill", "--dataset", "synthetic_sbm", "--teacher", str(teacher), *extra, *FAST]


@pytest.fixture
def sbm_teacher_file(tmp_path: Path) -> Path:
    """A GAT checkpoint for synthetic_sbm (16 features, 4 classes), untrained."""
    torch.manual_seed(0)
    model = build_model("gat", in_channels=16, out_channels=4, width=4, depth=2, heads=2)
    return save_checkpoint(model, tmp_path / "sbm_teacher.pt", dataset="synthetic_sbm")


def test_unknown_method(capsys: pytest.CaptureFixture, sbm_teacher_file: Path) -> None:
    code = main(_distill_argv(sbm_teacher_file, "--method", "kdd"))
    _assert_usage_error(capsys, code, "'kdd'", "method", *METHODS.names())


def test_unknown_kernel(capsys: pytest.CaptureFixture, sbm_teacher_file: Path) -> None:
    code = main(_distill_argv(sbm_teacher_file, "--kernel", "gauss"))
    _assert_usage_error(capsys, code, "'gauss'", "kernel", *KERNELS.names())


def test_unknown_direction(capsys: pytest.CaptureFixture, sbm_teacher_file: Path) -> None:
    code = main(_distill_argv(sbm_teacher_file, "--direction", "both"))
    _assert_usage_error(capsys, code, "'both'", *get_args(Direction))


@pytest.mark.parametrize("command", ["teacher", "distill"])
def test_unknown_dataset(capsys: pytest.CaptureFixture, tmp_path: Path, command: str) -> None:
    out = tmp_path / "t.pt"
    if command == "teacher":
        argv = ["teacher", "--dataset", "coraa", "--out", str(out), *FAST]
    else:
        argv = ["distill", "--dataset", "coraa", "--teacher", str(out), *FAST]
    line = _assert_usage_error(capsys, main(argv), "'coraa'", "dataset")
    for name in ("cora", "ppi", "modelnet40", "synthetic_sbm"):
        assert name in line
    assert not out.exists()


def test_missing_data_names_the_folder_and_the_variable(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDS_DATA_ROOT", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", "cora", "--data-root", str(empty), "--out", str(out)]
    code = main([*argv, "--epochs", "1", *FAST])
    _assert_usage_error(capsys, code, str(empty), "GDS_DATA_ROOT")
    assert not out.exists()


def test_missing_data_for_distill_without_download(
    capsys: pytest.CaptureFixture, tmp_path: Path, sbm_teacher_file: Path
) -> None:
    argv = ["distill", "--dataset", "cora", "--data-root", str(tmp_path / "nothing")]
    code = main([*argv, "--data-option", "download=false", "--teacher", str(sbm_teacher_file)])
    _assert_usage_error(capsys, code, str(tmp_path / "nothing"), "GDS_DATA_ROOT")


def test_teacher_of_another_dataset_is_refused(
    capsys: pytest.CaptureFixture, cora_teacher, sbm_teacher_file: Path, gds_data_root: Path
) -> None:
    # A Cora teacher used on synthetic_sbm, and a synthetic_sbm teacher used on Cora.
    path, _, _ = cora_teacher
    code = main(_distill_argv(path, "--epochs", "1"))
    _assert_usage_error(capsys, code, str(path), "'cora'", "'synthetic_sbm'")

    sbm_path = sbm_teacher_file
    argv = ["distill", "--dataset", "cora", "--data-root", str(gds_data_root)]
    code = main([*argv, "--teacher", str(sbm_path), "--epochs", "1", *FAST])
    _assert_usage_error(capsys, code, str(sbm_path), "'cora'", "'synthetic_sbm'")


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "dataset", "needles"),
    [
        # Even one whose dataset and sizes match: a DGCNN cannot run on a graph, so this must
        # be a one-line refusal, not a traceback from inside the training loop.
        (16, 4, "synthetic_sbm", ("dgcnn", "gat")),
        (3, 5, "synthetic_shapes", ("synthetic_shapes", "synthetic_sbm")),
    ],
)
def test_dgcnn_teacher_for_a_graph_task_is_refused(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    in_channels: int,
    out_channels: int,
    dataset: str,
    needles: tuple[str, str],
) -> None:
    torch.manual_seed(0)
    dgcnn = build_model(
        "dgcnn",
        in_channels=in_channels,
        out_channels=out_channels,
        width=4,
        depth=1,
        k=4,
        emb_dims=8,
        mlp=[8],
    )
    path = save_checkpoint(dgcnn, tmp_path / "dgcnn.pt", dataset=dataset)
    code = main(_distill_argv(path, "--epochs", "1"))
    _assert_usage_error(capsys, code, str(path), *needles)


def test_a_node_teacher_of_another_architecture_is_accepted(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    # The other side of the check above: any node model may teach a GAT student.
    torch.manual_seed(0)
    gcn = build_model("gcn", in_channels=16, out_channels=4, width=8, depth=2)
    path = save_checkpoint(gcn, tmp_path / "gcn.pt", dataset="synthetic_sbm")
    code = main(_distill_argv(path, "--epochs", "1", "--method", "lsp"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["method"] == "lsp"


@pytest.mark.parametrize(
    ("dataset", "arch"), [("synthetic_sbm", "dgcnn"), ("synthetic_shapes", "gat")]
)
def test_architecture_that_cannot_run_on_the_data_is_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path, dataset: str, arch: str
) -> None:
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", dataset, "--arch", arch, "--epochs", "1", "--out", str(out)]
    _assert_usage_error(capsys, main([*argv, *FAST]), arch, dataset)
    assert not out.exists()


def test_teacher_refuses_to_overwrite(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "t.pt"
    out.write_bytes(b"precious")
    argv = ["teacher", "--dataset", "synthetic_sbm", "--epochs", "1", "--out", str(out), *FAST]
    _assert_usage_error(capsys, main(argv), str(out), "--force")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]

    # With --force it is replaced by a real checkpoint.
    assert main([*argv, "--force"]) == 0
    assert torch.load(out, weights_only=True)["dataset"] == "synthetic_sbm"


def test_non_positive_epochs(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", "synthetic_sbm", "--epochs", "0", "--out", str(out), *FAST]
    _assert_usage_error(capsys, main(argv), "--epochs", "0")
    assert not out.exists()


def test_validate_bad_yaml(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n  oops: [1, 2\n")
    _assert_usage_error(capsys, main(["validate", str(bad)]), str(bad), "line 2")


def test_validate_unknown_method_in_a_study(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    good = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    text = good.read_text()
    assert "methods: [none, kd, lsp]" in text
    bad = tmp_path / "study.yaml"
    bad.write_text(text.replace("methods: [none, kd, lsp]", "methods: [none, kdd, lsp]"))
    line = _assert_usage_error(capsys, main(["validate", str(bad)]), str(bad), "'kdd'", "methods")
    for name in METHODS.names():
        assert name in line

    # The untouched file validates.
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_missing_file(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "none.yaml"
    _assert_usage_error(capsys, main(["validate", str(path)]), str(path))


# ---------------------------------------------------------------- help texts


def _subparsers() -> dict:
    import argparse

    from study.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


MARKUP = ("``", ":func:", ":class:", ":mod:", ":meth:", ":attr:", ":data:")


def test_every_command_and_option_has_plain_help_text(capsys: pytest.CaptureFixture) -> None:
    from study.cli import COMMANDS

    parsers = _subparsers()
    assert set(parsers) - {""} == set(COMMANDS)
    for name, parser in parsers.items():
        for action in parser._actions:
            label = f"distill-study {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{label}: no help text"
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"] if name else ["--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert text.strip(), name
        for mark in MARKUP:
            assert mark not in text, f"distill-study {name} --help shows {mark!r}:\n{text}"
    top = _run_help(capsys, [])
    for command in COMMANDS:  # every command is described on the top-level help
        assert command in top


def _run_help(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_run_ends_by_suggesting_report_and_select() -> None:
    import pandas as pd

    from study.cli import next_steps, suggested_budget_ms

    summary = pd.DataFrame(
        {
            "config_id": ["a", "b"],
            "val_score_mean": [0.70, 0.81],
            "latency_ms_p50_mean": [3.02, 10.04],
        }
    )
    assert suggested_budget_ms(summary) == pytest.approx(10.1)
    lines = "\n".join(next_steps("quickstart", "sqlite:////tmp/my store.db", summary))
    report = "distill-study report quickstart --tracking-uri 'sqlite:////tmp/my store.db' "
    assert report + "--out reports/quickstart" in lines
    select = "distill-study select quickstart --tracking-uri 'sqlite:////tmp/my store.db' "
    assert select + "--max-latency-ms 10.1 --out exports/quickstart" in lines
    # Without finished trials the budget is left to the user.
    assert "--max-latency-ms MS" in "\n".join(next_steps("s", "sqlite:///x.db", None))


def test_teacher_and_distill_train_on_sampled_mini_batches(
    capsys: pytest.CaptureFixture, tmp_path: Path, sbm_teacher_file: Path
) -> None:
    mini = ["--num-neighbors", "4,3", "--batch-size", "64", "--epochs", "2"]
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", "synthetic_sbm", *mini, "--out", str(out), *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    assert 0.0 <= json.loads(capsys.readouterr().out)["test_score"] <= 1.0
    code = main(_distill_argv(sbm_teacher_file, *mini, "--method", "lsp"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["distill_loss"] > 0  # the term ran on the sampled edges


@pytest.mark.parametrize(
    ("flag", "extra", "needle"),
    [
        ("4,0", [], "expected positive integers separated by commas"),
        ("4,x", [], "got '4,x'"),
        ("4", [], "(2 layers), got 1"),
        ("4,3", ["--method", "edge_attention"], "edge_attention trains full batch only"),
    ],
)
def test_bad_num_neighbors_flag_is_one_line(
    capsys: pytest.CaptureFixture, sbm_teacher_file: Path, flag: str, extra: list, needle: str
) -> None:
    code = main(_distill_argv(sbm_teacher_file, "--epochs", "1", "--num-neighbors", flag, *extra))
    _assert_usage_error(capsys, code, "--num-neighbors", needle)


def test_num_neighbors_on_point_clouds_is_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", "synthetic_shapes", "--arch", "dgcnn", "--epochs", "1"]
    code = main([*argv, "--num-neighbors", "4,3", "--out", str(out), *FAST])
    _assert_usage_error(capsys, code, "node tasks only")
    assert not out.exists()


def test_num_neighbors_on_a_heterogeneous_graph_is_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    # The sampler drops edge and node types: training would silently collapse the relations.
    out = tmp_path / "t.pt"
    argv = ["teacher", "--dataset", "synthetic_hetero", "--arch", "rgcn", "--epochs", "1"]
    code = main([*argv, "--num-neighbors", "4,3", "--out", str(out), *FAST])
    _assert_usage_error(capsys, code, "--num-neighbors 4,3", "do not carry edge types")
    assert not out.exists()
