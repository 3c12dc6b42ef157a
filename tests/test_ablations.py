"""Each Ada-DF ablation (adadf/conf/method/adadf_*.yaml) changes exactly what its name says: a one-step
loss check per config, plus the one-line refusals of switches that do not fit."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from adadf import fusion
from adadf.app import build_method
from adadf.config import validate_config
from adadf.errors import UserError

C = 7
# config -> the fusion keys it changes, with their values
ABLATIONS = {
    "adadf_fixed_fusion": {"min_weight": 0.6, "max_weight": 0.6},
    "adadf_no_class_dist": {"min_weight": 0.0, "max_weight": 0.0},
    "adadf_class_dist_only": {"min_weight": 1.0, "max_weight": 1.0},
    "adadf_no_rr": {"margin": 0.0},
    "adadf_static_class_dist": {"update_class_dist": False},
}


def batch(seed: int = 0, n: int = 16):
    g = torch.Generator().manual_seed(seed)
    aux = torch.randn(n, C, generator=g, dtype=torch.float64)
    target = torch.randn(n, C, generator=g, dtype=torch.float64)
    attention = torch.rand(n, generator=g, dtype=torch.float64) * 0.05 + 0.5  # spread < margin: L_RR > 0
    labels = torch.randint(0, C, (n,), generator=g)
    return (aux, target, attention), labels


def method(compose_cfg, name: str, *overrides: str):
    return build_method(compose_cfg([f"method={name}", *overrides]), C)


def random_class_dist(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(C, C, generator=g), 1)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_changes_exactly_its_keys(compose_cfg, name):
    full, ablated = method(compose_cfg, "adadf"), method(compose_cfg, name)
    changed = {f.name: getattr(ablated.params, f.name) for f in dataclasses.fields(ablated.params)
               if getattr(ablated.params, f.name) != getattr(full.params, f.name)}
    assert {key: getattr(ablated.params, key) for key in ABLATIONS[name]} == ABLATIONS[name]
    assert changed == {k: v for k, v in ABLATIONS[name].items() if getattr(full.params, k) != v}
    # One step: the ablation's loss is Ada-DF's loss with those keys changed, nothing else.
    outputs, labels = batch()
    p = ablated.params
    expected = fusion.adadf_loss(*outputs, labels, ablated.class_dist, 2, beta=p.beta, min_weight=p.min_weight,
                                 max_weight=p.max_weight, tops=p.tops, margin=p.margin,
                                 detach_target=bool(p.detach_target))
    got = ablated.loss(outputs, labels, 2, len(labels))
    for key in ("loss", "ce", "kl", "rr"):
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-12)
    # ...and differs from the full method's wherever the name says it should.
    if name != "adadf_static_class_dist":  # same loss in epoch 1; differs in what end_epoch learns
        assert float(got["loss"]) != pytest.approx(float(full.loss(outputs, labels, 2, len(labels))["loss"]))
    # The recorded config shows the values used.
    assert ablated.config_updates()["fusion"].items() >= ABLATIONS[name].items()


def test_fixed_fusion_ignores_the_attention_in_the_target(compose_cfg):
    m = method(compose_cfg, "adadf_fixed_fusion")
    (aux, target, attention), labels = batch()
    kl = [float(m.loss((aux, target, a), labels, 2, len(labels))["kl"]) for a in (attention, attention.flip(0))]
    assert kl[0] == pytest.approx(kl[1], rel=1e-12)
    full = method(compose_cfg, "adadf")
    assert float(full.loss((aux, target, attention), labels, 2, 16)["kl"]) != pytest.approx(
        float(full.loss((aux, target, attention.flip(0)), labels, 2, 16)["kl"]))


def test_no_class_dist_target_is_the_auxiliary_prediction(compose_cfg):
    m = method(compose_cfg, "adadf_no_class_dist")
    outputs, labels = batch()
    kls = []
    for seed in (1, 2):
        m.class_dist = random_class_dist(seed)
        kls.append(float(m.loss(outputs, labels, 2, len(labels))["kl"]))
    assert kls[0] == pytest.approx(kls[1], rel=1e-12)
    q = torch.softmax(outputs[0], 1)
    expected = torch.nn.functional.kl_div(torch.log_softmax(outputs[1], 1), q, reduction="sum") / len(labels)
    assert kls[0] == pytest.approx(float(expected), rel=1e-12)


def test_class_dist_only_target_is_the_label_row(compose_cfg):
    m = method(compose_cfg, "adadf_class_dist_only")
    (aux, target, attention), labels = batch()
    m.class_dist = random_class_dist(3).double()
    kl = float(m.loss((aux, target, attention), labels, 2, len(labels))["kl"])
    assert kl == pytest.approx(float(m.loss((aux * 3 + 1, target, attention), labels, 2, 16)["kl"]), rel=1e-12)
    q = m.class_dist[labels]
    expected = torch.nn.functional.kl_div(torch.log_softmax(target, 1), q, reduction="sum") / len(labels)
    assert kl == pytest.approx(float(expected), rel=1e-12)


def test_no_rr_has_zero_rank_loss_where_adadf_has_one(compose_cfg):
    outputs, labels = batch()
    assert float(method(compose_cfg, "adadf").loss(outputs, labels, 2, 16)["rr"]) > 0
    assert float(method(compose_cfg, "adadf_no_rr").loss(outputs, labels, 2, 16)["rr"]) == 0.0


def test_static_class_dist_is_never_re_estimated(compose_cfg):
    static, full = method(compose_cfg, "adadf_static_class_dist"), method(compose_cfg, "adadf")
    assert static.observes is None and full.observes is not None  # no pass for statistics
    initial = static.class_dist.clone()
    outputs, labels = batch()
    for m in (static, full):
        m.observe(outputs, labels)
        m.end_epoch()
    assert torch.equal(static.class_dist, initial)
    assert not torch.equal(full.class_dist, initial)


def test_ablation_refuses_a_contradicting_fusion_value(compose_cfg):
    with pytest.raises(UserError, match=r"^fusion.margin=0.2: this Ada-DF ablation fixes fusion.margin=0.0$"):
        method(compose_cfg, "adadf_no_rr", "fusion.margin=0.2")
    # The default value, as experiments write it, is no contradiction.
    assert method(compose_cfg, "adadf_no_rr", "fusion.margin=0.07").params.margin == 0.0
    with pytest.raises(UserError, match=r"^method.fixed.nope: not a fusion key$"):
        method(compose_cfg, "adadf_no_rr", "+method.fixed.nope=1")


@pytest.mark.parametrize("override, message", [
    ("fusion.ld_pass=clean", "fusion.ld_pass=clean: method=ce has no class distributions"),
    ("fusion.update_class_dist=false", "fusion.update_class_dist=False: method=ce has no class distributions"),
    ("fusion.alpha=0.5", "fusion.alpha=0.5: method=ce has no KL/CE weight schedule"),
    ("fusion.detach_target=true", "fusion.detach_target=True: method=ce has no fused target"),
])
def test_ce_refuses_adadf_switches(compose_cfg, override, message):
    with pytest.raises(UserError, match=f"^{message}"):
        method(compose_cfg, "ce", override)
    # The paper's recipes set Ada-DF's hyper-parameters; CE composes with them.
    assert method(compose_cfg, "ce", "experiment=sfew").label_smoothing == 0.0


def test_label_noise_out_of_range_is_one_line(compose_cfg):
    for value in ("1.0", "-0.1"):
        with pytest.raises(UserError, match=rf"^dataset.label_noise={float(value)}: expected a value in \[0, 1\)$"):
            validate_config(compose_cfg([f"dataset.label_noise={value}"]))


@pytest.mark.parametrize("overrides, message", [
    (["method=ce", "fusion.sharpen=true"], "fusion.sharpen=True: method=ce has no class distributions"),
    (["method=adadf_fixed_fusion", "fusion.min_weight=0.1"], "fusion.min_weight=0.1: this Ada-DF ablation fixes"),
])
def test_refusals_come_at_validation_before_any_work(compose_cfg, overrides, message):
    with pytest.raises(UserError, match=f"^{message}"):
        validate_config(compose_cfg(overrides))
