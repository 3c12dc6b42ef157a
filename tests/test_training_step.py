"""One full training step against the spec, in float64: forward, loss terms, gradients, Adam step.

The reference here is written from docs/method.md with explicit per-row loops; the
engine's step (`train_one_epoch` on a one-batch loader) must give the same numbers.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from adadf.config.schema import FusionConfig
from adadf.engine.loop import StepContext, train_one_epoch
from adadf.methods.adadf import AdaDFMethod
from adadf.models import AdaDF

C = 7


def spec_forward(model: AdaDF, x: torch.Tensor):
    """Section 1: f0 = trunk(x); f_k = pool(layer4(layer3(layer2(f0)))); z_k = a_k * fc_k(f_k)."""
    f0 = model.trunk(x)
    out = []
    for branch, attention in ((model.aux_branch, model.aux_attention), (model.target_branch, model.target_attention)):
        f = branch.layer4(branch.layer3(branch.layer2(f0))).mean(dim=(2, 3))
        a = torch.sigmoid(f @ attention.weight.T + attention.bias).squeeze(1)
        out.append((a[:, None] * (f @ branch.fc.weight.T + branch.fc.bias), a))
    (z1, a1), (z2, a2) = out
    return z1, z2, (a1 + a2) / 2


def spec_loss(z1, z2, a, y, ld, epoch, p: FusionConfig, num_images: int):
    """Section 3, row by row."""
    n, c = z1.shape
    if epoch <= p.beta:
        w_ce, w_kl = 1.0, math.exp(-((1 - epoch / p.beta) ** 2))
    else:
        w_ce, w_kl = math.exp(-((1 - p.beta / epoch) ** 2)), 1.0
    ce = sum(-torch.log_softmax(z1[i], 0)[y[i]] for i in range(n)) / n
    a_min, a_max = a.min(), a.max()
    kl = 0.0
    for i in range(n):
        w = (a[i] - a_min) / (a_max - a_min) * (p.max_weight - p.min_weight) + p.min_weight
        q = (1 - w) * torch.softmax(z1[i], 0) + w * ld[y[i]]
        log_p2 = torch.log_softmax(z2[i], 0)
        for j in range(c):
            kl = kl + q[j] * (torch.log(q[j]) - log_p2[j])
    kl = kl / num_images
    k = int(num_images * p.tops)
    ordered = torch.sort(a, descending=True).values
    high = ordered[:k].mean()
    low = torch.sort(a).values[: num_images - k].mean()
    rr = torch.clamp(low - high + p.margin, min=0.0)
    return w_ce * ce + w_kl * kl + rr, ce, kl, rr


@pytest.mark.parametrize("crops,epoch", [(1, 2), (1, 5), (2, 1)])
def test_one_training_step_matches_spec(crops, epoch):
    torch.manual_seed(0)
    num_images = 6
    model = AdaDF(C).double()
    params = FusionConfig(detach_target=False)  # the reference's (pretrained) setting
    method = AdaDFMethod(params, C)
    ld = torch.rand(C, C, dtype=torch.float64) + 0.05
    method.class_dist = ld / ld.sum(1, keepdim=True)
    shape = (num_images, crops, 3, 32, 32) if crops > 1 else (num_images, 3, 32, 32)
    images = torch.randn(*shape, dtype=torch.float64)
    labels = torch.randint(0, C, (num_images,))

    reference = copy.deepcopy(model)
    named_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = images.flatten(0, 1) if crops > 1 else images
    y = labels.repeat_interleave(crops)
    reference.train()
    z1, z2, a = spec_forward(reference, x)
    loss, ce, kl, rr = spec_loss(z1, z2, a, y, method.class_dist, epoch, params, num_images)
    ref_opt = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=1e-3)
    ref_opt.zero_grad()
    loss.backward()
    ref_opt.step()

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    stats = train_one_epoch(model, [(images, labels)], optimizer, method, epoch, StepContext(torch.device("cpu")))

    assert stats["train_loss"] == pytest.approx(loss.item(), rel=1e-10)
    assert stats["train_ce"] == pytest.approx(ce.item(), rel=1e-10)
    assert stats["train_kl"] == pytest.approx(kl.item(), rel=1e-10)
    assert stats["train_rr"] == pytest.approx(float(rr.detach()), abs=1e-12)
    named_ref = dict(reference.named_parameters())
    moved = 0
    for name, param in model.named_parameters():
        ref = named_ref[name]
        if name.startswith("trunk."):
            assert param.grad is None and ref.grad is None, name  # frozen trunk gets no gradient
        else:
            torch.testing.assert_close(param.grad, ref.grad, rtol=1e-9, atol=1e-12, msg=name)
            # Adam's first step is lr * sign(grad) for any gradient: compare where the sign is not noise.
            clear = ref.grad.abs() > 1e-9
            torch.testing.assert_close(param[clear], ref[clear], rtol=1e-9, atol=1e-12, msg=name)
            moved += int((param[clear] != named_before[name][clear]).sum())
    assert moved > 1000  # the step changed the weights
    for (name, buf), (_, ref_buf) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(buf, ref_buf, msg=name)  # BN statistics, trunk included, updated alike
    assert not torch.equal(model.trunk.bn1.running_mean, AdaDF(C).double().trunk.bn1.running_mean)


def test_fused_target_gradient_reaches_attention_and_aux_branch():
    """Default (reference) behaviour: the fused target is not detached, so the KL term alone
    moves the auxiliary classifier and the attention heads."""
    torch.manual_seed(1)
    model = AdaDF(C).double()
    method = AdaDFMethod(FusionConfig(beta=1.0), C, pretrained=True)  # epoch 2 > beta: w_KL = 1
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    z1, z2, a = model(x)
    terms = method.loss((z1, z2, a), y, epoch=2, num_images=4)
    terms["kl"].backward()
    assert model.aux_branch.fc.weight.grad.abs().sum() > 0
    assert model.aux_attention.weight.grad.abs().sum() > 0

    model.zero_grad(set_to_none=True)
    detached = AdaDFMethod(FusionConfig(beta=1.0, detach_target=True), C)
    z1, z2, a = model(x)
    detached.loss((z1, z2, a), y, epoch=2, num_images=4)["kl"].backward()
    assert model.aux_branch.fc.weight.grad is None or model.aux_branch.fc.weight.grad.abs().sum() == 0
    assert model.target_branch.fc.weight.grad.abs().sum() > 0
