"""Distillation loss and the teacher check (ClusterFit App. A, D; Hinton et al. 2015)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clusterfit.errors import ClusterFitError, ConfigError
from clusterfit.pretext import get_objective
from clusterfit.train.distill import check_distillable, distillation_loss


def test_hand_computed_case():
    # T = 2: student logits [0, 2 ln 3] soften to softmax([0, ln 3]) = [1/4, 3/4]; teacher [0, 0]
    # softens to [1/2, 1/2]. KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3). CE(student, label 0):
    # softmax([0, 2 ln 3]) = [1/10, 9/10] -> ln 10.
    s = torch.tensor([[0.0, 2 * math.log(3)]])
    t = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    got = distillation_loss(s, t, y, temperature=2.0, alpha=0.75)
    want = 0.75 * 4 * 0.5 * math.log(4 / 3) + 0.25 * math.log(10)
    assert math.isclose(got.item(), want, rel_tol=1e-6)


def test_explicit_formula_on_a_batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(5, (6,), generator=g)
    temp, alpha = 20.0, 0.75
    total = 0.0
    for i in range(6):
        ps = [math.exp(v / temp) for v in s[i].tolist()]
        pt = [math.exp(v / temp) for v in t[i].tolist()]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        kl = sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True))
        z = s[i].tolist()
        ce = math.log(sum(math.exp(v) for v in z)) - z[int(y[i])]
        total += alpha * temp**2 * kl + (1 - alpha) * ce
    got = distillation_loss(s, t, y)  # defaults T = 20, alpha = 0.75
    assert math.isclose(got.item(), total / 6, rel_tol=1e-9)


def test_alpha_limits_and_gradients():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 7, generator=g, requires_grad=True)
    t = torch.randn(4, 7, generator=g, requires_grad=True)
    y = torch.randint(7, (4,), generator=g)
    assert torch.allclose(distillation_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    # alpha = 1 with the student equal to the teacher: nothing to learn.
    assert distillation_loss(t.detach(), t, y, alpha=1.0).abs().item() < 1e-6
    loss = distillation_loss(s, t, y, temperature=4.0, alpha=0.5)
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher is a fixed target


def test_t_squared_keeps_the_soft_gradient_scale():
    # For large T the soft-term gradient is about (s - t) / (K T^2) per logit before the T^2
    # factor; with it, the gradient hardly depends on T.
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(8, 10, generator=g)
    t = torch.randn(8, 10, generator=g)
    y = torch.zeros(8, dtype=torch.long)
    norms = []
    for temp in (20.0, 80.0):
        s = s0.clone().requires_grad_(True)
        distillation_loss(s, t, y, temperature=temp, alpha=1.0).backward()
        norms.append(s.grad.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_argument_errors():
    s, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ClusterFitError, match="same K"):
        distillation_loss(s, torch.zeros(2, 4), y)
    with pytest.raises(ClusterFitError, match="one class per row"):
        distillation_loss(s, s, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(s, s, y, temperature=0.0)
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(s, s, y, alpha=1.5)


def test_check_distillable():
    check_distillable(get_objective("supervised", num_classes=3))
    check_distillable(get_objective("weak", weak_labels=[[0]]))
    check_distillable("supervised")
    for name, what in (("rotnet", "rotation"), ("jigsaw", "permutation")):
        for teacher in (name, get_objective(name)):
            with pytest.raises(ClusterFitError, match=r"App\. D") as err:
                check_distillable(teacher)
            assert what in str(err.value) and "distribution over the target classes" in str(
                err.value
            )
