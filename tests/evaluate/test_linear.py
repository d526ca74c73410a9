"""Linear probe: separable data, chance on noise, learning rate chosen without the test split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clusterfit.errors import ClusterFitError, DataError
from clusterfit.evaluate.linear import linear_probe, stratified_split


def _blobs(n: int, d: int, c: int, seed: int, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    x = np.zeros((n, d), np.float32)
    x[np.arange(n), y] = 1.0  # class c lives on axis c: exactly linearly separable
    x += spread * rng.uniform(-1, 1, (n, d)).astype(np.float32) / d
    return x, y


def test_separable_features_reach_100_percent():
    x, y = _blobs(700, 16, 6, seed=0)
    before = x.copy()
    out = linear_probe(x[:500], y[:500], x[500:], y[500:], n_updates=150, progress=False)
    np.testing.assert_array_equal(x, before)  # the caller's features are never standardised
    assert out["top1"] == 100.0
    assert out["top5"] == 100.0
    assert out["train_top1"] == 100.0
    assert out["n_val"] == sum(round(0.1 * n) for n in np.bincount(y[:500]))
    assert set(out["val_top1"]) == {0.1, 0.01, 0.001}
    assert out["epochs"] == pytest.approx(150 / math.ceil(500 / 256))


def test_random_labels_give_chance():
    # Test labels are drawn independently of everything the probe sees, so *whatever* it
    # predicts, each test item is right with probability exactly 1/C and the test top-1 is
    # Binomial(M, 1/C) / M. With M = 2000, C = 4 its std is sqrt(.25 * .75 / 2000) = 0.97
    # points; we allow 4.5 std (two-sided chance of a false failure < 1e-5). Top-5 with
    # C = 10 is likewise Binomial(M, 1/2) / M (std 1.12 points).
    rng = np.random.default_rng(1)
    m = 2000
    x_tr, x_te = rng.normal(size=(800, 40)), rng.normal(size=(m, 40))
    for c, metric, p in ((4, "top1", 0.25), (10, "top5", 0.5)):
        y_tr, y_te = rng.integers(0, c, 800), rng.integers(0, c, m)
        out = linear_probe(x_tr, y_tr, x_te, y_te, lrs=(0.01,), n_updates=60, progress=False)
        std = 100 * math.sqrt(p * (1 - p) / m)
        assert abs(out[metric] - 100 * p) < 4.5 * std, (metric, out[metric])


def _two_lr_data():
    # Classes that differ along a low-variance direction hidden among high-variance noise:
    # a large and a tiny learning rate end up with visibly different classifiers.
    rng = np.random.default_rng(2)
    n, d = 900, 30
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) * 3.0
    x[:, 0] = y + 0.6 * rng.normal(size=n)
    x[:, 1] = (y == 1) + 0.6 * rng.normal(size=n)
    return x.astype(np.float32), y


def test_learning_rate_is_chosen_on_validation_not_on_test():
    x, y = _two_lr_data()
    x_tr, y_tr, x_te, y_te = x[:600], y[:600], x[600:], y[600:]
    lrs = (1.0, 1e-4)
    kw = dict(n_updates=120, progress=False, return_predictions=True)
    out = linear_probe(x_tr, y_tr, x_te, y_te, lrs=lrs, **kw)
    chosen, other = out["lr"], next(v for v in lrs if v != out["lr"])
    # With one rate the probe trains exactly the final classifier of that rate.
    single = {v: linear_probe(x_tr, y_tr, x_te, y_te, lrs=(v,), **kw) for v in lrs}
    np.testing.assert_array_equal(single[chosen]["predictions"], out["predictions"])
    differ = single[chosen]["predictions"] != single[other]["predictions"]
    assert differ.sum() >= 5
    # Adversarial test labels: the rejected rate is right wherever the two disagree, so a
    # selection that looked at the test split would now pick it.
    y_adv = np.where(differ, single[other]["predictions"], y_te)
    acc = {v: 100 * np.mean(single[v]["predictions"] == y_adv) for v in lrs}
    assert acc[other] > acc[chosen]
    adv = linear_probe(x_tr, y_tr, x_te, y_adv, lrs=lrs, **kw)
    assert adv["lr"] == chosen
    assert adv["val_top1"] == out["val_top1"]
    assert adv["top1"] == pytest.approx(acc[chosen])
    # Test features do not matter either.
    blank = linear_probe(x_tr, y_tr, np.zeros_like(x_te), y_te, lrs=lrs, **kw)
    assert blank["lr"] == chosen and blank["val_loss"] == out["val_loss"]


def test_validation_items_are_held_out_of_training():
    # Random labels on as many dimensions as items: the probe (nearly) memorises its training items
    # but cannot beat chance (25%) on items it did not train on. 40 validation items: chance has
    # std 6.8 points, so 60% is over 5 std above it.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(400, 400)).astype(np.float32), rng.integers(0, 4, 400)
    out = linear_probe(x, y, x[:10], y[:10], lrs=(0.1, 0.01), n_updates=100, progress=False)
    assert out["n_val"] == 40
    assert out["train_top1"] > 90.0
    assert max(out["val_top1"].values()) < 60.0


def test_stratified_split_is_stratified_seeded_and_disjoint():
    y = np.repeat(np.arange(4), [50, 20, 10, 1])
    fit, val = stratified_split(y, 0.1, seed=3)
    assert np.intersect1d(fit, val).size == 0
    assert np.union1d(fit, val).size == len(y)
    np.testing.assert_array_equal(np.bincount(y[val], minlength=4), [5, 2, 1, 0])
    _, val2 = stratified_split(y, 0.1, seed=3)
    np.testing.assert_array_equal(val, val2)
    assert not np.array_equal(val, stratified_split(y, 0.1, seed=4)[1])


def test_epochs_override_and_errors():
    x, y = _blobs(300, 8, 3, seed=5)
    out = linear_probe(x, y, x, y, lrs=(0.01,), epochs=3, batch_size=64, progress=False)
    assert out["n_updates"] == 3 * math.ceil(300 / 64)
    with pytest.raises(DataError, match="X_test"):
        linear_probe(x, y, x[:, :4], y, progress=False)
    with pytest.raises(DataError, match="negative"):
        linear_probe(x, y - 1, x, y, progress=False)
    with pytest.raises(ClusterFitError, match="validation"):
        linear_probe(x[:3], y[:3], x[:3], y[:3], progress=False)
    with pytest.warns(UserWarning, match="absent"):
        out = linear_probe(x, y, x, np.full(300, 7), lrs=(0.01,), n_updates=5, progress=False)
    assert out["top1"] == 0.0


def test_memmap_input_gives_the_same_result_and_is_not_modified(tmp_path):
    x, y = _blobs(300, 8, 3, seed=6)
    path = tmp_path / "res5.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    kw = dict(lrs=(0.1, 0.01), n_updates=40, progress=False)
    a = linear_probe(mm[:200], y[:200], mm[200:], y[200:], **kw)
    b = linear_probe(x[:200], y[:200], x[200:], y[200:], **kw)
    assert a == b
    np.testing.assert_array_equal(np.load(path), x)


def _reference_per_lr(z, y, n_classes, lr, *, n_updates, batch_size, seed, momentum, wd):
    """The probe trained the plain way, one rate at a time: nn.Linear + torch.optim.SGD (weight
    decay on the weights only) on the same seeded mini-batches, rate / 10 after each third."""
    import torch

    n, d = z.shape
    lin = torch.nn.Linear(d, n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD(
        [
            {"params": [lin.weight], "weight_decay": wd},
            {"params": [lin.bias], "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=momentum,
    )
    gen = torch.Generator().manual_seed(seed)
    bs = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(n_updates):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + bs]
        pos += bs
        for group in opt.param_groups:
            group["lr"] = lr * 0.1 ** min(3 * step // n_updates, 2)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(z[idx]), y[idx]).backward()
        opt.step()
    return lin.weight.detach(), lin.bias.detach()


@pytest.mark.parametrize(("n", "d", "dual"), [(300, 40, False), (120, 900, True)])
def test_stacked_rates_equal_training_each_rate_alone(n, d, dual):
    import torch

    from clusterfit.evaluate.linear import _dual_is_cheaper, _train_stacked

    rng = np.random.default_rng(7)
    z = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 5, n))
    lrs = (0.1, 0.01, 0.001)
    kw = dict(n_updates=90, batch_size=64, momentum=0.9, weight_decay=5e-4, seed=3)
    assert _dual_is_cheaper(n, d, 15, 90, 64) == dual
    for form in (None, not dual):  # the automatic choice, and the other form
        w, b = _train_stacked(z, y, 5, lrs, progress=False, desc="", dual=form, **kw)
        for j, lr in enumerate(lrs):
            ref_w, ref_b = _reference_per_lr(
                z,
                y,
                5,
                lr,
                n_updates=90,
                batch_size=64,
                seed=3,
                momentum=0.9,
                wd=5e-4,
            )
            scale = float(ref_w.abs().max())
            np.testing.assert_allclose(w[j].numpy(), ref_w.numpy(), atol=2e-4 * scale)
            np.testing.assert_allclose(b[j].numpy(), ref_b.numpy(), atol=2e-4 * scale + 1e-6)


def test_dual_form_gives_the_same_probe_numbers(monkeypatch):
    # Few items, wide features (a smoke run): the probe trains through the Gram matrix; its
    # numbers equal those of the feature-space form to well within 0.3 points.
    import clusterfit.evaluate.linear as lin

    rng = np.random.default_rng(11)
    c, d = 6, 2000
    means = rng.normal(size=(c, d)).astype(np.float32) * 0.08
    y = rng.integers(0, c, 700)
    x = means[y] + rng.normal(size=(700, d)).astype(np.float32)
    kw = dict(n_updates=120, progress=False)
    assert lin._dual_is_cheaper(200, d, 3 * c, 120, 200)
    fast = lin.linear_probe(x[:200], y[:200], x[200:], y[200:], **kw)
    monkeypatch.setattr(lin, "_dual_is_cheaper", lambda *a: False)
    slow = lin.linear_probe(x[:200], y[:200], x[200:], y[200:], **kw)
    assert fast["lr"] == slow["lr"]
    assert abs(fast["top1"] - slow["top1"]) <= 0.3
    assert abs(fast["train_top1"] - slow["train_top1"]) <= 0.3
    for lr in fast["val_top1"]:
        assert abs(fast["val_top1"][lr] - slow["val_top1"][lr]) <= 0.3


def test_progress_bar_shown_while_training(capsys):
    x, y = _blobs(200, 8, 3, seed=5)
    linear_probe(x, y, x, y, lrs=(0.1, 0.01), n_updates=20, progress=True)
    err = capsys.readouterr().err
    assert "linear probe: lr sweep" in err and "linear probe: final" in err


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_timed_thread_choice_changes_no_number(monkeypatch, precision):
    """The SGD steps timed on torch's threads and on one give the weights of untimed steps on a
    fixed count (the same updates, the same bits), in either precision."""
    import torch

    from clusterfit.evaluate import linear

    rng = np.random.default_rng(11)
    z = torch.from_numpy(rng.normal(size=(500, 700)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 500))
    kw = dict(n_updates=40, batch_size=64, momentum=0.9, weight_decay=5e-4, seed=2)
    kw["precision"] = precision
    lrs = (0.1, 0.01, 0.001)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(linear, "_TIMED", {})
        timed = linear._train_stacked(z, y, 10, lrs, progress=False, desc="", dual=False, **kw)
        assert linear._TIMED["threads"] in (1, 2)
        for threads in (1, 2):
            monkeypatch.setattr(linear, "_faster_threads", lambda *a, t=threads: (t, 0))
            fixed = linear._train_stacked(z, y, 10, lrs, progress=False, desc="", dual=False, **kw)
            for a, b in zip(timed, fixed, strict=True):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_bfloat16_updates_follow_the_float32_ones():
    """The bfloat16 products change the rounding only: after many updates the weights stay
    within a percent of the float32 weights (relative to their scale), for every stacked rate."""
    import torch

    from clusterfit.evaluate.linear import _train_stacked

    rng = np.random.default_rng(5)
    c, d = 5, 300
    means = rng.normal(size=(c, d)).astype(np.float32) * 0.3
    y = rng.integers(0, c, 600)
    z = torch.from_numpy(means[y] + rng.normal(size=(600, d)).astype(np.float32))
    yt = torch.from_numpy(y)
    kw = dict(n_updates=150, batch_size=64, momentum=0.9, weight_decay=5e-4, seed=1)
    lrs = (0.1, 0.01)
    full = _train_stacked(z, yt, c, lrs, progress=False, desc="", dual=False, **kw)
    low = _train_stacked(
        z, yt, c, lrs, progress=False, desc="", dual=False, precision="bfloat16", **kw
    )
    assert low[0].dtype == torch.float32  # master weights stay float32
    for j in range(len(lrs)):
        scale = float(full[0][j].abs().max())
        err = float((low[0][j] - full[0][j]).abs().max())
        assert 0 < err < 0.02 * scale  # rounded differently, yet the same classifier
        assert float((low[1][j] - full[1][j]).abs().max()) < 0.02 * scale + 1e-6


def test_bfloat16_probe_numbers_match_float32_within_a_few_tenths():
    rng = np.random.default_rng(3)
    c, d = 8, 1500
    means = rng.normal(size=(c, d)).astype(np.float32) * 0.06
    y = rng.integers(0, c, 2600)
    x = means[y] + rng.normal(size=(2600, d)).astype(np.float32)
    kw = dict(n_updates=150, progress=False)
    ref = linear_probe(x[:1600], y[:1600], x[1600:], y[1600:], precision="float32", **kw)
    low = linear_probe(x[:1600], y[:1600], x[1600:], y[1600:], precision="bfloat16", **kw)
    assert ref["precision"] == "float32" and low["precision"] == "bfloat16"
    assert 30 < ref["top1"] < 99  # a problem with room for rounding to matter
    assert low["lr"] == ref["lr"]
    assert abs(low["top1"] - ref["top1"]) <= 0.5


def test_precision_auto_follows_the_hardware_and_bad_values_are_refused(monkeypatch):
    from clusterfit.evaluate import linear

    for native in (True, False):
        monkeypatch.setattr(linear, "native_bfloat16", lambda device, v=native: v)
        assert linear.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
        assert linear.resolve_precision("float32", "cpu") == "float32"
    with pytest.raises(ClusterFitError, match="precision='half'; choose one of: auto"):
        linear.resolve_precision("half", "cpu")
    x, y = _blobs(60, 4, 3, seed=1)
    with pytest.raises(ClusterFitError, match="precision"):
        linear_probe(x, y, x, y, precision="fp8", progress=False)


@pytest.mark.parametrize(
    ("acc", "loss", "chosen"),
    [
        ([90.0, 85.0, 80.0], [5.0, 0.5, 0.4], 0.01),  # 0.1 diverged (loss > ln 3): not chosen
        ([80.0, 85.0, 85.0], [0.9, 0.6, 0.5], 0.001),  # a tie in top-1: the lower loss
        ([90.0, 85.0, 80.0], [5.0, 4.0, 3.0], 0.1),  # every rate diverged: top-1 among all
    ],
)
def test_rate_choice_skips_diverged_rates(monkeypatch, acc, loss, chosen):
    """A rate whose validation cross-entropy is above the constant predictor's (ln 3 for three
    balanced classes) has diverged and is not chosen, whatever its top-1."""
    from clusterfit.evaluate import linear

    real = linear._evaluate

    def fake(x, rows, y, mean, inv_std, w, b, predictions=None):
        if w.shape[0] == 3:  # the sweep's validation
            return acc, acc, loss
        return real(x, rows, y, mean, inv_std, w, b, predictions)

    monkeypatch.setattr(linear, "_evaluate", fake)
    x, y = _blobs(300, 6, 3, seed=2)
    out = linear.linear_probe(x, y, x, y, n_updates=10, progress=False)
    assert out["lr"] == chosen


def test_layers_probed_at_once_give_each_layer_its_own_probe(capsys):
    """linear_probes runs several layers at once on one torch thread each: every layer gets the
    numbers of its own linear_probe call, in the order asked, and torch's thread count is
    given back afterwards."""
    import torch

    from clusterfit.evaluate import linear_probes

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 600)
    feats = {}
    for name, d in (("small", 6), ("wide", 300), ("mid", 40)):
        x = rng.normal(size=(600, d)).astype(np.float32)
        x[:, :4] += 1.5 * np.eye(4, dtype=np.float32)[y]  # a signal of different strength
        feats[name] = (x[:450], x[450:])
    kw = dict(lrs=(0.1, 0.01), n_updates=60, batch_size=64, seed=1, precision="float32")
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = linear_probes(feats, y[:450], y[450:], workers=2, progress=True, **kw)
        assert torch.get_num_threads() == 2
        assert "linear probes" in capsys.readouterr().err
        assert list(together) == ["small", "wide", "mid"]
        for name, (x_tr, x_te) in feats.items():
            alone = linear_probe(x_tr, y[:450], x_te, y[450:], progress=False, **kw)
            got = together[name]
            assert got["seconds"] >= 0
            for key in ("top1", "top5", "lr", "val_top1", "train_top1", "dims"):
                assert got[key] == alone[key], (name, key)
            for lr, loss in alone["val_loss"].items():
                assert got["val_loss"][lr] == pytest.approx(loss, rel=1e-5)
    finally:
        torch.set_num_threads(previous)


def test_layers_probed_at_once_raise_a_layers_error():
    from clusterfit.evaluate import linear_probes

    x, y = _blobs(200, 8, 3, seed=5)
    bad = {"ok": (x, x), "bad": (x, x[:, :4])}
    with pytest.raises(DataError, match="layer bad: X_train has 8 dims but X_test has 4"):
        linear_probes(bad, y, y, workers=2, n_updates=10, progress=False)


@pytest.mark.parametrize("low", [False, True])
def test_fused_sgd_step_equals_torch_sgd_with_momentum(low):
    """One fused step is one step of torch.optim.SGD (momentum, weight decay, a rate per row)
    to float32 rounding, with the gradient given in float32 or as bfloat16 bits; the bfloat16
    copy of the new weights is torch's rounding bit for bit (ties to even included)."""
    import torch

    from clusterfit.bfloat16 import bits as _bits
    from clusterfit.evaluate.linear import _sgd_kernel

    gen = torch.Generator().manual_seed(4)
    r, d = 7, 301
    grad = torch.randn(r, d, generator=gen)
    if low:
        grad = grad.bfloat16()
    w = torch.randn(r, d, generator=gen)
    buf = torch.randn(r, d, generator=gen)
    lr = torch.rand(r, generator=gen)
    lr[0] = 0.0  # row 0 keeps its weights: halfway values, to be rounded to the even neighbour
    w[0, :4] = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8), 2.0 + 2**-7])
    wd, m = 5e-4, 0.9
    rows = [torch.nn.Parameter(w[i].clone()) for i in range(r)]
    opt = torch.optim.SGD(
        [{"params": [p], "lr": float(lr[i])} for i, p in enumerate(rows)],
        momentum=m,
        weight_decay=wd,
    )
    for i, p in enumerate(rows):
        p.grad = grad[i].float()
        opt.state[p]["momentum_buffer"] = buf[i].clone()
    opt.step()
    w_bits = torch.zeros(r, d, dtype=torch.bfloat16)
    none16, none32 = np.zeros((0, 0), np.uint16), np.zeros((0, 0), np.float32)
    got_w, got_buf = w.clone(), buf.clone()
    _sgd_kernel()(
        none32 if low else grad.numpy(),
        _bits(grad) if low else none16,
        got_w.numpy(),
        got_buf.numpy(),
        lr.numpy(),
        np.float32(wd),
        np.float32(m),
        _bits(w_bits),
    )
    want_w = torch.stack([p.detach() for p in rows])
    want_buf = torch.stack([opt.state[p]["momentum_buffer"] for p in rows])
    np.testing.assert_allclose(got_buf.numpy(), want_buf.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_w.numpy(), want_w.numpy(), rtol=1e-6, atol=1e-6)
    assert torch.equal(got_w[0], w[0])
    assert torch.equal(w_bits, got_w.bfloat16())
    assert w_bits[0, :4].tolist() == [1.0, 1.0 + 2**-6, -1.0, 2.0]
