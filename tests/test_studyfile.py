"""Reading a study file safely (:mod:`study.studyfile`): alias bombs, oversized and binary files,
deep nesting; and hostile files through the command line: exit 2, one line on stderr naming the
file and the key, nothing started (no Ray, no MLflow store, no storage folder).

A regression must fail, not hang the suite: alias bombs are loaded in a subprocess whose address
space is capped (1 GiB over what its imports take), so an expansion ends in ``MemoryError``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from study import studyfile
from study.cli import main
from study.config import MAX_NUM_SAMPLES, load_study_spec, parse_study_text
from study.context import StudyContext
from study.errors import UserInputError
from study.runner import load_study
from study.studyfile import MAX_ALIAS_NODES, MAX_BYTES, MAX_DEPTH, load_study_yaml
from tests.studies import tiny_study

REPO = Path(__file__).resolve().parents[1]
PLACES = ("description", "name", "dataset.options")


def _bomb(levels: int = 9, width: int = 9) -> str:
    """A flow list whose last item expands to ``width ** levels`` strings (9**9: 387 million)."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


def _study_text(place: str, value: str, name: str = "hostile") -> str:
    """A valid tiny study with ``value`` (YAML text) at ``place``; the value is on the last
    line of the file (its line number is the file's line count)."""
    data = tiny_study(name)
    lines = yaml.safe_dump(data, sort_keys=False).splitlines()
    if place == "name":
        lines = [line for line in lines if not line.startswith("name:")]
        lines.append(f"name: {value}")
    elif place == "description":
        lines.append(f"description: {value}")
    else:  # dataset.options: the dataset's block moved last
        lines = yaml.safe_dump({k: v for k, v in data.items() if k != "dataset"}).splitlines()
        lines += ["dataset:", "  name: synthetic_sbm", f"  options: {{num_nodes: 200, x: {value}}}"]
    return "\n".join(lines) + "\n"


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# ---------------------------------------------------------------- alias bombs, memory capped

_LOAD_CAPPED = textwrap.dedent(
    """
    import json, resource, sys
    {imports}
    from study import studyfile
    from study.errors import UserInputError
    # Capped after the imports: the loading itself gets 1 GiB; a bomb needs gigabytes.
    size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
    built = 0
    construct = studyfile._StudyLoader.construct_object
    def counting(self, node, deep=False):
        global built
        built += 1
        return construct(self, node, deep)
    studyfile._StudyLoader.construct_object = counting
    def attempt(case):
    {call}
        return result
    out = []
    for case in json.loads(sys.argv[1]):
        built = 0
        result = attempt(case)
        out.append({{"result": result, "built": built}})
    print(json.dumps(out))
    """
)


def _capped(imports: str, call: str, cases: list, cwd: Path) -> list[dict]:
    script = _LOAD_CAPPED.format(imports=imports, call=textwrap.indent(call.strip(), " " * 4))
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def _assert_bomb_refused(message: str, path: Path) -> None:
    line = len(path.read_text().splitlines())
    # The first alias over the bound: a0..a3 repeat 90 + 819 + 7,380 nodes, a4's first *a3 7,381.
    assert message.startswith(f"{path}: line {line}, column "), message
    assert "alias *a3 brings the nodes the file's aliases repeat to 15,670, over the limit of " in (
        message
    )
    assert "\n" not in message


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    paths = [_write(tmp_path, f"{p}.yaml", _study_text(p, _bomb())) for p in PLACES]
    call = """
try:
    load_study_spec(case)
    result = None
except UserInputError as err:
    result = str(err)
"""
    results = _capped(
        "from study.config import load_study_spec", call, list(map(str, paths)), tmp_path
    )
    for path, got in zip(paths, results, strict=True):
        assert got["result"] is not None, path
        _assert_bomb_refused(got["result"], path)
        # Refused after composing, before a single Python object was built from the YAML.
        assert got["built"] == 0, got


def test_alias_bomb_through_the_cli(tmp_path: Path) -> None:
    """``validate``, ``validate --keys-only``, ``run`` and ``run --smoke``: exit 2, one line,
    nothing created, Ray not started."""
    paths = [_write(tmp_path, f"{p}.yaml", _study_text(p, _bomb())) for p in PLACES]
    storage = tmp_path / "storage"
    argvs = [
        *[["validate", str(p)] for p in paths],
        ["validate", "--keys-only", str(paths[0])],
        *[["run", str(p), "--storage", str(storage)] for p in paths],
        ["run", str(paths[2]), "--storage", str(storage), "--smoke"],
    ]
    call = """
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    code = main(case)
result = [code, err.getvalue(), ray.is_initialized()]
"""
    imports = "import contextlib, io, ray, study.runner\nfrom study.cli import main"
    results = _capped(imports, call, argvs, tmp_path)
    for argv, got in zip(argvs, results, strict=True):
        code, err, ray_started = got["result"]
        assert code == 2, (argv, err)
        assert err.count("\n") == 1, err
        assert err.startswith(f"distill-study {argv[0]}: error: "), err
        path = Path(next(a for a in argv if a.endswith(".yaml")))
        _assert_bomb_refused(err.split(": error: ", 1)[1].strip(), path)
        assert not ray_started and got["built"] == 0
    assert not storage.exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


# ---------------------------------------------------------------- aliases within the bound


def _repeats(times: int, anchored: int = 99) -> str:
    """An anchor of ``anchored + 1`` nodes and ``times`` aliases of it: that many times
    ``anchored + 1`` nodes repeated."""
    items = ", ".join(str(i) for i in range(anchored))
    return f"a: &a [{items}]\nb: [{', '.join(['*a'] * times)}]\n"


def test_aliases_up_to_the_bound_are_read() -> None:
    assert MAX_ALIAS_NODES == 100 * 100
    data = load_study_yaml(_repeats(100), "x.yaml")
    assert len(data["b"]) == 100 and data["b"][0] == list(range(99))
    with pytest.raises(UserInputError, match=r"^x\.yaml: line 2, column 405: alias \*a brings"):
        load_study_yaml(_repeats(101), "x.yaml")


def test_anchors_and_merge_keys_are_a_convenience_that_works(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        name: anchors
        dataset: {name: synthetic_sbm}
        teacher: {arch: gat, train: &train {epochs: 3, lr: 0.01}}
        student:
          arch: gat
          train: {<<: *train, epochs: 2}
        methods: [none, kd]
        search:
          student.width: {choice: &sizes [4, 8]}
          student.depth: {choice: [2, 3]}
        """
    )
    spec = load_study_spec(_write(tmp_path, "anchors.yaml", text))
    assert spec.teacher.train.epochs == 3 and spec.student.train.epochs == 2
    assert spec.student.train.lr == spec.teacher.train.lr == 0.01
    assert spec.dimension("student.width").args == (4, 8)


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(UserInputError, match=r"^r\.yaml: line 1, column 14: an alias inside its"):
        load_study_yaml("description: &r [1, *r]\n", "r.yaml")


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    deep = "x: " + "[" * 100_000 + "]" * 100_000 + "\n"
    with pytest.raises(
        UserInputError, match=rf"^d\.yaml: line 1, .*nested deeper than {MAX_DEPTH}"
    ):
        load_study_yaml(deep, "d.yaml")
    # Shallow text, deep through aliases: each anchor one level over the last.
    chain = [f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, MAX_DEPTH + 2)]
    text = "\n".join(["a0: &a0 [1]", *chain]) + "\n"
    with pytest.raises(UserInputError, match=r"nested deeper than 50 levels \(aliases expanded\)"):
        load_study_yaml(text, "d.yaml")
    assert load_study_yaml("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), "d.yaml")


# ---------------------------------------------------------------- size and encoding


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = _write(tmp_path, "big.yaml", "# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(UserInputError, match=rf"^{path}: the study file is over 1 MiB"):
        load_study_spec(path)
    # Text that comes another way (resume's gds_context.json) meets the same bound.
    with pytest.raises(UserInputError, match=r"^ctx\.yaml: the study file is over 1 MiB"):
        load_study_yaml(path.read_text(), "ctx.yaml")
    # An endless device is read one byte past the bound, then refused.
    with pytest.raises(UserInputError, match=r"^/dev/zero: the study file is over 1 MiB"):
        studyfile.read_study_file("/dev/zero")


def test_binary_and_control_characters_are_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bin.yaml", b"name: x\n" + bytes(range(256)))
    message = rf"^{path}: not a UTF-8 text file \(byte 0x80 at offset 136\); a study file is YAML$"
    with pytest.raises(UserInputError, match=message):
        load_study_spec(path)
    with pytest.raises(UserInputError) as err:
        load_study_spec(_write(tmp_path, "nul.yaml", b"name: x\x00\n"))
    assert str(err.value).startswith(f"{tmp_path}/nul.yaml: line 1, column 8: invalid YAML: ")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- every reader, one function


def test_every_path_that_reads_a_study_refuses_the_same_way(tmp_path: Path) -> None:
    """``load_study`` (run, --smoke) and ``StudyContext.from_json`` (resume) go through
    :mod:`study.studyfile`: an alias count over the bound (small: cheap even if accepted)."""
    anchored = ", ".join(["1"] * 99)
    text = _study_text("description", f"[&a [{anchored}], {', '.join(['*a'] * 101)}]")
    path = _write(tmp_path, "over.yaml", text)
    for smoke in (False, True):
        with pytest.raises(UserInputError, match=rf"^{path}: line \d+, column \d+: alias \*a "):
            load_study(path, smoke=smoke)
    ctx = {
        "spec_text": text,
        "source": str(path),
        "tracking_uri": "sqlite:///nowhere.db",
        "experiment_id": "1",
        "parent_run_id": "p",
        "teacher_run_id": "t",
        "teacher_hash": "h",
        "data_root": None,
    }
    with pytest.raises(UserInputError, match=rf"^{path}: line \d+, column \d+: alias \*a "):
        StudyContext.from_json(json.dumps(ctx))
    with pytest.raises(UserInputError, match=r"alias \*a "):
        parse_study_text(text, str(path))


# ---------------------------------------------------------------- hostile files through the CLI


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _dataset(value: dict) -> str:
    return yaml.safe_dump(tiny_study("hostile", dataset=value), sort_keys=False)


def _searcher(num_samples: int) -> str:
    searcher = {"algorithm": "random", "num_samples": num_samples}
    return yaml.safe_dump(tiny_study("hostile", searcher=searcher), sort_keys=False)


HOSTILE = [
    ("binary", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, "not a UTF-8 text file"),
    (
        "options root",
        _dataset({"name": "synthetic_sbm", "options": {"root": "/etc"}}),
        "dataset.options.root: the data folder is GDS_DATA_ROOT, not a study option",
    ),
    (
        "options evil",
        _dataset({"name": "synthetic_sbm", "options": {"evil": 1}}),
        "dataset.options.evil: unknown key (valid: ",
    ),
    (
        "options of a saved graph",
        _dataset({"path": "graph.pt", "options": {"root": "/etc"}}),
        "dataset.options.root: a saved graph takes no options",
    ),
    (
        "num_samples 1e12",
        _searcher(1_000_000_000_000),
        f"searcher.num_samples: at most {MAX_NUM_SAMPLES:,} configurations per study, "
        "got 1,000,000,000,000",
    ),
    ("num_samples a string, smoke", _searcher("many"), "searcher.num_samples: expected an "),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("command", ["validate", "validate --keys-only", "run", "run --smoke"])
@pytest.mark.parametrize(("text", "needle"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_file_is_one_line_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, text: str | bytes, needle: str
) -> None:
    import ray

    monkeypatch.chdir(tmp_path)  # where the default MLflow store would appear
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _write(tmp_path, "graph.pt", b"not read: refused before")
    path = _write(tmp_path, "study.yaml", text)
    storage = tmp_path / "storage"
    verb, *flags = command.split()
    argv = [verb, str(path), *flags] + (["--storage", str(storage)] if verb == "run" else [])
    code, out, err = _cli(argv)
    assert code == 2 and out == "", (out, err)
    assert err.count("\n") == 1, err
    assert err.startswith(f"distill-study {verb}: error: {path}: {needle}"), err
    assert not storage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph.pt", "study.yaml"]
    assert not ray.is_initialized()
