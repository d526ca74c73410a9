"""RotNet: predict which of four rotations was applied (Gidaris et al., ICLR 2018).

A self-supervised N_pre objective of ClusterFit (§4.2, App. C): every image is shown at 0, 90, 180
and 270 degrees and the network classifies the rotation (4-way). The rotation logits are not a
distribution over any target classes, so a RotNet network cannot be a distillation teacher
(App. D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clusterfit.errors import ClusterFitError
from clusterfit.pretext.base import Objective, check_images, register_objective

__all__ = ["ROTATIONS", "RotNetObjective"]

#: Rotation (degrees, counter-clockwise as shown with row 0 at the top) of target class k.
ROTATIONS = (0, 90, 180, 270)


@register_objective("rotnet")
class RotNetObjective(Objective):
    """Four rotated copies of each image, 4-way rotation classification (one head of size 4).

    :meth:`make_batch` returns ``4B`` images grouped by rotation: item ``k * B + i`` is image i
    rotated by ``ROTATIONS[k]`` = ``90 k`` degrees, i.e. ``torch.rot90(x[i], k, dims=(1, 2))``
    (counter-clockwise), with target ``k``. Images must be square.
    """

    uses_labels = False
    distillable = False
    not_distillable_reason = (
        "its 4 outputs predict the rotation (0/90/180/270 degrees) applied to the image, not a "
        "distribution over the target classes"
    )

    def __init__(self) -> None:
        self._config = {}

    def head_sizes(self, num_classes: int | None) -> list[int]:
        """``[4]`` whatever the dataset's number of classes."""
        return [len(ROTATIONS)]

    def make_batch(
        self, x: torch.Tensor, targets: Sequence[torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` (``B x C x S x S``) -> (``4B x C x S x S`` rotated images, ``[4B int64]``).

        ``targets`` are ignored (RotNet makes its own); nothing is random, so ``generator`` is
        unused.
        """
        check_images(x, self.name)
        b, _, h, w = x.shape
        if h != w:
            raise ClusterFitError(
                f"RotNet needs square images to stack the rotated copies, got {h} x {w}; use a "
                "square crop size"
            )
        inputs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(len(ROTATIONS))])
        rot = torch.arange(len(ROTATIONS), device=x.device).repeat_interleave(b)
        return inputs.contiguous(), [rot]
