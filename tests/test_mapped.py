"""File-backed arrays: rows read back as written, never mapped; the teacher's shared outputs
written layer by layer equal the full forward and are read by rows in training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Data

from study.data.base import NodeTask
from study.distill.methods import build_method
from study.mapped import INDEX_FILE, MappedArray, MappedOutput, open_arrays, seal_arrays
from study.models import build_model
from study.models.base import ModelOutput
from study.sampling import NeighborSampler
from study.teacher_outputs import shared_teacher_outputs, teacher_outputs_path
from study.train import sampled_step
from study.train_config import DistillConfig


def test_rows_read_back_what_was_written_in_any_order_with_repeats(tmp_path: Path) -> None:
    values = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    array = MappedArray(tmp_path / "a.f32", (50, 7), writable=True)
    array.write(0, values[:20])
    array.write(20, values[20:])
    # Runs, singletons, repeats, unsorted: one read per run of consecutive rows.
    index = torch.tensor([49, 3, 4, 5, 3, 0, 48, 17, 17, 30])
    assert torch.equal(array.rows(index), values[index])
    assert array.rows(torch.empty(0, dtype=torch.long)).shape == (0, 7)
    assert "tensor" not in array.__dict__  # reading rows never mapped the file
    assert torch.equal(array.tensor, values)  # the whole-array map agrees
    with pytest.raises(IndexError, match="rows outside"):
        array.rows(torch.tensor([2, 50]))
    with pytest.raises(IndexError, match="outside"):
        array.write(45, values[:6])  # past the last row: the file does not grow
    with pytest.raises(ValueError, match=r"expected \[M, 7\]"):
        array.write(0, values[:, :6])
    assert (tmp_path / "a.f32").stat().st_size == 50 * 7 * 4


def test_long_runs_move_in_pieces_and_empty_arrays_open(tmp_path: Path, monkeypatch) -> None:
    import study.mapped as mapped

    monkeypatch.setattr(mapped, "_MAX_TRANSFER", 100)  # 28-byte rows: pieces cut rows apart
    values = torch.randn(40, 7, generator=torch.Generator().manual_seed(1))
    array = MappedArray(tmp_path / "a.f32", (40, 7), writable=True)
    array.write(0, values)
    assert torch.equal(array.rows(torch.arange(40)), values)
    empty = MappedArray(tmp_path / "e.f32", (0, 3), writable=True)
    assert empty.tensor.shape == (0, 3) and empty.rows(torch.empty(0)).shape == (0, 3)


def test_a_sealed_folder_opens_in_the_order_written(tmp_path: Path) -> None:
    folder = tmp_path / "outs"
    folder.mkdir()
    arrays = {
        name: MappedArray(folder / f"{name}.f32", (4, w), writable=True)
        for name, w in (("hidden0", 3), ("hidden1", 2), ("logits", 5))
    }
    for i, array in enumerate(arrays.values()):
        array.write(0, torch.full(array.shape, float(i)))
    seal_arrays(folder, arrays)
    opened = open_arrays(folder)
    assert list(opened) == ["hidden0", "hidden1", "logits"]
    assert torch.equal(opened["hidden1"].rows(torch.tensor([2])), torch.ones(1, 2))


def small_task(n: int = 120) -> NodeTask:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 6, generator=gen)
    edge_index = torch.randint(0, n, (2, 6 * n), generator=gen)
    mask = torch.ones(n, dtype=torch.bool)
    graph = Data(x=x, edge_index=edge_index, y=y, mask=mask)
    return NodeTask("small", 6, 3, False, [graph], [graph], [graph])


@pytest.mark.parametrize(
    ("arch", "sizes"),
    [("sage", {"width": 8, "depth": 2}), ("gat", {"width": 4, "depth": 3, "heads": 2})],
)
def test_shared_outputs_in_files_equal_the_full_forward(
    tmp_path: Path, arch: str, sizes: dict
) -> None:
    task = small_task()
    torch.manual_seed(0)
    teacher = build_model(arch, in_channels=6, out_channels=3, **sizes).eval()
    graph = task.train[0]
    with torch.no_grad():
        full = teacher(graph.x, graph.edge_index)
    out = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    assert isinstance(out, MappedOutput)
    assert (teacher_outputs_path("k", tmp_path) / INDEX_FILE).is_file()
    assert not list(tmp_path.glob(".*partial*"))  # the staging folder was moved into place
    assert out.logits is not None and full.logits is not None
    torch.testing.assert_close(out.logits, full.logits, rtol=1e-5, atol=1e-5)
    assert len(out.hidden) == len(full.hidden)
    for got, want in zip(out.hidden, full.hidden, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Rows gathered from the files equal the rows of the full forward.
    index = torch.tensor([5, 0, 119, 6, 5])
    rows = out.rows(index, torch.device("cpu"))
    assert rows.logits is not None
    torch.testing.assert_close(rows.logits, full.logits[index], rtol=1e-5, atol=1e-5)


def test_outputs_are_computed_once_and_an_unsealed_folder_is_not_read(tmp_path: Path) -> None:
    task = small_task()
    torch.manual_seed(0)
    teacher = build_model("gcn", in_channels=6, out_channels=3, width=8, depth=2).eval()
    first = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    folder = teacher_outputs_path("k", tmp_path)
    stamp = (folder / "logits.f32").stat().st_mtime_ns
    again = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    assert (folder / "logits.f32").stat().st_mtime_ns == stamp  # read, not recomputed
    assert again.logits is not None and first.logits is not None
    assert torch.equal(again.logits, first.logits)
    want = first.logits.clone()  # the maps read the files, which the next lines damage
    # Cut short by a crash or power loss: a truncated file, then an unreadable index.
    (folder / "logits.f32").write_bytes(b"\0" * 8)
    stale = tmp_path / ".k.partial-0dead0"  # a writer killed mid-way
    stale.mkdir()
    for damage in ("truncated", "index"):
        if damage == "index":
            (folder / INDEX_FILE).write_text("")
        redone = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
        assert redone.logits is not None
        assert torch.equal(redone.logits, want), damage
        assert not stale.exists()


def test_a_user_model_without_layers_is_saved_from_its_full_forward(tmp_path: Path) -> None:
    from study.inference import supports_layerwise
    from study.models.user import HookedModel
    from tests.test_inference import _UserNet

    task = small_task()
    torch.manual_seed(0)
    teacher = HookedModel(_UserNet(in_channels=6), ["conv1"], {"arch": "factory"}).eval()
    assert not supports_layerwise(teacher)
    out = shared_teacher_outputs(teacher, task, "u", cache_dir=tmp_path)
    with torch.no_grad():
        want = teacher(task.train[0].x, task.train[0].edge_index)
    assert out.logits is not None and want.logits is not None
    torch.testing.assert_close(out.logits, want.logits)
    torch.testing.assert_close(out.hidden[0], want.hidden[0])


@pytest.mark.parametrize("method", ["lsp", "kd"])
def test_a_step_reads_the_same_rows_from_files_as_from_memory(tmp_path: Path, method: str) -> None:
    task = small_task()
    torch.manual_seed(0)
    teacher = build_model("sage", in_channels=6, out_channels=3, width=8, depth=2).eval()
    mapped = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    in_memory = ModelOutput(
        logits=mapped.logits.clone(),  # type: ignore[union-attr]
        hidden=[h.clone() for h in mapped.hidden],
    )
    graph = task.train[0]
    sampler = NeighborSampler(graph.edge_index, graph.num_nodes, [3, 2], use_pyg=False)
    sub = sampler.sample(torch.tensor([4, 9, 77]), torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    student = build_model("gcn", in_channels=6, out_channels=3, width=8, depth=2).eval()
    run = build_method(DistillConfig(method))
    dev = torch.device("cpu")
    _, want = sampled_step(student, graph, sub, in_memory, run, None, False, dev)
    _, got = sampled_step(student, graph, sub, mapped, run, None, False, dev)
    assert want is not None and got is not None and want.item() > 0
    torch.testing.assert_close(got, want)


def test_a_term_that_never_reads_the_teachers_logits_does_not_read_their_file(
    tmp_path: Path, monkeypatch
) -> None:
    task = small_task()
    torch.manual_seed(0)
    teacher = build_model("sage", in_channels=6, out_channels=3, width=8, depth=2).eval()
    mapped = shared_teacher_outputs(teacher, task, "k", cache_dir=tmp_path)
    read: list[str] = []
    original = MappedArray.rows

    def recording(self: MappedArray, index: torch.Tensor) -> torch.Tensor:
        read.append(self.path.stem)
        return original(self, index)

    monkeypatch.setattr(MappedArray, "rows", recording)
    graph = task.train[0]
    sampler = NeighborSampler(graph.edge_index, graph.num_nodes, [3, 2], use_pyg=False)
    sub = sampler.sample(torch.tensor([4, 9, 77]), torch.Generator().manual_seed(0))
    student = build_model("gcn", in_channels=6, out_channels=3, width=8, depth=2)
    dev = torch.device("cpu")
    for method, want in (("lsp", ["hidden0"]), ("kd", ["logits", "hidden0"])):
        read.clear()
        sampled_step(
            student, graph, sub, mapped, build_method(DistillConfig(method)), None, False, dev
        )
        assert read == want, method
