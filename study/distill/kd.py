"""Knowledge distillation on softened outputs (KD).

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015 (DESIGN.md
section 2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from study.errors import UserInputError


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    multilabel: bool = False,
) -> Tensor:
    """Soft-target loss between student and teacher logits, scaled by ``T^2``.

    Single-label: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, summed over classes and
    averaged over rows ("batchmean").

    Multi-label (e.g. PPI): the paper calls KD inapplicable here. This is the natural extension,
    not the paper's method: each label is a Bernoulli variable, and the loss is
    ``T^2 * mean over entries of KL(Bern(sigmoid(t / T)) || Bern(sigmoid(s / T)))``. It is
    computed from ``logsigmoid`` so that logits of any size give no NaN or Inf.

    The ``T^2`` factor keeps the gradient scale independent of ``T``. Mixing with the hard-label
    loss, ``(1 - alpha) * H + alpha * kd_loss``, is the training loop's job, as is computing the
    teacher's logits once under ``no_grad``.

    Args:
        student_logits: ``[N, C]`` student logits (gradients flow here).
        teacher_logits: ``[N, C]`` teacher logits.
        temperature: softening temperature ``T > 0``.
        multilabel: per-label sigmoid outputs instead of one softmax per row.

    Returns:
        A scalar, 0 when the logits are equal.

    Raises:
        UserInputError: a temperature that is not positive.
    """
    if not temperature > 0:
        raise UserInputError(f"kd: temperature must be > 0, got {temperature!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    s = student_logits / temperature
    t = teacher_logits.to(s.dtype) / temperature
    scale = temperature * temperature
    if not multilabel:
        log_p_s = F.log_softmax(s, dim=-1)
        log_p_t = F.log_softmax(t, dim=-1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * scale

    # log p and log(1 - p) of each Bernoulli, both finite for any finite logit.
    log_p_s, log_q_s = F.logsigmoid(s), F.logsigmoid(-s)
    log_p_t, log_q_t = F.logsigmoid(t), F.logsigmoid(-t)
    kl = log_p_t.exp() * (log_p_t - log_p_s) + log_q_t.exp() * (log_q_t - log_q_s)
    return kl.mean() * scale
