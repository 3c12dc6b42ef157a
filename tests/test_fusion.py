"""adadf.fusion against plain-Python references written from docs/method.md.

The references loop over rows and classes with math.exp / math.log on Python floats, so they
share no vectorised code with the implementation. Everything runs on CPU in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adadf import fusion


DT = torch.float64
SEEDS = (0, 1, 2)
NUM_CLASSES = (7, 8)
CROPS = (1, 10)  # 1: N = B rows; 10: ten-crop, N = 10 * B rows and num_images = B


# ----------------------------------------------------------------------------------------------
# Plain-Python references (lists of floats in, floats out)
# ----------------------------------------------------------------------------------------------
def ref_softmax(row: list[float]) -> list[float]:
    m = max(row)
    exps = [math.exp(x - m) for x in row]
    s = sum(exps)
    return [e / s for e in exps]


def ref_log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def ref_initial(num_classes: int, t: float) -> list[list[float]]:
    return [
        [t if i == j else (1 - t) / (num_classes - 1) for j in range(num_classes)]
        for i in range(num_classes)
    ]


def ref_class_distributions(
    logits: list[list[float]],
    labels: list[int],
    num_classes: int,
    t: float,
    fallback_mass: float = 0.4,
    sharpen_T: float | None = None,
) -> tuple[list[list[float]], list[bool]]:
    """Returns (LD, kept) where kept[i] says row i is the class mean (not the fallback)."""
    ld, kept = [], []
    for i in range(num_classes):
        rows = [ref_softmax(z) for z, y in zip(logits, labels) if y == i]
        mean = None
        if rows:
            mean = [sum(r[j] for r in rows) / len(rows) for j in range(num_classes)]
        if mean is not None and mean[i] >= t:
            ld.append(mean)
            kept.append(True)
        else:
            ld.append([t if j == i else fallback_mass / (num_classes - 1) for j in range(num_classes)])
            kept.append(False)
    if sharpen_T is not None:
        sharp = []
        for row in ld:
            powered = [p ** (1.0 / sharpen_T) for p in row]
            s = sum(powered)
            sharp.append([p / s for p in powered])
        ld = sharp
    return ld, kept


def ref_loss_weights(e: float, beta: float, alpha: float | None = None) -> tuple[float, float]:
    if alpha is not None:
        return 1 - alpha, alpha
    if e <= beta:
        return 1.0, math.exp(-((1 - e / beta) ** 2))
    return math.exp(-((1 - beta / e) ** 2)), 1.0


def ref_rank_regularization(att: list[float], b: int, tops: float, margin: float) -> float:
    k = int(b * tops)
    if k == 0 or b - k == 0:
        return 0.0
    desc = sorted(att, reverse=True)
    asc = sorted(att)
    high = sum(desc[:k]) / k
    low = sum(asc[: b - k]) / (b - k)
    return max(0.0, low - high + margin)


def ref_fusion_weights(att: list[float], min_w: float, max_w: float) -> list[float]:
    lo, hi = min(att), max(att)
    if hi == lo:
        return [min_w for _ in att]
    return [(a - lo) / (hi - lo) * (max_w - min_w) + min_w for a in att]


def ref_fused_target(
    logits: list[list[float]], w: list[float], ld: list[list[float]], labels: list[int]
) -> list[list[float]]:
    out = []
    for z, wi, y in zip(logits, w, labels):
        p = ref_softmax(z)
        out.append([(1 - wi) * p[j] + wi * ld[y][j] for j in range(len(z))])
    return out


def ref_adadf_loss(z1, z2, att, labels, ld, epoch, *, beta, min_w, max_w, tops, margin, eps, b, alpha=None):
    n, c = len(z1), len(z1[0])
    w_ce, w_kl = ref_loss_weights(epoch, beta, alpha)
    ce = 0.0
    for z, y in zip(z1, labels):
        logp = ref_log_softmax(z)
        ce += (1 - eps) * (-logp[y]) + eps * sum(-lp for lp in logp) / c
    ce /= n
    q = ref_fused_target(z1, ref_fusion_weights(att, min_w, max_w), ld, labels)
    kl = 0.0
    for qi, z in zip(q, z2):
        logp2 = ref_log_softmax(z)
        for j in range(c):
            if qi[j] > 0:
                kl += qi[j] * (math.log(qi[j]) - logp2[j])
    kl /= b
    rr = ref_rank_regularization(att, b, tops, margin)
    return {"loss": w_ce * ce + w_kl * kl + rr, "ce": ce, "kl": kl, "rr": rr, "w_ce": w_ce, "w_kl": w_kl}


# ----------------------------------------------------------------------------------------------
# Random batches
# ----------------------------------------------------------------------------------------------
def make_batch(seed: int, num_classes: int, crops: int, num_images: int = 6, empty_last: bool = False):
    """z_1, z_2 [N, C], attention [N] in (0, 1), labels [N] repeated per crop, with N = crops * B.

    The label column is boosted by a class-dependent amount, so with t = 0.5 some class means
    pass the threshold and some fall back.
    """
    g = torch.Generator().manual_seed(seed)
    hi = num_classes - 1 if empty_last else num_classes
    img_labels = torch.randint(0, hi, (num_images,), generator=g)
    labels = img_labels.repeat_interleave(crops)  # [N], crops of one image share its label
    n = labels.shape[0]
    boost = torch.linspace(0.0, 5.0, num_classes, dtype=DT)
    z1 = torch.randn(n, num_classes, generator=g, dtype=DT) * 1.5
    z1[torch.arange(n), labels] += boost[labels]
    z2 = torch.randn(n, num_classes, generator=g, dtype=DT) * 1.5
    att = torch.sigmoid(torch.randn(n, generator=g, dtype=DT))
    return z1, z2, att, labels


def random_ld(seed: int, num_classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.softmax(torch.randn(num_classes, num_classes, generator=g, dtype=DT) * 2, dim=1)


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=DT)


# ----------------------------------------------------------------------------------------------
# Class distributions (section 2)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", NUM_CLASSES)
@pytest.mark.parametrize("t", (0.6, 0.9))
def test_initial_class_distributions(num_classes, t):
    ld = fusion.initial_class_distributions(num_classes, t)
    assert ld.shape == (num_classes, num_classes)
    assert ld.dtype == torch.float32
    torch.testing.assert_close(ld.double(), t64(ref_initial(num_classes, t)))
    torch.testing.assert_close(ld.sum(1), torch.ones(num_classes))
    assert torch.all(ld.argmax(1) == torch.arange(num_classes))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", NUM_CLASSES)
@pytest.mark.parametrize("crops", CROPS)
@pytest.mark.parametrize("empty_last", (False, True))
@pytest.mark.parametrize("fallback_mass,sharpen_T", ((0.4, None), (0.5, None), (0.4, 0.5), (0.5, 2.0)))
def test_class_distributions_matches_reference(
    seed, num_classes, crops, empty_last, fallback_mass, sharpen_T
):
    t = 0.5
    z1, _, _, labels = make_batch(seed, num_classes, crops, num_images=12, empty_last=empty_last)
    ld = fusion.class_distributions(
        z1, labels, num_classes, t, fallback_mass=fallback_mass, sharpen_T=sharpen_T
    )
    ref, kept = ref_class_distributions(
        z1.tolist(), labels.tolist(), num_classes, t, fallback_mass, sharpen_T
    )
    assert any(kept) and not all(kept), "batch must exercise both the kept and the fallback rule"
    if empty_last:
        assert not kept[-1]
    assert ld.dtype == DT
    torch.testing.assert_close(ld, t64(ref))


@pytest.mark.parametrize("seed", SEEDS)
def test_sums_accumulate_over_batches(seed):
    """Sums over chunks (batches or DDP ranks) give the one-shot LD."""
    num_classes, t = 7, 0.5
    z1, _, _, labels = make_batch(seed, num_classes, crops=1, num_images=40)
    sums, counts = torch.zeros(num_classes, num_classes, dtype=DT), torch.zeros(num_classes, dtype=torch.long)
    for zc, yc in zip(z1.split(7), labels.split(7)):
        s, c = fusion.class_distribution_sums(zc, yc, num_classes)
        sums += s
        counts += c
    assert counts.dtype == torch.long
    assert counts.tolist() == [labels.tolist().count(i) for i in range(num_classes)]
    for i in range(num_classes):  # plain loop: row i is the sum of softmax rows labelled i
        expect = [0.0] * num_classes
        for z, y in zip(z1.tolist(), labels.tolist()):
            if y == i:
                expect = [e + p for e, p in zip(expect, ref_softmax(z))]
        torch.testing.assert_close(sums[i], t64(expect))
    torch.testing.assert_close(
        fusion.class_distributions_from_sums(sums, counts, t),
        fusion.class_distributions(z1, labels, num_classes, t),
    )


def test_sums_from_bf16_logits():
    num_classes = 7
    z1, _, _, labels = make_batch(0, num_classes, crops=1, num_images=64)
    z_bf16 = z1.to(torch.bfloat16)
    sums, counts = fusion.class_distribution_sums(z_bf16, labels, num_classes)
    assert sums.dtype == torch.float32
    assert counts.sum().item() == 64
    # Every sample contributes a softmax row summing to 1 (a bf16 sum would drift well past 1e-4).
    torch.testing.assert_close(sums.sum(1), counts.float(), atol=1e-4, rtol=1e-5)
    expect = torch.zeros(num_classes, num_classes).index_add_(0, labels, torch.softmax(z_bf16.float(), 1))
    torch.testing.assert_close(sums, expect)
    ld = fusion.class_distributions(z_bf16, labels, num_classes, 0.5)
    assert ld.dtype == torch.float32 and torch.isfinite(ld).all()


def test_sums_are_detached():
    z1, _, _, labels = make_batch(0, 7, crops=1)
    z1.requires_grad_(True)
    sums, _ = fusion.class_distribution_sums(z1, labels, 7)
    assert not sums.requires_grad


@pytest.mark.parametrize("num_classes", NUM_CLASSES)
@pytest.mark.parametrize("t", (0.5, 0.8))
def test_fallback_rows(num_classes, t):
    """Every class falls back (t above any mean, or no samples): rows sum to t + fallback_mass."""
    z = torch.zeros(5, num_classes, dtype=DT)  # uniform softmax: m_i[i] = 1/C < t
    labels = torch.tensor([0, 0, 1, 2, 2])  # classes 3.. have no samples
    ld = fusion.class_distributions(z, labels, num_classes, t)
    torch.testing.assert_close(ld.diagonal(), torch.full((num_classes,), t, dtype=DT))
    torch.testing.assert_close(ld.sum(1), torch.full((num_classes,), t + 0.4, dtype=DT))
    off = ld[~torch.eye(num_classes, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 0.4 / (num_classes - 1)))
    true_ld = fusion.class_distributions(z, labels, num_classes, t, fallback_mass=1 - t)
    torch.testing.assert_close(true_ld.sum(1), torch.ones(num_classes, dtype=DT))
    torch.testing.assert_close(true_ld, fusion.initial_class_distributions(num_classes, t).double())


def test_threshold_is_inclusive():
    """m_i[i] == t exactly keeps the mean (spec: m_i[i] >= t)."""
    sums = t64([[1.0, 0.5, 0.5], [0.5, 1.0, 0.5], [0.2, 0.2, 0.6]])
    counts = torch.tensor([2, 2, 1])  # means: diag 0.5, 0.5, 0.6
    ld = fusion.class_distributions_from_sums(sums, counts, 0.5)
    torch.testing.assert_close(ld, t64([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]]))


def test_empty_class_falls_back_even_with_zero_threshold():
    """With t = 0 every populated class keeps its mean; the empty one must still fall back."""
    num_classes = 7
    z1, _, _, labels = make_batch(3, num_classes, crops=1, num_images=30, empty_last=True)
    ld = fusion.class_distributions(z1, labels, num_classes, 0.0)
    expect_last = torch.full((num_classes,), 0.4 / (num_classes - 1), dtype=DT)
    expect_last[-1] = 0.0
    torch.testing.assert_close(ld[-1], expect_last)
    torch.testing.assert_close(ld[:-1].sum(1), torch.ones(num_classes - 1, dtype=DT))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T", (0.3, 1.0, 3.0))
def test_sharpening_rows_sum_to_one(seed, T):
    num_classes = 8
    z1, _, _, labels = make_batch(seed, num_classes, crops=10)
    ld = fusion.class_distributions(z1, labels, num_classes, 0.5, sharpen_T=T)  # fallback rows sum to 0.9
    torch.testing.assert_close(ld.sum(1), torch.ones(num_classes, dtype=DT))
    assert torch.all(ld > 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_sharpening_T1_identity_on_true_distributions(seed):
    num_classes, t = 7, 0.5
    z1, _, _, labels = make_batch(seed, num_classes, crops=1, num_images=30)
    plain = fusion.class_distributions(z1, labels, num_classes, t, fallback_mass=1 - t)
    sharp = fusion.class_distributions(z1, labels, num_classes, t, fallback_mass=1 - t, sharpen_T=1.0)
    torch.testing.assert_close(sharp, plain)
    colder = fusion.class_distributions(z1, labels, num_classes, t, fallback_mass=1 - t, sharpen_T=0.5)
    assert torch.all(colder.diagonal() > plain.diagonal())  # the diagonal is each row's maximum here


def test_class_distributions_bad_arguments():
    with pytest.raises(ValueError):
        fusion.initial_class_distributions(1, 0.5)
    with pytest.raises(ValueError):
        fusion.class_distributions_from_sums(torch.zeros(3, 3), torch.zeros(3), 0.5, sharpen_T=0.0)
    with pytest.raises(ValueError):
        fusion.class_distribution_sums(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 7)


# ----------------------------------------------------------------------------------------------
# Loss weights, rank regularisation, fusion weights, target (section 3)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", (1, 5, 10.5))
def test_loss_weights_schedule(beta):
    for e in range(1, 30):
        w_ce, w_kl = fusion.loss_weights(e, beta)
        assert isinstance(w_ce, float) and isinstance(w_kl, float)
        assert (w_ce, w_kl) == pytest.approx(ref_loss_weights(e, beta), rel=1e-15)
        if e <= beta:
            assert w_ce == 1.0 and 0 < w_kl <= 1
        else:
            assert w_kl == 1.0 and 0 < w_ce < 1


def test_loss_weights_values_and_continuity():
    assert fusion.loss_weights(5, 10) == pytest.approx((1.0, math.exp(-0.25)))
    assert fusion.loss_weights(20, 10) == pytest.approx((math.exp(-0.25), 1.0))
    assert fusion.loss_weights(10, 10) == (1.0, 1.0)
    left = fusion.loss_weights(10 - 1e-9, 10)
    right = fusion.loss_weights(10 + 1e-9, 10)
    assert left == pytest.approx((1.0, 1.0), abs=1e-9)
    assert right == pytest.approx((1.0, 1.0), abs=1e-9)


def test_loss_weights_alpha_overrides_schedule():
    for e in (1, 5, 50):
        assert fusion.loss_weights(e, 10, alpha=0.3) == pytest.approx((0.7, 0.3))
    assert fusion.loss_weights(3, 10, alpha=0.0) == (1.0, 0.0)
    with pytest.raises(ValueError):
        fusion.loss_weights(0, 10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("crops", CROPS)
@pytest.mark.parametrize("tops,margin", ((0.7, 0.07), (0.7, 0.6), (0.5, 0.3), (0.9, 0.8)))
def test_rank_regularization_matches_reference(seed, crops, tops, margin):
    b = 11
    _, _, att, _ = make_batch(seed, 7, crops, num_images=b)
    rr = fusion.rank_regularization(att, b, tops, margin)
    assert rr.shape == () and rr.dtype == DT
    torch.testing.assert_close(rr, t64(ref_rank_regularization(att.tolist(), b, tops, margin)))
    torch.testing.assert_close(fusion.rank_regularization(att.unsqueeze(1), b, tops, margin), rr)


def test_rank_regularization_active_and_inactive():
    spread = t64([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    inactive = fusion.rank_regularization(spread, 10)  # high - low is far above the margin
    assert inactive.dtype == DT and inactive.item() == 0.0

    flat = (t64([0.5] * 10) + torch.linspace(0, 0.01, 10, dtype=DT)).requires_grad_(True)
    active = fusion.rank_regularization(flat, 10, tops=0.7, margin=0.07)
    assert active.item() > 0
    torch.testing.assert_close(active, t64(ref_rank_regularization(flat.tolist(), 10, 0.7, 0.07)))
    (grad,) = torch.autograd.grad(active, flat)
    assert grad.abs().sum() > 0

    equal = fusion.rank_regularization(t64([0.3] * 10), 10, margin=0.07)
    torch.testing.assert_close(equal, t64(0.07))

    # low - high + margin == 0 exactly: inactive, so no gradient (the reference returns a constant)
    edge = t64([0.75] * 5 + [0.5] * 5).requires_grad_(True)
    rr = fusion.rank_regularization(edge, 10, tops=0.5, margin=0.25)
    assert rr.item() == 0.0
    (grad,) = torch.autograd.grad(rr, edge, allow_unused=True)
    assert grad is None or torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("num_images,tops", ((1, 0.7), (3, 0.2), (4, 1.0), (5, 0.0)))
def test_rank_regularization_empty_group_is_zero(num_images, tops):
    att = torch.rand(num_images * 10, dtype=DT)
    rr = fusion.rank_regularization(att, num_images, tops=tops, margin=0.5)
    assert rr.shape == () and rr.dtype == DT
    assert rr.item() == 0.0 and not torch.isnan(rr)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("min_w,max_w", ((0.0, 1.0), (0.2, 0.4)))
def test_attention_fusion_weights_matches_reference(seed, min_w, max_w):
    _, _, att, _ = make_batch(seed, 7, crops=10)
    w = fusion.attention_fusion_weights(att, min_w, max_w)
    torch.testing.assert_close(w, t64(ref_fusion_weights(att.tolist(), min_w, max_w)))
    assert w.min().item() == pytest.approx(min_w) and w.max().item() == pytest.approx(max_w)
    torch.testing.assert_close(fusion.attention_fusion_weights(att.unsqueeze(1), min_w, max_w), w)


def test_attention_fusion_weights_all_equal_and_gradient():
    att = t64([0.42] * 6).requires_grad_(True)
    w = fusion.attention_fusion_weights(att, 0.2, 0.4)
    torch.testing.assert_close(w, torch.full((6,), 0.2, dtype=DT))
    (grad,) = torch.autograd.grad(w.sum(), att)
    assert torch.isfinite(grad).all()

    att = torch.rand(6, dtype=DT, requires_grad=True)
    w = fusion.attention_fusion_weights(att, 0.2, 0.4)
    assert w.requires_grad
    (grad,) = torch.autograd.grad((w * torch.arange(6, dtype=DT)).sum(), att)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", NUM_CLASSES)
def test_fused_target_matches_reference(seed, num_classes):
    z1, _, att, labels = make_batch(seed, num_classes, crops=10)
    ld = random_ld(seed, num_classes)
    w = fusion.attention_fusion_weights(att, 0.2, 0.4)
    q = fusion.fused_target(z1, w, ld.float(), labels)  # float32 LD is moved to the logits' dtype
    assert q.dtype == DT and q.shape == z1.shape
    ref = ref_fused_target(z1.tolist(), w.tolist(), ld.float().tolist(), labels.tolist())
    torch.testing.assert_close(q, t64(ref))
    torch.testing.assert_close(q.sum(1), torch.ones(len(q), dtype=DT))  # true LD rows -> true q rows


# ----------------------------------------------------------------------------------------------
# The loss (section 3)
# ----------------------------------------------------------------------------------------------
LOSS_KW = dict(beta=5, min_weight=0.2, max_weight=0.4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_classes", NUM_CLASSES)
@pytest.mark.parametrize("crops", CROPS)
@pytest.mark.parametrize(
    "epoch,eps,margin,alpha", ((1, 0.0, 0.07, None), (9, 0.1, 0.6, None), (3, 0.0, 0.5, 0.3))
)
def test_adadf_loss_matches_reference(seed, num_classes, crops, epoch, eps, margin, alpha):
    b = 6
    z1, z2, att, labels = make_batch(seed, num_classes, crops, num_images=b)
    ld, _ = ref_class_distributions(z1.tolist(), labels.tolist(), num_classes, 0.5)  # fallback rows too
    out = fusion.adadf_loss(
        z1, z2, att.unsqueeze(1), labels, t64(ld), epoch, **LOSS_KW, margin=margin,
        label_smoothing=eps, num_images=b if crops > 1 else None, alpha=alpha,
    )
    ref = ref_adadf_loss(
        z1.tolist(), z2.tolist(), att.tolist(), labels.tolist(), ld, epoch, beta=5, min_w=0.2,
        max_w=0.4, tops=0.7, margin=margin, eps=eps, b=b, alpha=alpha,
    )
    assert set(out) >= {"loss", "ce", "kl", "rr", "w_ce", "w_kl"}
    for key in ("loss", "ce", "kl", "rr"):
        assert out[key].shape == () and out[key].dtype == DT
        torch.testing.assert_close(out[key], t64(ref[key]), msg=key)
    assert isinstance(out["w_ce"], float) and out["w_ce"] == pytest.approx(ref["w_ce"])
    assert isinstance(out["w_kl"], float) and out["w_kl"] == pytest.approx(ref["w_kl"])


def test_kl_divides_by_images_not_rows():
    z1, z2, att, labels = make_batch(0, 7, crops=10, num_images=4)
    ld = random_ld(0, 7)
    per_image = fusion.adadf_loss(z1, z2, att, labels, ld, 2, **LOSS_KW, num_images=4)["kl"]
    per_row = fusion.adadf_loss(z1, z2, att, labels, ld, 2, **LOSS_KW)["kl"]
    torch.testing.assert_close(per_image, per_row * 10)


def test_zero_target_entries_give_finite_kl():
    """A one-hot LD with w = 1 puts exact zeros in q: 0 * log 0 must count as 0."""
    z1, z2, att, labels = make_batch(1, 7, crops=1)
    ld = torch.eye(7, dtype=DT)
    out = fusion.adadf_loss(z1, z2, att, labels, ld, 2, beta=5, min_weight=1.0, max_weight=1.0)
    expect = -F.log_softmax(z2, 1)[torch.arange(len(labels)), labels].sum() / len(labels)
    torch.testing.assert_close(out["kl"], expect)


@pytest.mark.parametrize("eps", (0.1, 0.3))
def test_label_smoothing_matches_torch(eps):
    z1, z2, att, labels = make_batch(2, 8, crops=10, num_images=5)
    out = fusion.adadf_loss(
        z1, z2, att, labels, random_ld(2, 8), 1, **LOSS_KW, label_smoothing=eps, num_images=5
    )
    torch.testing.assert_close(out["ce"], F.cross_entropy(z1, labels, label_smoothing=eps))
    plain = fusion.adadf_loss(z1, z2, att, labels, random_ld(2, 8), 1, **LOSS_KW, num_images=5)
    assert not torch.allclose(out["ce"], plain["ce"])


def test_all_equal_attention_no_nan():
    z1, z2, _, labels = make_batch(0, 7, crops=10, num_images=4)
    z1.requires_grad_(True)
    att = torch.full((len(labels), 1), 0.5, dtype=DT, requires_grad=True)
    out = fusion.adadf_loss(z1, z2, att, labels, random_ld(0, 7), 3, **LOSS_KW, num_images=4)
    for key in ("loss", "ce", "kl", "rr"):
        assert torch.isfinite(out[key]), key
    torch.testing.assert_close(out["rr"], t64(0.07))  # equal halves: rr = margin
    grads = torch.autograd.grad(out["loss"], (z1, att))
    assert all(torch.isfinite(g).all() for g in grads)


def _kl_grads(detach_target: bool):
    z1, z2, att, labels = make_batch(4, 7, crops=10, num_images=4)
    for x in (z1, z2, att):
        x.requires_grad_(True)
    out = fusion.adadf_loss(z1, z2, att, labels, random_ld(4, 7), 3, **LOSS_KW, num_images=4,
                            detach_target=detach_target)
    g_z1, g_z2, g_att = torch.autograd.grad(out["kl"], (z1, z2, att), allow_unused=True)
    assert g_z2 is not None and g_z2.abs().sum() > 0  # KL always trains the target branch
    return g_z1, g_att


def test_target_not_detached_by_default():
    g_z1, g_att = _kl_grads(detach_target=False)
    assert g_z1 is not None and g_z1.abs().sum() > 0
    assert g_att is not None and g_att.abs().sum() > 0


def test_detach_target_stops_kl_gradient():
    g_z1, g_att = _kl_grads(detach_target=True)
    assert g_z1 is None or torch.count_nonzero(g_z1) == 0
    assert g_att is None or torch.count_nonzero(g_att) == 0


def test_loss_gradients_match_finite_differences():
    z1, z2, att, labels = make_batch(5, 7, crops=3, num_images=2)  # N = 6 rows keeps it quick
    ld = random_ld(5, 7)
    inputs = tuple(x.clone().requires_grad_(True) for x in (z1, z2, att))

    def loss_fn(a, b, c):
        return fusion.adadf_loss(a, b, c, labels, ld, 3, **LOSS_KW, margin=1.0, label_smoothing=0.1,
                                 num_images=2)["loss"]

    assert fusion.rank_regularization(att, 2, margin=1.0) > 0  # rr active, so its gradient is checked
    assert torch.autograd.gradcheck(loss_fn, inputs, fast_mode=True)


def test_bf16_logits_loss_in_float32():
    z1, z2, att, labels = make_batch(0, 7, crops=1)
    out = fusion.adadf_loss(z1.bfloat16(), z2.bfloat16(), att.bfloat16(), labels, random_ld(0, 7).float(), 2,
                            **LOSS_KW)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_adadf_loss_shape_errors():
    z1, z2, att, labels = make_batch(0, 7, crops=1)
    with pytest.raises(ValueError):
        fusion.adadf_loss(z1, z2[:, :6], att, labels, random_ld(0, 7), 1, **LOSS_KW)
    with pytest.raises(ValueError):
        fusion.adadf_loss(z1, z2, att[:-1], labels, random_ld(0, 7), 1, **LOSS_KW)
    with pytest.raises(ValueError):
        fusion.adadf_loss(z1, z2, att, labels, random_ld(0, 8), 1, **LOSS_KW)
    with pytest.raises(ValueError):
        fusion.adadf_loss(z1, z2, att, labels, random_ld(0, 7), 1, **LOSS_KW, num_images=len(labels) + 1)
