"""Ada-DF fusion math: class distributions, loss weights, rank regularisation and the loss.

Pure tensor functions (spec sections 2, 3 and 7): no config objects, no device choices, no RNG,
no global state. Everything is vectorised (no Python loops over samples or classes) because these
run on every training batch, and nothing here forces a host-device sync.

Notation: N rows in the batch (N = 10 * B with ten-crop data), C classes, B = ``num_images``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "initial_class_distributions",
    "class_distribution_sums",
    "class_distributions_from_sums",
    "class_distributions",
    "loss_weights",
    "rank_regularization",
    "attention_fusion_weights",
    "fused_target",
    "adadf_loss",
]


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; bf16/fp16/fp32 become fp32 (statistics and losses need the range)."""
    return torch.promote_types(dtype, torch.float32)


def _check_threshold(num_classes: int, threshold: float) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


def initial_class_distributions(num_classes: int, threshold: float) -> Tensor:
    """Epoch-1 LD [C, C] (float32): ``threshold`` on the diagonal, (1 - t)/(C - 1) elsewhere.

    Every row is a true distribution (sums to 1).
    """
    _check_threshold(num_classes, threshold)
    off = (1.0 - threshold) / (num_classes - 1)
    ld = torch.full((num_classes, num_classes), off, dtype=torch.float32)
    ld.fill_diagonal_(threshold)
    return ld


def class_distribution_sums(
    aux_logits: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Per-class sums of softmax(aux_logits) and per-class sample counts.

    aux_logits [N, C], labels [N] (int, 0..C-1) -> (prob_sums [C, C], counts [C] int64).
    Row i of ``prob_sums`` is the sum of softmax rows of samples labelled i. Sums add up across
    batches and across DDP ranks (all-reduce both), so the LD pass never keeps all logits.
    Accumulates in the logits' dtype but at least float32 (bf16 sums would lose samples).
    Detached: statistics carry no gradient.
    """
    if aux_logits.dim() != 2 or aux_logits.shape[1] != num_classes:
        raise ValueError(f"aux_logits must be [N, {num_classes}], got {tuple(aux_logits.shape)}")
    if labels.shape != aux_logits.shape[:1]:
        raise ValueError(f"labels must be [{aux_logits.shape[0]}], got {tuple(labels.shape)}")
    dtype = _at_least_float32(aux_logits.dtype)
    probs = F.softmax(aux_logits.detach().to(dtype), dim=1)  # [N, C]
    labels = labels.to(device=aux_logits.device, dtype=torch.long)
    prob_sums = torch.zeros(num_classes, num_classes, dtype=dtype, device=aux_logits.device)
    prob_sums.index_add_(0, labels, probs)  # [C, C]
    counts = torch.zeros(num_classes, dtype=torch.long, device=aux_logits.device)
    counts.index_add_(0, labels, torch.ones_like(labels))  # [C]; index_add_ avoids bincount's sync
    return prob_sums, counts


def class_distributions_from_sums(
    prob_sums: Tensor,
    counts: Tensor,
    threshold: float,
    fallback_mass: float = 0.4,
    sharpen_T: float | None = None,
) -> Tensor:
    """LD [C, C] from accumulated ``class_distribution_sums`` (spec section 2).

    m_i = prob_sums[i] / counts[i]. If m_i[i] >= threshold, LD[i] = m_i; otherwise (or when
    class i has no samples) LD[i] is the fallback row: ``threshold`` on the diagonal and
    ``fallback_mass``/(C - 1) elsewhere. The reference hard-codes 0.4, so fallback rows sum to
    t + 0.4; pass ``1 - threshold`` for true distributions. ``sharpen_T`` (> 0) then replaces
    LD by LD^(1/T) with each row renormalised to sum to 1 (the reference normalises the wrong
    axis; this is the correct version). Output dtype is that of ``prob_sums``.
    """
    if prob_sums.dim() != 2 or prob_sums.shape[0] != prob_sums.shape[1]:
        raise ValueError(f"prob_sums must be [C, C], got {tuple(prob_sums.shape)}")
    num_classes = prob_sums.shape[0]
    if counts.shape != (num_classes,):
        raise ValueError(f"counts must be [{num_classes}], got {tuple(counts.shape)}")
    _check_threshold(num_classes, threshold)
    if sharpen_T is not None and not sharpen_T > 0:
        raise ValueError(f"sharpen_T must be > 0 or None, got {sharpen_T}")

    counts_f = counts.to(device=prob_sums.device, dtype=prob_sums.dtype)
    means = prob_sums / counts_f.clamp_min(1.0).unsqueeze(1)  # [C, C]; empty rows stay 0
    keep = (counts_f > 0) & (means.diagonal() >= threshold)  # [C]
    fallback = torch.full_like(means, fallback_mass / (num_classes - 1))
    fallback.fill_diagonal_(threshold)
    ld = torch.where(keep.unsqueeze(1), means, fallback)
    if sharpen_T is not None:
        ld = ld.pow(1.0 / sharpen_T)
        ld = ld / ld.sum(dim=1, keepdim=True)
    return ld


def class_distributions(
    aux_logits: Tensor,
    labels: Tensor,
    num_classes: int,
    threshold: float,
    fallback_mass: float = 0.4,
    sharpen_T: float | None = None,
) -> Tensor:
    """LD [C, C] from all auxiliary logits [N, C] and labels [N] at once (spec section 2)."""
    prob_sums, counts = class_distribution_sums(aux_logits, labels, num_classes)
    return class_distributions_from_sums(prob_sums, counts, threshold, fallback_mass, sharpen_T)


def loss_weights(epoch: int, beta: float, alpha: float | None = None) -> tuple[float, float]:
    """(w_CE, w_KL) for ``epoch`` (1-based).

    e <= beta: w_KL = exp(-(1 - e/beta)^2), w_CE = 1 (KL ramps up);
    e > beta: w_KL = 1, w_CE = exp(-(1 - beta/e)^2) (CE ramps down). Both are 1 at e = beta.
    A fixed ``alpha`` replaces the schedule: w_KL = alpha, w_CE = 1 - alpha.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based, got {epoch}")
    if alpha is not None:
        return 1.0 - float(alpha), float(alpha)
    if epoch <= beta:
        return 1.0, math.exp(-((1.0 - epoch / beta) ** 2))
    return math.exp(-((1.0 - beta / epoch) ** 2)), 1.0


def rank_regularization(
    attention: Tensor, num_images: int, tops: float = 0.7, margin: float = 0.07
) -> Tensor:
    """L_RR = max(0, low - high + margin), a 0-d tensor in attention's dtype.

    attention [N] or [N, 1] (raw a). k = int(num_images * tops); high = mean of the k largest of
    all N values, low = mean of the (num_images - k) smallest (the reference counts images, not
    rows, with multi-crop data). Zero (float, no NaN) when inactive or when either group is empty
    (the reference would average an empty group).
    """
    a = attention.reshape(-1)
    n = a.shape[0]
    if not 1 <= num_images <= n:
        raise ValueError(f"num_images must be in [1, {n}] (rows), got {num_images}")
    k = int(num_images * tops)
    n_low = num_images - k
    if k <= 0 or n_low <= 0:
        return a.new_zeros(())
    ranked = torch.sort(a, descending=True).values  # [N], one sort serves both groups
    high = ranked[:k].mean()
    low = ranked[n - n_low :].mean()
    return F.relu(low - high + margin)  # relu: exactly zero (and zero gradient) when inactive


def attention_fusion_weights(attention: Tensor, min_weight: float, max_weight: float) -> Tensor:
    """Fusion weights w [N]: attention min-max scaled into [min_weight, max_weight].

    attention [N] or [N, 1]. Not detached (the reference lets gradient through, min and max
    included). An all-equal batch gives w = min_weight everywhere instead of 0/0 = NaN.
    """
    a = attention.reshape(-1)
    a_min, a_max = a.min(), a.max()
    span = a_max - a_min
    safe_span = torch.where(span > 0, span, torch.ones_like(span))  # numerator is 0 when span is 0
    return (a - a_min) / safe_span * (max_weight - min_weight) + min_weight


def fused_target(
    aux_logits: Tensor, fusion_weights: Tensor, class_dist: Tensor, labels: Tensor
) -> Tensor:
    """q [N, C] = (1 - w_i) * softmax(z_1,i) + w_i * LD[y_i].

    aux_logits [N, C], fusion_weights [N] (or [N, 1]), class_dist [C, C], labels [N].
    ``class_dist`` is moved to the logits' device and dtype. Not detached.
    """
    w = fusion_weights.reshape(-1, 1)  # [N, 1]
    ld = class_dist.to(device=aux_logits.device, dtype=aux_logits.dtype)
    ld_rows = ld[labels.to(device=aux_logits.device, dtype=torch.long)]  # [N, C]
    return (1.0 - w) * F.softmax(aux_logits, dim=1) + w * ld_rows


def adadf_loss(
    aux_logits: Tensor,
    target_logits: Tensor,
    attention: Tensor,
    labels: Tensor,
    class_dist: Tensor,
    epoch: int,
    *,
    beta: float,
    min_weight: float,
    max_weight: float,
    tops: float = 0.7,
    margin: float = 0.07,
    label_smoothing: float = 0.0,
    num_images: int | None = None,
    detach_target: bool = False,
    alpha: float | None = None,
) -> dict[str, Tensor | float]:
    """The Ada-DF loss for one batch (spec section 3).

    aux_logits z_1 [N, C], target_logits z_2 [N, C], attention a [N] or [N, 1], labels [N],
    class_dist LD [C, C]. ``num_images`` B defaults to N; with ten-crop data pass the image
    count, which the reference uses for the rank split and the KL divisor.

    L = w_CE * CE(z_1, y) + w_KL * sum(q * (log q - log_softmax(z_2))) / B + L_RR.
    Logits below float32 (AMP) are upcast so the loss is computed in at least float32.
    Returns {'loss', 'ce', 'kl', 'rr'} (0-d tensors) and {'w_ce', 'w_kl'} (floats).
    """
    if aux_logits.dim() != 2 or target_logits.shape != aux_logits.shape:
        raise ValueError(
            f"aux_logits and target_logits must both be [N, C], got "
            f"{tuple(aux_logits.shape)} and {tuple(target_logits.shape)}"
        )
    n, num_classes = aux_logits.shape
    if attention.numel() != n:
        raise ValueError(f"attention must have {n} values ([N] or [N, 1]), got {tuple(attention.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must be [{n}], got {tuple(labels.shape)}")
    if class_dist.shape != (num_classes, num_classes):
        raise ValueError(f"class_dist must be [{num_classes}, {num_classes}], got {tuple(class_dist.shape)}")
    if num_images is None:
        num_images = n

    dtype = _at_least_float32(torch.promote_types(aux_logits.dtype, target_logits.dtype))
    z1 = aux_logits.to(dtype)
    z2 = target_logits.to(dtype)
    a = attention.reshape(-1).to(dtype)
    labels = labels.to(device=z1.device, dtype=torch.long)
    w_ce, w_kl = loss_weights(epoch, beta, alpha)

    ce = F.cross_entropy(z1, labels, label_smoothing=label_smoothing)  # mean over N rows
    rr = rank_regularization(a, num_images, tops, margin)
    q = fused_target(z1, attention_fusion_weights(a, min_weight, max_weight), class_dist, labels)
    if detach_target:
        q = q.detach()
    # kl_div uses xlogy, so 0 * log 0 = 0; divided by B (images), not N (rows) [quirk].
    kl = F.kl_div(F.log_softmax(z2, dim=1), q, reduction="none").sum() / num_images
    loss = w_ce * ce + w_kl * kl + rr
    return {"loss": loss, "ce": ce, "kl": kl, "rr": rr, "w_ce": w_ce, "w_kl": w_kl}
