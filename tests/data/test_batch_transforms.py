"""Batched augmentation (clusterfit.data.transforms) against hand-made windows and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clusterfit.data import BatchAugment, RandomResizedCropBatch, channel_stats, to_float


def _arange_images(b: int, c: int, h: int, w: int) -> torch.Tensor:
    return (torch.arange(b * c * h * w) % 251).to(torch.uint8).view(b, c, h, w)


def _np_window(img: np.ndarray, p: int, oy: int, ox: int, mode: str, flip: bool) -> np.ndarray:
    """Reference: numpy pad (C x H x W), cut H x W at (oy, ox), mirror if flip."""
    _, h, w = img.shape
    np_mode = "constant" if mode == "zeros" else "reflect"
    padded = np.pad(img, ((0, 0), (p, p), (p, p)), mode=np_mode)
    win = padded[:, oy : oy + h, ox : ox + w]
    return win[:, :, ::-1] if flip else win


def test_to_float() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 0.2, 1.0]))
    f = torch.rand(3)
    assert to_float(f) is f
    with pytest.raises(TypeError):
        to_float(torch.arange(3))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_offsets_give_expected_window(mode: str) -> None:
    p = 2
    x = _arange_images(6, 2, 6, 7)
    oy = torch.tensor([0, 4, 2, 1, 3, 0])
    ox = torch.tensor([4, 0, 2, 3, 1, 0])
    fl = torch.tensor([False, False, False, True, True, True])
    out = BatchAugment(p, flip=True, padding_mode=mode).apply(x, oy, ox, fl)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i in range(6):
        ref = _np_window(x[i].numpy(), p, int(oy[i]), int(ox[i]), mode, bool(fl[i]))
        assert np.array_equal(np.rint(out[i].numpy() * 255).astype(np.uint8), ref), i
    # offset (p, p) without flip is the identity
    same = BatchAugment(p).apply(x, torch.full((6,), p), torch.full((6,), p), fl & False)
    assert torch.equal(same, x.float() / 255)


def test_hand_made_window_and_flip() -> None:
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    aug = BatchAugment(1)
    # offset (0, 2) into the 1-padded image: rows -1..2, cols 1..4 (col 4 and row -1 are zero)
    out = aug.apply(img, torch.tensor([0]), torch.tensor([2]), torch.tensor([False]))
    expected = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    assert torch.equal((out[0, 0] * 255).round().long(), expected)
    flipped = aug.apply(img, torch.tensor([1]), torch.tensor([1]), torch.tensor([True]))
    assert torch.equal((flipped[0, 0] * 255).round().long(), img[0, 0].flip(1).long())


def test_random_batch_is_some_valid_crop_and_deterministic() -> None:
    p = 3
    x = torch.randint(
        0, 256, (24, 3, 9, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)
    )
    aug = BatchAugment(p, padding_mode="zeros")
    out = aug(x, torch.Generator().manual_seed(0))
    again = aug(x, torch.Generator().manual_seed(0))
    other = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == torch.float32
    got = np.rint(out.numpy() * 255).astype(np.uint8)
    for i in range(len(x)):
        candidates = [
            _np_window(x[i].numpy(), p, oy, ox, "zeros", fl)
            for oy in range(2 * p + 1)
            for ox in range(2 * p + 1)
            for fl in (False, True)
        ]
        assert any(np.array_equal(got[i], cand) for cand in candidates), i


def test_sample_distribution_and_auto_padding() -> None:
    aug = BatchAugment("auto")
    assert aug.padding_for(32, 32) == 4 and aug.padding_for(28, 28) == 3
    oy, ox, fl = aug.sample(4000, 32, 32, torch.Generator().manual_seed(0))
    assert oy.min() == 0 and oy.max() == 8 and ox.min() == 0 and ox.max() == 8
    assert np.bincount(oy.numpy(), minlength=9).min() > 300  # roughly uniform over 0..8
    assert 0.45 < fl.float().mean() < 0.55
    _, _, none = BatchAugment(flip=False).sample(100, 8, 8, torch.Generator().manual_seed(0))
    assert not none.any()
    with pytest.raises(ValueError, match="reflect"):
        BatchAugment(8, padding_mode="reflect")(
            torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.Generator()
        )


def test_random_resized_crop_hand_cases() -> None:
    x = _arange_images(2, 3, 8, 8)
    rrc = RandomResizedCropBatch(4, flip=False)
    # a 4 x 4 box resampled to 4 x 4 is exactly the window (pixel centres line up)
    boxes = torch.tensor([[2.0, 3.0, 4.0, 4.0], [0.0, 0.0, 4.0, 4.0]])
    out = rrc.apply(x, boxes, torch.tensor([False, True]))
    assert torch.allclose(out[0] * 255, x[0, :, 3:7, 2:6].float(), atol=1e-3)
    assert torch.allclose(out[1] * 255, x[1, :, 0:4, 0:4].flip(2).float(), atol=1e-3)
    # scale 1, ratio 1 on a square image: the whole image, same size -> identity
    whole = RandomResizedCropBatch(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(whole(x, torch.Generator().manual_seed(0)) * 255, x.float(), atol=1e-3)


def test_random_resized_crop_boxes_and_determinism() -> None:
    rrc = RandomResizedCropBatch(16, scale=(0.2, 0.6))
    boxes, flipped = rrc.sample_boxes(500, 40, 30, torch.Generator().manual_seed(0))
    x0, y0, bw, bh = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + bw <= 30).all() and (y0 + bh <= 40).all()
    frac = bw * bh / (40 * 30)
    assert frac.min() > 0.17 and frac.max() < 0.64  # rounding of w, h widens the range a bit
    ar = bw / bh
    assert ar.min() > 0.7 and ar.max() < 1.4
    assert 0.4 < flipped.float().mean() < 0.6
    x = torch.randint(0, 256, (5, 3, 40, 30), dtype=torch.uint8)
    a = rrc(x, torch.Generator().manual_seed(3))
    b = rrc(x, torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_channel_stats_matches_numpy() -> None:
    x = torch.randint(
        0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    x[:, 1] //= 4  # channels differ
    mean, std = channel_stats(x, chunk=7)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-12)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-12)
    assert len(mean) == 3 and mean[1] < mean[0]
