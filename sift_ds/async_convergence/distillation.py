"""The distillation loss of a converged task (Hinton et al., 2015) and the share of it in the task's loss.

``kd_loss`` is T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over the classes and
averaged over the rows (a row: an example of a sequence task, a position of a token task). The T^2
keeps the gradients' scale independent of T."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Rows are every dimension but the last (the classes); the teacher is not differentiated."""
    classes = student_logits.shape[-1]
    student = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().reshape(-1, classes).float() / temperature, dim=-1)
    if student.shape[0] == 0:
        return student_logits.sum() * 0.0
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def distill_share(step: int, converged_step: Optional[int], blend_steps: int) -> float:
    """The KD share of a task's loss at the step after ``step`` optimizer steps: 0 before convergence,
    then (step - converged_step + 1) / blend_steps, capped at 1 (1 at once with blend_steps 0)."""
    if converged_step is None or step < converged_step:
        return 0.0
    if blend_steps <= 0:
        return 1.0
    return min(1.0, (step - converged_step + 1) / blend_steps)


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the labelled rows (label -100: not labelled); 0 with none."""
    flat = labels.reshape(-1)
    if not bool((flat != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(flat.shape[0], -1).float(), flat, ignore_index=IGNORE_INDEX)
