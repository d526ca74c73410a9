"""The Objective contract, checked over every registered objective (ClusterFit §3.2, §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterfit.errors import ConfigError
from clusterfit.pretext import Objective, get_objective, list_objectives

KWARGS = {
    "supervised": {"label_noise": 0.5, "num_classes": 5},
    "weak": {"weak_labels": [[0, 1], [2], [3, 4], [1], [0], [4, 2], [3], [1]], "num_classes": 5},
    "rotnet": {},
    "jigsaw": {"num_permutations": 40},
}


def test_names():
    assert list_objectives() == ["jigsaw", "rotnet", "supervised", "weak"]
    with pytest.raises(ConfigError, match="choose one of"):
        get_objective("exemplar")
    with pytest.raises(ConfigError, match="bad arguments"):
        get_objective("rotnet", label_noise=0.1)
    with pytest.raises(ConfigError, match="bad arguments"):
        get_objective("supervised", noise=0.1)


CASES = [
    ("supervised", {}),
    ("weak", {"mode": "sample"}),
    ("weak", {"mode": "multilabel"}),
    ("rotnet", {}),
    ("jigsaw", {}),
]


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_contract(name, extra):
    obj = get_objective(name, **KWARGS[name], **extra)
    assert isinstance(obj, Objective) and obj.name == name
    assert obj.distillable == (name in ("supervised", "weak"))
    assert obj.config()["name"] == name
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2], dtype=np.int64)
    heads = obj.head_sizes(5)
    per_item = obj.item_targets(labels, seed=0)
    assert all(len(t) == len(labels) for t in per_item)
    idx = np.array([1, 4, 6])
    batch_targets = [torch.from_numpy(t[idx]) for t in per_item]
    x = torch.rand(3, 3, 32, 32)
    inputs, targets = obj.make_batch(x, batch_targets, torch.Generator().manual_seed(0))
    rows = inputs.shape[0]
    if obj.patches > 1:
        assert inputs.ndim == 5 and inputs.shape[1] == obj.patches
    else:
        assert inputs.ndim == 4
    assert len(targets) == len(heads)
    logits = [torch.randn(rows, h, requires_grad=True) for h in heads]
    loss = obj.loss(logits, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(z.grad is not None and z.grad.abs().sum() > 0 for z in logits)
