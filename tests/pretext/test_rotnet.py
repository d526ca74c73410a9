"""RotNet objective (Gidaris et al. 2018; ClusterFit §4.2)."""

from __future__ import annotations

import pytest
import torch

from clusterfit.errors import ClusterFitError
from clusterfit.pretext import RotNetObjective, get_objective
from clusterfit.pretext.rotnet import ROTATIONS


def test_targets_match_the_rotation_applied():
    obj = get_objective("rotnet")
    assert obj.head_sizes(10) == [4] and obj.head_sizes(None) == [4]
    assert not obj.distillable and not obj.uses_labels and obj.patches == 1
    assert obj.item_targets(torch.zeros(3).numpy(), seed=0) == []
    x = torch.rand(5, 3, 12, 12)
    inputs, (t,) = obj.make_batch(x, [], torch.Generator().manual_seed(0))
    assert inputs.shape == (20, 3, 12, 12) and t.shape == (20,) and t.dtype == torch.int64
    for j in range(20):
        k, i = int(t[j]), j % 5
        assert j // 5 == k
        assert torch.equal(inputs[j], torch.rot90(x[i], k, dims=(1, 2)))
        # And no other rotation of that image matches (random images are not symmetric).
        for other in set(range(4)) - {k}:
            assert not torch.equal(inputs[j], torch.rot90(x[i], other, dims=(1, 2)))


def test_hand_made_image_counter_clockwise():
    img = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    inputs, (t,) = RotNetObjective().make_batch(img, [], torch.Generator())
    expected = {
        0: [[0, 1, 2], [3, 4, 5], [6, 7, 8]],
        1: [[2, 5, 8], [1, 4, 7], [0, 3, 6]],  # 90 degrees counter-clockwise
        2: [[8, 7, 6], [5, 4, 3], [2, 1, 0]],
        3: [[6, 3, 0], [7, 4, 1], [8, 5, 2]],
    }
    assert t.tolist() == [0, 1, 2, 3]
    assert ROTATIONS == (0, 90, 180, 270)
    for j in range(4):
        assert inputs[j, 0].tolist() == expected[int(t[j])]


def test_loss_and_errors():
    obj = RotNetObjective()
    _, targets = obj.make_batch(torch.rand(2, 1, 8, 8), [], torch.Generator())
    logits = torch.zeros(8, 4, requires_grad=True)
    loss = obj.loss([logits], targets)
    assert torch.isclose(loss, torch.log(torch.tensor(4.0)))
    loss.backward()
    with pytest.raises(ClusterFitError, match="square"):
        obj.make_batch(torch.rand(2, 3, 8, 10), [], torch.Generator())
    with pytest.raises(ClusterFitError, match="float images"):
        obj.make_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [], torch.Generator())
