"""Train the fraud teacher with your own loop (plain PyTorch, nothing from the project) and save
its ``state_dict`` as ``teacher.pt`` beside this file, for the study's ``teacher.checkpoint``.

    python train_teacher.py                  # about 10 s on 2 CPU cores
    python train_teacher.py --compare-mlp    # also train a graph-blind MLP of the same size

Full-batch training on the train mask with class-weighted cross-entropy (5% positives), Adam,
the weights of the epoch with the best validation AUROC kept; prints validation and test AUROC.
Build the graph with the same options as the study file's ``dataset.options`` (the defaults
here match ``study.yaml``): the split is part of the graph, and a teacher trained on another
split would have seen the student's test nodes.

The checkpoint is written atomically (a temporary file, then ``os.replace``); an existing one is
refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn
from torch_geometric.data import Data

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fraud_graph and fraud_models sit beside this script

from fraud_graph import load_fraud_graph, save_atomic  # noqa: E402
from fraud_models import teacher  # noqa: E402

M = TypeVar("M", bound=nn.Module)


class MLP(nn.Module):
    """The graph-blind baseline of ``--compare-mlp``: the teacher's widths, no edges."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.lin1, self.lin2 = nn.Linear(in_channels, hidden), nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out_channels)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.lin1(x)), self.dropout, self.training)
        h = F.dropout(F.relu(self.lin2(h)), self.dropout, self.training)
        return self.head(h)


def auroc(logits: Tensor, y: Tensor) -> float:
    """AUROC of the positive class's probability (any monotone score gives the same value)."""
    score = logits.softmax(-1)[:, 1]
    return float(roc_auc_score(y.numpy(), score.numpy()))


def train(
    model: M, data: Data, *, epochs: int, lr: float, weight_decay: float
) -> tuple[M, int, float, float]:
    """Train on ``train_mask``; return the best-validation model, its epoch, val and test AUROC."""
    y_train = data.y[data.train_mask]
    counts = torch.bincount(y_train, minlength=2).float()
    class_weight = counts.sum() / (2 * counts)  # inverse frequency: about [0.53, 10] here
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_val, best_epoch, best_state = -1.0, -1, None
    for epoch in range(epochs):
        model.train()
        opt.zero_grad()
        logits = model(data.x, data.edge_index)
        loss = F.cross_entropy(logits[data.train_mask], y_train, weight=class_weight)
        loss.backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.x, data.edge_index)
        val = auroc(logits[data.val_mask], data.y[data.val_mask])
        if val > best_val:
            best_val, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        logits = model(data.x, data.edge_index)
    test = auroc(logits[data.test_mask], data.y[data.test_mask])
    return model, best_epoch, best_val, test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "teacher.pt", help="[teacher.pt here]")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    p.add_argument("--num-nodes", type=int, default=3000, help="dataset.options.num_nodes")
    p.add_argument("--positive-rate", type=float, default=0.05)
    p.add_argument("--graph-seed", type=int, default=0, help="dataset.options.seed")
    p.add_argument("--hidden-channels", type=int, default=64, help="teacher.options")
    p.add_argument("--dropout", type=float, default=0.3, help="teacher.options")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0, help="weights and dropout")
    p.add_argument("--compare-mlp", action="store_true", help="also train a graph-blind MLP")
    args = p.parse_args(argv)

    out = args.out.resolve()
    if out.exists() and not args.force:  # before training, not after a minute of it
        print(f"train_teacher.py: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    data = load_fraud_graph(
        num_nodes=args.num_nodes, positive_rate=args.positive_rate, seed=args.graph_seed
    )
    in_ch, out_ch = data.num_features, int(data.y.max()) + 1
    print(
        f"graph: {data.num_nodes} accounts, {data.num_edges} directed edges, "
        f"{int(data.y.sum())} fraud; train/val/test {int(data.train_mask.sum())}/"
        f"{int(data.val_mask.sum())}/{int(data.test_mask.sum())}"
    )
    hp = dict(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay)

    torch.manual_seed(args.seed)  # initial weights and dropout masks
    model = teacher(in_ch, out_ch, hidden_channels=args.hidden_channels, dropout=args.dropout)
    start = time.perf_counter()
    model, epoch, val, test = train(model, data, **hp)
    seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"teacher FraudSAGE ({n_params} parameters): best epoch {epoch}, "
        f"val AUROC {val:.4f}, test AUROC {test:.4f} ({seconds:.1f} s)"
    )
    if args.compare_mlp:
        torch.manual_seed(args.seed)
        mlp = MLP(in_ch, out_ch, args.hidden_channels, args.dropout)
        _, m_epoch, m_val, m_test = train(mlp, data, **hp)
        print(
            f"MLP baseline (no edges): best epoch {m_epoch}, "
            f"val AUROC {m_val:.4f}, test AUROC {m_test:.4f}"
        )

    try:
        save_atomic(model.state_dict(), out, force=args.force)  # checked again: it may exist now
    except FileExistsError as e:
        print(f"train_teacher.py: {e}", file=sys.stderr)
        return 2
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
