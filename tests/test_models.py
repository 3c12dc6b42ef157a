"""The Ada-DF network (spec section 1) and its checkpoint loaders (spec sections 1 and 6)."""
from __future__ import annotations

import argparse
import copy
import re
from collections import OrderedDict

import pytest
import timm
import torch
from torch import nn

from adadf.errors import UserError
from adadf.models import (
    AdaDF,
    build_model,
    load_pretrained_backbone,
    load_reference_checkpoint,
    load_state_file,
)

C = 7


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def randomize_(model: nn.Module) -> nn.Module:
    """Give every float tensor (incl. BN statistics) distinct random values, so copies are checkable."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.1)
    return model


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def resnet_state(seed: int = 1) -> OrderedDict:
    """A timm resnet18 state dict with its 1000-class fc, all values random (the MS-Celeb format)."""
    torch.manual_seed(seed)
    return randomize_(timm.create_model("resnet18", pretrained=False)).state_dict()


def to_reference_state(model: AdaDF) -> OrderedDict:
    """Export our model in the original Ada-DF naming, with its aliases, written from the spec:
    feature.0|1|4 = conv1, bn1, layer1; branch_k.0|1|2|4 = layer2, layer3, layer4, fc;
    branch_k_feature.0|1|2 and branch_k_classifier alias them; alpha_k.0 = attention Linear."""
    out = OrderedDict()

    def put(prefix: str, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            out[f"{prefix}.{k}"] = v

    for i, name in ((0, "conv1"), (1, "bn1"), (4, "layer1")):
        put(f"feature.{i}", getattr(model.trunk, name))
    for k, branch in ((1, model.aux_branch), (2, model.target_branch)):
        for i, layer in ((0, branch.layer2), (1, branch.layer3), (2, branch.layer4), (4, branch.fc)):
            put(f"branch_{k}.{i}", layer)
        for i, layer in ((0, branch.layer2), (1, branch.layer3), (2, branch.layer4)):
            put(f"branch_{k}_feature.{i}", layer)
        put(f"branch_{k}_classifier", branch.fc)
    put("alpha_1.0", model.aux_attention)
    put("alpha_2.0", model.target_attention)
    return out


def reference_checkpoint(model: AdaDF) -> dict:
    c = model.num_classes
    ld = torch.full((c, c), 0.05).fill_diagonal_(0.7)
    return {"epoch": 4, "state_dict": to_reference_state(model), "acc": 80.0, "best_acc": 81.5,
            "optimizer": {"state": {}, "param_groups": []}, "class_distributions": ld}


# ------------------------------------------------------------------------------------ the network
def test_forward_shapes_and_formula():
    model = AdaDF(C).eval()
    x = images()
    with torch.no_grad():
        z1, z2, a = model(x)
        assert z1.shape == z2.shape == (4, C) and a.shape == (4,)
        assert ((a > 0) & (a < 1)).all()
        # Recompute section 1 by hand from the modules.
        f0 = model.trunk(x)
        f1 = model.aux_branch.global_pool(model.aux_branch.layer4(model.aux_branch.layer3(model.aux_branch.layer2(f0)))).flatten(1)
        f2 = model.target_branch.global_pool(model.target_branch.layer4(model.target_branch.layer3(model.target_branch.layer2(f0)))).flatten(1)
        assert f1.shape == (4, 512)
        a1, a2 = torch.sigmoid(model.aux_attention(f1)), torch.sigmoid(model.target_attention(f2))
        torch.testing.assert_close(z1, a1 * model.aux_branch.fc(f1))
        torch.testing.assert_close(z2, a2 * model.target_branch.fc(f2))
        torch.testing.assert_close(a, ((a1 + a2) / 2).squeeze(1))
        torch.testing.assert_close(model.forward_features(x), f0)


@pytest.mark.parametrize("scale_logits", [True, False])
def test_target_only_forward_is_the_target_logits_without_the_aux_branch(scale_logits):
    model = AdaDF(C).eval()
    model.scale_logits = scale_logits
    calls = []
    model.aux_branch.layer2.register_forward_hook(lambda *_: calls.append("aux_branch"))
    model.aux_attention.register_forward_hook(lambda *_: calls.append("aux_attention"))
    x = images()
    with torch.no_grad():
        target = model(x, target_only=True)
        assert calls == []
        _, z2, _ = model(x)
        assert calls == ["aux_branch", "aux_attention"]  # the hooks do see the full forward
    assert torch.equal(target, z2)  # the same operations: bit-identical, not merely close


def test_branches_identical_at_init_and_independent():
    model = AdaDF(C)
    aux, target = model.aux_branch.state_dict(), model.target_branch.state_dict()
    assert any(k.startswith("fc.") for k in aux)
    assert model.aux_branch.fc.out_features == C
    assert_same_state(aux, target)
    # deep copies, not shared storage; attention heads are separate draws
    assert model.aux_branch.fc.weight.data_ptr() != model.target_branch.fc.weight.data_ptr()
    assert not torch.equal(model.aux_attention.weight, model.target_attention.weight)


def test_fresh_weights_drawn_in_reference_order():
    """Same seed -> same fresh fc and attention heads as the reference construction
    (create resnet18, new fc, deep copy, attention 1, attention 2)."""
    torch.manual_seed(3)
    resnet = timm.create_model("resnet18", pretrained=False)
    resnet.fc = nn.Linear(512, C)
    branch_2_fc = copy.deepcopy(resnet.fc)
    alpha_1, alpha_2 = nn.Linear(512, 1), nn.Linear(512, 1)
    torch.manual_seed(3)
    model = AdaDF(C)
    assert torch.equal(model.trunk.conv1.weight, resnet.conv1.weight)
    assert torch.equal(model.aux_branch.layer3[0].conv1.weight, resnet.layer3[0].conv1.weight)
    assert_same_state(model.aux_branch.fc.state_dict(), resnet.fc.state_dict())
    assert_same_state(model.target_branch.fc.state_dict(), branch_2_fc.state_dict())
    assert_same_state(model.aux_attention.state_dict(), alpha_1.state_dict())
    assert_same_state(model.target_attention.state_dict(), alpha_2.state_dict())


def test_trunk_frozen_but_batchnorm_statistics_update():
    model = AdaDF(C).train()
    before = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    z1, z2, a = model(images())
    (z1.sum() + z2.sum() + a.sum()).backward()
    for name, p in model.trunk.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None for p in model.aux_branch.parameters())
    assert all(p.grad is not None for p in model.target_branch.parameters())
    assert model.aux_attention.weight.grad is not None and model.target_attention.weight.grad is not None
    after = model.trunk.state_dict()
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["layer1.0.bn1.running_var"], after["layer1.0.bn1.running_var"])
    assert after["bn1.num_batches_tracked"].item() == 1
    assert torch.equal(before["conv1.weight"], after["conv1.weight"])


def test_eval_deterministic_and_dropout_is_a_module():
    model = AdaDF(C, drop_rate=0.5)
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    x = images()
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
        no_drop = AdaDF(C, drop_rate=0.0).eval()
        no_drop.load_state_dict(model.state_dict())
        third = no_drop(x)
    for u, v, w in zip(first, second, third):
        assert torch.equal(u, v)
        torch.testing.assert_close(u, w)
    model.train()
    with torch.no_grad():
        f_a, f_b = model.forward_features(x), model.forward_features(x)
    assert not torch.equal(f_a, f_b)
    assert (f_a == 0).float().mean() > 0.4  # about half the units dropped


def test_channels_last_matches_contiguous():
    model = AdaDF(C).eval()
    x = images()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for u, v in zip(ref, out):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)


def test_resnet50_feature_width():
    model = AdaDF(3, backbone="resnet50").eval()
    assert model.num_features == 2048 and model.aux_attention.in_features == 2048
    with torch.no_grad():
        z1, z2, a = model(images(2))
    assert z1.shape == z2.shape == (2, 3) and a.shape == (2,)


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "no_such_model"])
def test_unsupported_backbone(name):
    with pytest.raises(UserError, match=rf"backbone.name={name}: expected a timm ResNet-family model"):
        AdaDF(C, backbone=name)


# ---------------------------------------------------------------------------- pretrained backbone
def test_pretrained_round_trip(tmp_path):
    sd = resnet_state()
    assert sd["fc.weight"].shape == (1000, 512)
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": sd}, path)
    model = AdaDF(C)
    fc_before = {k: v.clone() for k, v in model.aux_branch.fc.state_dict().items()}
    load_pretrained_backbone(model, path)
    trunk = model.trunk.state_dict()
    for k, v in sd.items():
        if k.startswith(("conv1", "bn1", "layer1.")):
            assert torch.equal(trunk[k], v), k
        elif k.startswith(("layer2", "layer3", "layer4")):
            assert torch.equal(model.aux_branch.state_dict()[k], v), k
            assert torch.equal(model.target_branch.state_dict()[k], v), k
    assert_same_state(model.aux_branch.state_dict(), model.target_branch.state_dict())
    assert_same_state(model.aux_branch.fc.state_dict(), fc_before)


def test_pretrained_bare_prefixed_state_without_bn_counters(tmp_path):
    sd = resnet_state()
    bare = {f"module._orig_mod.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bare.pth"
    torch.save(bare, path)
    model = AdaDF(C)
    load_pretrained_backbone(model, path)
    assert torch.equal(model.trunk.conv1.weight, sd["conv1.weight"])
    assert torch.equal(model.target_branch.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])
    assert model.trunk.bn1.num_batches_tracked.item() == 0


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda sd: sd.pop("layer3.1.conv2.weight"), r"missing keys \[layer3\.1\.conv2\.weight\]"),
        (lambda sd: sd.pop("fc.bias"), r"missing keys \[fc\.bias\]"),
        (lambda sd: sd.__setitem__("layer1.0.conv1.weight", torch.zeros(64, 64, 1, 1)),
         r"wrong shapes \[layer1\.0\.conv1\.weight \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)\]"),
        (lambda sd: sd.__setitem__("head.extra", torch.zeros(1)), r"unexpected keys \[head\.extra\]"),
    ],
    ids=["missing", "missing-fc", "shape", "unexpected"],
)
def test_pretrained_strict_mismatch(tmp_path, edit, pattern):
    sd = resnet_state()
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    model = AdaDF(C)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=pattern) as info:
        load_pretrained_backbone(model, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert_same_state(model.state_dict(), before)  # nothing half-loaded


def test_many_mismatches_are_counted_on_one_line(tmp_path):
    sd = resnet_state()
    dropped = [k for k in sd if k.startswith("layer4.") and "num_batches" not in k][:10]
    for k in dropped:
        del sd[k]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(UserError, match=rf"10 missing keys \[{re.escape(dropped[0])}, .*\(\+7 more\)\]$"):
        load_pretrained_backbone(AdaDF(C), path)


# ------------------------------------------------------------------------------------- bad files
def test_unreadable_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": resnet_state()}, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=rf"{cut}: cannot read checkpoint"):
        load_state_file(cut)
    with pytest.raises(UserError, match=rf"{cut}: cannot read checkpoint"):
        load_pretrained_backbone(AdaDF(C), cut)
    with pytest.raises(UserError, match="checkpoint file not found"):
        load_state_file(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="garbage.pth: cannot read checkpoint"):
        load_state_file(garbage)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(UserError, match="list.pth: expected a dict"):
        load_state_file(listing)
    assert isinstance(load_state_file(good)["state_dict"], dict)
    pickled = tmp_path / "pickled.pth"  # needs full unpickling: refused, unless the user opts in
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.001)}, pickled)
    with pytest.raises(UserError, match=r"pickled.pth: refused: it holds argparse.Namespace, .*backbone.allow_pickle"):
        load_state_file(pickled)
    assert load_state_file(pickled, allow_pickle=True)["args"].lr == 0.001


# ---------------------------------------------------------------------- reference Ada-DF checkpoint
def trained_like(num_classes: int = C) -> AdaDF:
    """A model whose branches and heads differ, as after training."""
    return randomize_(AdaDF(num_classes))


def test_reference_checkpoint_round_trip(tmp_path):
    source = trained_like()
    ckpt = reference_checkpoint(source)
    assert "branch_1.0.0.conv1.weight" in ckpt["state_dict"]
    assert "branch_1_feature.0.0.conv1.weight" in ckpt["state_dict"]
    assert "feature.4.1.bn2.running_mean" in ckpt["state_dict"] and "alpha_2.0.bias" in ckpt["state_dict"]
    assert len(ckpt["state_dict"]) > len(source.state_dict())  # aliases
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(ckpt, path)

    model = AdaDF(C)
    ld = load_reference_checkpoint(model, path)
    assert ld.dtype == torch.float32 and torch.equal(ld, ckpt["class_distributions"])
    assert_same_state(model.state_dict(), source.state_dict())
    x = images()
    with torch.no_grad():
        for u, v in zip(source.eval()(x), model.eval()(x)):
            assert torch.equal(u, v)


def test_reference_checkpoint_bare_state_without_aliases(tmp_path):
    source = trained_like()
    sd = {k: v for k, v in to_reference_state(source).items() if "_feature." not in k and "_classifier." not in k}
    path = tmp_path / "bare.pth.tar"
    torch.save(sd, path)
    model = AdaDF(C)
    assert load_reference_checkpoint(model, path) is None
    assert_same_state(model.state_dict(), source.state_dict())


def test_reference_checkpoint_class_count_mismatch(tmp_path):
    path = tmp_path / "affectnet8.pth.tar"
    torch.save(reference_checkpoint(trained_like(8)), path)
    with pytest.raises(UserError, match=rf"{path}: checkpoint has 8 classes but the model has 7"):
        load_reference_checkpoint(AdaDF(C), path)


def test_reference_checkpoint_missing_key_and_bad_alias(tmp_path):
    ckpt = reference_checkpoint(trained_like())
    del ckpt["state_dict"]["alpha_2.0.bias"]
    path = tmp_path / "missing.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"missing keys \[alpha_2\.0\.bias\]"):
        load_reference_checkpoint(AdaDF(C), path)

    ckpt = reference_checkpoint(trained_like())
    ckpt["state_dict"]["branch_2_classifier.weight"] = torch.zeros(C, 512)
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"branch_2\.4\.weight and branch_2_classifier\.weight hold different"):
        load_reference_checkpoint(AdaDF(C), path)


# ----------------------------------------------------------------------------------- build_model
def test_build_model_detects_the_three_formats(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    x = images(2)

    model = build_model(C)
    assert isinstance(model, AdaDF) and model.imported_state.get("class_dist") is None

    sd = resnet_state()
    torch.save({"state_dict": sd}, tmp_path / "msceleb.pth")
    model = build_model(C, name="resnet18", checkpoint="~/msceleb.pth")
    assert model.imported_state["class_dist"] is None and torch.equal(model.trunk.conv1.weight, sd["conv1.weight"])
    assert torch.equal(model.target_branch.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])

    source = trained_like()
    ref = reference_checkpoint(source)
    torch.save(ref, tmp_path / "model_best.pth.tar")
    model = build_model(C, checkpoint=str(tmp_path / "model_best.pth.tar"), drop_rate=0.1)
    assert torch.equal(model.imported_state["class_dist"], ref["class_distributions"]) and model.dropout.p == 0.1
    assert_same_state(model.state_dict(), source.state_dict())

    ours_ld = torch.full((C, C), 1.0 / C)
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()},
                "class_distributions": ours_ld, "epoch": 3}, tmp_path / "last.pt")
    model = build_model(C, checkpoint="~/last.pt")
    assert torch.equal(model.imported_state["class_dist"], ours_ld)
    assert_same_state(model.state_dict(), source.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)[1], source.eval()(x)[1], rtol=0, atol=0)

    with pytest.raises(UserError, match="checkpoint has 7 classes but the model has 5"):
        build_model(5, checkpoint="~/last.pt")
