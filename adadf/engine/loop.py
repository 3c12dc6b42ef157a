"""One training epoch, one evaluation, one class-statistics pass: plain functions over a loader."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from adadf.data.bundle import BatchTransform
from adadf.engine.interrupt import StopFlag
from adadf.errors import UserError
from adadf.methods.base import Batch, Method, Reducer
from adadf.tracking.callbacks import BatchHook


class NonFiniteLoss(UserError):
    """The loss became NaN or Inf: the run stops, the last good checkpoint stays."""


FINITE_CHECK_EVERY = 32  # training steps between reads of the losses' finiteness (each read: one sync)


def check_finite(losses: torch.Tensor, first_step: int, epoch: int) -> None:
    """Raise :class:`NonFiniteLoss` naming the first batch of ``losses`` (the losses of batches
    ``first_step``, ``first_step + 1``, ...) whose loss is NaN or Inf."""
    finite = torch.isfinite(losses)
    if bool(finite.all()):  # sync point, once per FINITE_CHECK_EVERY batches
        return
    i = int((~finite).nonzero()[0])
    raise NonFiniteLoss(f"non-finite loss ({float(losses[i])}) at epoch {epoch}, batch {first_step + i}; stopping")


@dataclass
class StepContext:
    """How batches run on this device: the same code path for CPU and CUDA."""

    device: torch.device
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler("cpu", enabled=False))
    channels_last: bool = False
    stop: StopFlag | None = None
    progress: bool = True

    def forward_only(self) -> contextlib.ExitStack:
        """A forward pass whose outputs never enter autograd (class-distribution and evaluation
        passes): inference mode, and autocast when the run uses AMP. Only the model runs in it: its
        outputs are inference tensors, read (never changed in place) by what follows, which runs
        outside it, so the method's statistics and the batch transforms' buffers stay ordinary tensors."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.autocast())
        return stack


def prepare_batch(
    images: torch.Tensor, labels: torch.Tensor, ctx: StepContext, transform: BatchTransform | None
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Move a batch to the device, flatten crops, apply the on-device transform.

    Returns x [N, 3, H, W], labels per row [N], the number of images B and crops K (N = B * K).
    """
    images = images.to(ctx.device, non_blocking=True)
    labels = labels.to(ctx.device, non_blocking=True)
    num_images, num_crops = images.shape[0], 1
    if images.dim() == 5:  # [B, K, 3, H, W]: crops of one image are consecutive rows
        num_crops = images.shape[1]
        images = images.flatten(0, 1)
        labels = labels.repeat_interleave(num_crops)
    if transform is not None:
        images = transform(images)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels, num_images, num_crops


def _batches(loader: Iterable, ctx: StepContext, desc: str) -> Iterable:
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None if ctx.progress else True)
    for batch in bar:
        if ctx.stop is not None:
            ctx.stop.check()
        yield batch


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    method: Method,
    epoch: int,
    ctx: StepContext,
    *,
    batch_transform: BatchTransform | None = None,
    observe: bool = False,
    reduce: Reducer | None = None,
    on_batch: BatchHook | None = None,
    order: Callable[[], Sequence[int]] | None = None,
) -> dict[str, float]:
    """One pass of training (spec section 3): ``method.step`` per batch, then one backward and one
    optimizer step. ``order()`` (asked once the sampler has drawn: ``DataBundle.train_order``) gives
    the dataset index of each delivered image, so every batch carries its indices (``Batch.index``).

    Every tensor term of the step over the epoch's rows (``train_<term>``);
    float terms are reported as they stand after the last batch. ``observe`` also shows each
    batch to the method (its online statistics). ``reduce`` (DDP) sums the terms and counts over
    ranks, so the metrics describe the whole global epoch; images/s is then all ranks' images over
    this rank's time.
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}  # term -> sum over rows, float64 on the device
    last: dict[str, float] = {}
    rows = images_seen = step = 0
    # The last FINITE_CHECK_EVERY losses, kept on the device and read in one go (no sync per step);
    # a bad batch's update is made, but the epoch stops at the next read, before anything is saved.
    window = torch.zeros(FINITE_CHECK_EVERY, dtype=torch.float64, device=ctx.device)
    indices: torch.Tensor | None = None  # [images of the pass] on the device, from order()

    def forward(images: torch.Tensor, **kwargs) -> object:
        with ctx.autocast():
            return model(images, **kwargs)

    start = time.perf_counter()
    for step, (images, labels) in enumerate(_batches(loader, ctx, f"train {epoch}"), start=1):
        x, y, num_images, num_crops = prepare_batch(images, labels, ctx, batch_transform)
        if order is not None and indices is None:
            indices = torch.as_tensor(list(order()), dtype=torch.long).to(ctx.device)
        index = indices[images_seen:images_seen + num_images] if indices is not None else None
        # Losses upcast autocast's bf16/fp16 outputs to fp32 themselves; float64 stays float64.
        terms, outputs = method.step(forward, Batch(x, y, index, num_images, num_crops), epoch)
        loss = terms["loss"]
        window[(step - 1) % FINITE_CHECK_EVERY] = loss.detach()  # checked below, every FINITE_CHECK_EVERY steps
        optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
        if observe:
            method.observe(outputs, y)
        if on_batch is not None:  # the callbacks' (per-sample scores: adadf.tracking.samples), this very pass
            on_batch(outputs, y, num_images)
        with torch.no_grad():
            totals = {"correct": (outputs.logits.argmax(1) == y).sum().double()}  # the evaluated logits' accuracy
            for key, value in terms.items():
                if isinstance(value, torch.Tensor):
                    totals[key] = value.detach().to(device=ctx.device, dtype=torch.float64) * y.numel()
                else:
                    last[key] = float(value)
            for key, total in totals.items():
                sums[key] = sums[key] + total if key in sums else total
        rows += y.numel()
        images_seen += num_images
        if step % FINITE_CHECK_EVERY == 0:
            check_finite(window, step - FINITE_CHECK_EVERY + 1, epoch)
    check_finite(window[:step % FINITE_CHECK_EVERY], step - step % FINITE_CHECK_EVERY + 1, epoch)
    seconds = time.perf_counter() - start
    keys = sorted(sums)
    totals = torch.stack([sums[k] for k in keys]) if keys else torch.zeros(0, dtype=torch.float64)
    if reduce is not None:  # term sums, rows, images over all ranks
        counts = torch.tensor([rows, images_seen], dtype=torch.float64, device=ctx.device)
        reduced = reduce(torch.cat([totals.to(ctx.device), counts]))
        totals, rows, images_seen = reduced[:-2], int(reduced[-2]), int(reduced[-1])
    if rows == 0:
        raise UserError("the training loader yielded no batch: dataset.batch_size is larger than the training split")
    means = dict(zip(keys, (totals / rows).tolist()))
    row = {f"train_{k}": v for k, v in means.items() if k != "correct"}
    row["train_acc"] = 100.0 * means["correct"]
    return {
        **row,
        **last,
        "train_time_s": seconds,
        "train_images_per_s": images_seen / seconds if seconds > 0 else float("nan"),
    }


@dataclass
class EvalResult:
    """Accuracies in percent; confusion[i, j] counts images of class i predicted as j."""

    acc: float
    mean_class_acc: float
    per_class_acc: list[float]
    confusion: torch.Tensor  # [C, C] int64, on the CPU


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    ctx: StepContext,
    *,
    batch_transform: BatchTransform | None = None,
    desc: str = "test",
    reduce: Reducer | None = None,
) -> EvalResult:
    """Target-branch predictions in eval mode; multi-crop logits are averaged over crops.

    ``reduce`` (DDP) sums the confusion matrix over ranks, each of which saw a shard of the loader.
    """
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=ctx.device)
    for images, labels in _batches(loader, ctx, desc):
        x, _, num_images, num_crops = prepare_batch(images, labels, ctx, batch_transform)
        with ctx.forward_only():
            target_logits = model(x, target_only=True)
        logits = target_logits.float().view(num_images, num_crops, -1).mean(1)  # [B, C]
        labels = labels.to(ctx.device)
        confusion += torch.bincount(labels * num_classes + logits.argmax(1), minlength=num_classes**2)
    if reduce is not None:
        confusion = reduce(confusion)
    return summarize_confusion(confusion.view(num_classes, num_classes).cpu())


def summarize_confusion(confusion: torch.Tensor) -> EvalResult:
    """Accuracy, mean-class accuracy and per-class accuracy (%) of a confusion matrix, in float64
    (as the overall accuracy: 59.0, not float32's 58.999996)."""
    totals = confusion.sum(1).double()
    per_class = torch.where(totals > 0, confusion.diag().double() / totals.clamp(min=1) * 100.0, torch.nan)
    total = int(totals.sum())
    acc = 100.0 * float(confusion.diag().sum()) / total if total else float("nan")
    present = per_class[totals > 0]
    mean_class = float(present.mean()) if present.numel() else float("nan")
    return EvalResult(acc, mean_class, per_class.tolist(), confusion)


@torch.no_grad()
def observe_pass(
    model: nn.Module,
    loader: Iterable,
    method: Method,
    ctx: StepContext,
    *,
    batch_transform: BatchTransform | None = None,
    on_batch: BatchHook | None = None,
) -> None:
    """Show every batch of ``loader`` to ``method.observe`` in eval mode (Ada-DF: spec section 2)
    and to ``on_batch`` (per-sample scores)."""
    model.eval()
    for images, labels in _batches(loader, ctx, "class distributions"):
        x, y, num_images, _ = prepare_batch(images, labels, ctx, batch_transform)
        with ctx.forward_only():
            outputs = model(x)
        method.observe(outputs, y)
        if on_batch is not None:
            on_batch(outputs, y, num_images)
