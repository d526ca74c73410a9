"""Knowledge distillation, the baseline ClusterFit is compared with (ClusterFit App. A, D).

The student is trained on the teacher's temperature-softened class distribution together with the
(noisy) labels (Hinton et al., 2015):

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

with the KL divergence and the cross-entropy averaged over the batch. The gradient of the softened
term with respect to the student logits scales as 1 / T^2 (the softmax of ``s / T`` brings 1 / T,
and the soft targets' differences shrink as another 1 / T), so multiplying it by T^2 keeps its
weight against the hard-label term about the same whatever the temperature. The paper uses
T = 20 (App. A).

Distillation needs a teacher whose outputs are a distribution over the target classes. A RotNet
or Jigsaw network predicts rotations or tile permutations, so it cannot be a teacher (App. D);
ClusterFit, which only uses the teacher's features, still applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.pretext.base import Objective, get_objective_class

__all__ = ["check_distillable", "distillation_loss"]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 20.0,
    alpha: float = 0.75,
) -> torch.Tensor:
    """Hinton distillation loss (ClusterFit App. A); see the module docstring for the formula.

    Args:
        student_logits: ``B x K``.
        teacher_logits: ``B x K`` (no gradient flows into them).
        labels: int64, B: the (noisy) hard labels.
        temperature: T > 0 (20 in the paper).
        alpha: weight in [0, 1] of the softened teacher term; ``1 - alpha`` weighs the labels.

    Returns:
        A scalar tensor. At ``alpha = 0`` it is ``F.cross_entropy(student_logits, labels)``.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ClusterFitError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must both be B x K over the same K classes"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ClusterFitError(
            f"labels {tuple(labels.shape)} must hold one class per row of the logits "
            f"({student_logits.shape[0]})"
        )
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
    t = float(temperature)
    hard = F.cross_entropy(student_logits, labels.to(student_logits.device, torch.long))
    if alpha == 0.0:
        return hard
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(student_logits) / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * hard


def check_distillable(objective: Objective | str) -> None:
    """Raise unless a network trained on ``objective`` can be a distillation teacher (App. D).

    Args:
        objective: an :class:`Objective` or its registry name.

    Raises:
        ClusterFitError: for RotNet, Jigsaw, or any objective with ``distillable = False``.
    """
    cls = get_objective_class(objective) if isinstance(objective, str) else type(objective)
    if cls.distillable:
        return
    why = cls.not_distillable_reason or "its outputs are not a distribution over the target classes"
    raise ClusterFitError(
        f"cannot distill from a {cls.name!r} network: {why}, so there are no soft class targets "
        "for a student (ClusterFit App. D). Use ClusterFit on its features instead, or a teacher "
        "trained with the 'supervised' or 'weak' objective"
    )
