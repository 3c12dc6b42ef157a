"""A faster step (docs/speed.md): the forward-only passes in inference mode, the evaluation batch
rule, trainer.amp=auto, the optimizer's kernels and the captured-step option. On the CPU every
result stays what it was, to the bit."""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

import pytest
import torch
from omegaconf import OmegaConf

from adadf import app
from adadf.config import validate_config
from adadf.config.schema import FusionConfig, TrainerConfig
from adadf.data.bundle import make_loader, rebatched
from adadf.engine.loop import StepContext, evaluate, observe_pass, train_one_epoch
from adadf.errors import UserError
from adadf.methods.adadf import AdaDFMethod
from adadf.models import AdaDF

C = 7
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = AdaDF(C)
    train_one_epoch(model, [(torch.randn(8, 3, 32, 32), torch.randint(0, C, (8,)))],  # BN statistics move
                    torch.optim.Adam(model.parameters(), lr=1e-3), AdaDFMethod(FusionConfig(), C), 1,
                    StepContext(CPU))
    dataset = torch.utils.data.TensorDataset(torch.randn(37, 3, 32, 32), torch.randint(0, C, (37,)))
    return model, dataset


def eval_loader(dataset, batch_size: int):
    return make_loader(dataset, batch_size=batch_size, num_workers=0, train=False, seed=0)


def todays_confusion(model, loader) -> torch.Tensor:
    """The evaluation pass as it was: no_grad, no inference mode."""
    model.eval()
    confusion = torch.zeros(C, C, dtype=torch.int64)
    with torch.no_grad():
        for x, y in loader:
            pred = model(x, target_only=True).argmax(1)
            confusion += torch.bincount(y * C + pred, minlength=C * C).view(C, C)
    return confusion


def test_evaluation_in_inference_mode_is_bit_identical(model_and_data):
    model, dataset = model_and_data
    loader = eval_loader(dataset, 8)
    result = evaluate(model, loader, C, StepContext(CPU), desc="t")
    assert torch.equal(result.confusion, todays_confusion(model, loader))
    with torch.no_grad():
        today = torch.cat([model(x, target_only=True) for x, _ in loader])
    with StepContext(CPU).forward_only():
        now = torch.cat([model(x, target_only=True) for x, _ in loader])
    assert now.is_inference() and torch.equal(today, now)  # the logits themselves, to the bit


def test_class_distributions_are_bit_identical_and_ordinary_tensors(model_and_data):
    model, dataset = model_and_data
    loader = eval_loader(dataset, 8)
    ref, method = AdaDFMethod(FusionConfig(), C), AdaDFMethod(FusionConfig(), C)
    model.eval()
    with torch.no_grad():  # today's pass
        for x, y in loader:
            ref.observe(model(x), y)
    ref.end_epoch()
    seen = []
    observe_pass(model, loader, method, StepContext(CPU), on_batch=lambda out, y, n: seen.append(out[0].is_inference()))
    assert all(seen) and len(seen) == len(loader)  # the forward ran in inference mode
    assert not method._prob_sums.is_inference()
    method.end_epoch()
    assert torch.equal(method.class_dist, ref.class_dist) and not method.class_dist.is_inference()
    # The statistics feed the next training step's loss and backward, outside inference mode.
    trained = copy.deepcopy(model)
    train_one_epoch(trained, [next(iter(loader))], torch.optim.Adam(trained.parameters()), method, 5, StepContext(CPU))


def test_eval_batch_rule_and_rebatched_loaders(model_and_data):
    _, dataset = model_and_data
    assert app.eval_batch_size(TrainerConfig(), 16) == 16  # auto: today's batch
    assert app.eval_batch_size(TrainerConfig(eval_batch_size=5), 16) == 5
    loader = eval_loader(dataset, 8)
    assert rebatched(loader, 8) is loader
    bigger = rebatched(loader, 16)
    assert [len(y) for _, y in bigger] == [16, 16, 5]
    assert torch.equal(torch.cat([y for _, y in bigger]), torch.cat([y for _, y in loader]))  # same order
    with pytest.raises(ValueError):
        rebatched(make_loader(dataset, batch_size=8, num_workers=0, train=True, seed=0), 16)


def test_amp_auto_is_fp32_on_the_cpu_and_recorded(compose_cfg, cache_dir, monkeypatch):
    monkeypatch.setenv("ADADF_CACHE_DIR", str(cache_dir))
    cfg = compose_cfg(["debug=fast", "dataset.val_fraction=0.2"])
    assert cfg.trainer.amp == "auto" and cfg.trainer.channels_last == "auto" and cfg.trainer.eval_batch_size is None
    parts = app.build(cfg, CPU)
    assert parts.ctx.autocast is nullcontext and not parts.ctx.scaler.is_enabled() and not parts.ctx.channels_last
    recorded = parts.config["trainer"]
    assert recorded["amp_resolved"] is False and recorded["channels_last_resolved"] is False
    assert recorded["eval_batch_size_resolved"] == cfg.dataset.batch_size
    assert parts.data.test_loader.batch_size == parts.data.val_loader.batch_size == cfg.dataset.batch_size
    assert parts.config["optimizer"]["foreach"] is True  # the CPU's kernel choice, recorded
    assert all(g["foreach"] is True and not g["fused"] for g in parts.optimizer.param_groups)
    parts = app.build(compose_cfg(["debug=fast", "trainer.eval_batch_size=64"]), CPU)
    assert parts.data.test_loader.batch_size == parts.config["trainer"]["eval_batch_size_resolved"] == 64
    assert parts.data.train_loader.batch_size == parts.data.clean_train_loader.batch_size == 16


def test_amp_values(monkeypatch, caplog):
    resolve = app.resolve_precision
    assert resolve(TrainerConfig(), CPU) == app.Precision(None, False)
    assert resolve(TrainerConfig(amp=True), CPU) == app.Precision(torch.bfloat16, False)  # true: as before
    assert resolve(TrainerConfig(amp=False), CUDA, bf16=True) == app.Precision(None, False)
    assert resolve(TrainerConfig(amp=True, amp_dtype="float16", channels_last=True), CPU) == \
        app.Precision(torch.float16, True)
    monkeypatch.setattr(app, "AUTO_AMP_ON_CUDA", False)
    assert resolve(TrainerConfig(), CUDA, bf16=True) == app.Precision(None, False)
    monkeypatch.setattr(app, "AUTO_AMP_ON_CUDA", True)  # what the GPU check's measurement can flip
    assert resolve(TrainerConfig(), CUDA, bf16=True) == app.Precision(torch.bfloat16, True)
    assert resolve(TrainerConfig(channels_last=False), CUDA, bf16=True) == app.Precision(torch.bfloat16, False)
    assert resolve(TrainerConfig(), CPU) == app.Precision(None, False)
    with caplog.at_level(logging.WARNING, logger="adadf.app"):
        precision = resolve(TrainerConfig(), CUDA, bf16=False)
    assert precision == app.Precision(torch.float16, True) and precision.name == "float16"
    assert "no bfloat16; AMP runs in float16 with a gradient scaler" in caplog.text


@pytest.mark.parametrize("override,line", [
    ("trainer.amp=yes", "trainer.amp='yes': expected auto, true or false"),
    ("trainer.compile_mode=max", "trainer.compile_mode='max': expected default | reduce-overhead"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0: expected an integer >= 1"),
])
def test_bad_values_are_one_line(compose_cfg, override, line):
    with pytest.raises(UserError) as err:
        validate_config(compose_cfg([override]))
    assert str(err.value) == line


def test_optimizer_kernels():
    node = OmegaConf.create({"_target_": "torch.optim.Adam", "fused": None, "foreach": None})
    assert app.optimizer_kernels(node, CPU) == {"foreach": True}
    assert app.optimizer_kernels(node, CUDA) == {"fused": True}
    assert app.optimizer_kernels(OmegaConf.merge(node, {"foreach": False}), CUDA) == {}  # set: as given
    rmsprop = OmegaConf.merge(node, {"_target_": "torch.optim.RMSprop"})
    assert app.optimizer_kernels(rmsprop, CUDA) == {}  # no fused kernel: torch's default


@pytest.mark.parametrize("kind,extra", [(torch.optim.Adam, {}), (torch.optim.AdamW, {"weight_decay": 0.05}),
                                        (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True,
                                                           "weight_decay": 5e-4})])
def test_foreach_is_bit_identical_on_the_cpu(kind, extra):
    torch.manual_seed(0)
    base = AdaDF(C)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, C, (6,))
    weights = []
    for foreach in (False, True):
        model = copy.deepcopy(base)
        optimizer = kind(model.parameters(), **{"lr": 1e-3, **extra, "foreach": foreach})
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x)[1], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights.append([p.detach() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
