"""The method's per-sample scores as noise and ambiguity detectors: per training image, every score
``Method.sample_scores`` returns (the loss of the branch trained on the labels, the attention where
the network has one, the method's own: SCN's importance, RUL's uncertainty, EAC's consistency), from
a pass the method runs anyway (no extra pass). A trainer callback (``adadf.tracking.callbacks``):
``Trainer.fit`` knows nothing of it.

- Where the scores come from: Ada-DF's class-distribution pass (``fusion.ld_pass=augmented``: the
  training loader as is, eval mode; ``clean``: every image once with the test transform), else
  the training batches themselves (``online``, ``method=ce``: train mode, the step's own
  forward). Batch ``k`` of a training-loader pass holds samples ``data.train_order()[k*B:(k+1)*B]``;
  under DDP each rank fills its shard and the arrays are summed across ranks.
- The set of scores is fixed for the run by the first recorded batch (what ``sample_scores``
  returns for it): the same on every rank, whose first passes run the same method on the same
  network, so the all-reduce sums arrays of one shape. A score a later batch lacks is empty there.
  ``trainer.suspects_by`` must be one of them: refused in one line at that first batch.
- The scores stay on the training device during the pass (no sync per batch) and come to the CPU
  once, at the end of the epoch.
- Each epoch, on the training thread, per score (label noise only; metrics.csv and W&B): AUROC %
  of finding the flipped labels by a low value for the scores in ``Method.low_is_suspect``, by a
  high one for the others: ``noise_auroc`` for the attention, ``noise_auroc_<score>`` for the rest
  (``noise_auroc_aux_loss``: the small-loss score). Every ``trainer.plots_every`` epochs and after
  the last, on the writer's thread (rank 0): ``scores/train_attention_eNNN.csv`` and its copy
  ``train_attention.csv``, the latest (index, path, label, label_name, one column per score:
  attention, aux_loss, then the method's own, prediction, prediction_name; with label noise also
  flipped, clean_label, clean_label_name), and the attention histogram (a density over [0, 1], the
  epoch's noise AUROC in its title; none for a method that does not train the attention:
  ``Method.trains_attention``, or has none).
- After the last epoch: the images most likely mislabelled or ambiguous (ranked by
  ``trainer.suspects_by``) as a PNG grid and a W&B table.

A sample the pass did not deliver this epoch (a dropped last partial batch) has empty scores.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from adadf.config.schema import LDPass
from adadf.data.bundle import DataBundle
from adadf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from adadf.errors import UserError
from adadf.methods.base import Method, Outputs, Reducer
from adadf.models.outputs import named
from adadf.metrics import auroc
from adadf.tracking import plots
from adadf.tracking.callbacks import CLASS_DIST_PASS, TRAIN_PASS, BatchHook, Callback
from adadf.tracking.files import write_text_atomic
from adadf.tracking.loggers import Logger
from adadf.tracking.writer import BackgroundWriter

log = logging.getLogger(__name__)

ATTENTION_CSV = "train_attention.csv"
SCORES_DIR = "scores"  # every written epoch's train_attention.csv, as train_attention_eNNN.csv
FLIPPED_CSV = "flipped_labels.csv"
SUSPECTS_CSV = "suspects.csv"
PLOTS_DIR = "plots"
SCORES = ("attention", "aux_loss")  # the base method's scores, first in the columns in this order
NOISE_AUROC = "noise_auroc"  # the attention's AUROC; noise_auroc_<score> for every other score


def score_order(names: Sequence[str]) -> list[str]:
    """``SCORES`` first (those present), then the method's own in the order it returns them."""
    return [n for n in SCORES if n in names] + [n for n in names if n not in SCORES]


def auroc_key(score: str) -> str:
    """The metrics.csv / summary.json key of ``score``'s noise AUROC."""
    return NOISE_AUROC if score == "attention" else f"{NOISE_AUROC}_{score}"


@dataclass
class SampleScores:
    """Per training sample (index = dataset index), NaN / -1 where the pass did not deliver it."""

    values: dict[str, np.ndarray]  # score -> [N] float64 (aux_loss: CE of the label-trained branch)
    prediction: np.ndarray  # [N] int64: the target branch's class (-1: not seen)
    low_is_suspect: frozenset[str] = frozenset({"attention"})  # Method.low_is_suspect

    @property
    def attention(self) -> np.ndarray:  # [N], all NaN for a network without attention
        return self.values.get("attention", np.full(len(self.prediction), np.nan))

    @property
    def aux_loss(self) -> np.ndarray:  # [N]
        return self.values["aux_loss"]

    def suspicion(self, by: str) -> np.ndarray:
        """Higher = more likely mislabelled or ambiguous: a low value of a score in
        ``low_is_suspect`` (the attention), a high value of the others (the loss)."""
        return -self.values[by] if by in self.low_is_suspect else self.values[by]


def noise_aurocs(scores: SampleScores, flipped: np.ndarray) -> dict[str, float]:
    """AUROC (%) of each score, oriented by ``suspicion``, for finding the flipped labels:
    ``noise_auroc`` (attention), ``noise_auroc_<score>`` (the others)."""
    return {auroc_key(name): auroc(scores.suspicion(name), flipped) for name in scores.values}


class SampleRecorder:
    """Fills per-sample arrays on the training device from the batches of one pass (a ``BatchHook``).

    The scores (``names``) are those ``method.sample_scores`` returns for the first batch, kept for
    the run; ``needed`` (``trainer.suspects_by``) must be among them (else one line, then)."""

    def __init__(self, num_samples: int, method: Method, device: torch.device, needed: str | None = None) -> None:
        self.num_samples = num_samples
        self.method = method
        self.device = device
        self.needed = needed
        self.names: list[str] | None = None  # fixed by the first batch
        declared = method.declared_scores()
        if needed is not None and declared is not None and needed not in declared:  # before any training
            self._refuse(score_order(declared))
        self._order: Callable[[], Sequence[int]] | None = None
        self.reset()

    def reset(self) -> None:
        # rows: one per score, prediction + 1, seen (0/1); float64 so one all-reduce sums all.
        rows = 2 + (len(self.names) if self.names is not None else 0)
        self.values = torch.zeros(rows, self.num_samples, dtype=torch.float64, device=self.device)
        self._index: torch.Tensor | None = None
        self._position = 0

    def _fix_names(self, names: Sequence[str]) -> None:
        """The run's scores, from the first batch; the one ``trainer.suspects_by`` ranks by must be there."""
        self.names = score_order(names)
        if self.needed is not None and self.needed not in self.names:
            self._refuse(self.names)
        # nothing recorded yet: the arrays again, one row per score added (this pass's index stays)
        self.values = torch.zeros(len(self.names) + 2, self.num_samples, dtype=torch.float64, device=self.device)

    def _refuse(self, names: Sequence[str]) -> None:
        raise UserError(f"trainer.suspects_by={self.needed}: {type(self.method).__name__} has no such "
                        f"per-sample score (it has: {', '.join(names)})")

    def start(self, order: Callable[[], Sequence[int]]) -> SampleRecorder:
        """A pass begins; ``order()`` (asked at its first batch, once the sampler has drawn) gives
        the sample index of each delivered image in order."""
        self._order, self._index, self._position = order, None, 0
        return self

    @torch.no_grad()
    def __call__(self, outputs: Outputs, labels: torch.Tensor, num_images: int) -> None:
        if self._index is None:
            self._index = torch.as_tensor(list(self._order()), dtype=torch.long).to(self.device)
        index = self._index[self._position:self._position + num_images]  # [B]
        self._position += num_images
        scores = self.method.sample_scores(outputs, labels)  # [N] (or [B]) each, N = B * crops
        if self.names is None:
            self._fix_names(list(scores))
        target = named(outputs).logits.detach().float()
        prediction = target.view(num_images, -1, target.shape[1]).mean(1).argmax(1)  # [B]
        missing = torch.full((num_images,), torch.nan, device=target.device)
        per_image = [scores[n].float().reshape(num_images, -1).mean(1) if n in scores else missing
                     for n in self.names]  # [B] each: a crop's scores averaged over its image's crops
        rows = torch.stack([*per_image, prediction.float() + 1, torch.ones_like(prediction, dtype=torch.float)])
        self.values.index_copy_(1, index, rows.double())

    def finish(self, reduce: Reducer | None = None) -> SampleScores:
        values = reduce(self.values) if reduce is not None else self.values
        values = values.cpu().numpy()  # one transfer per epoch
        seen = values[-1] > 0
        scores = SampleScores(
            values={name: np.where(seen, values[k], np.nan) for k, name in enumerate(self.names or ())},
            prediction=np.where(seen, values[-2] - 1, -1).astype(np.int64),
            low_is_suspect=frozenset(self.method.low_is_suspect),
        )
        self.reset()
        return scores


def class_name_column(names: Sequence[str], labels: Sequence[int]) -> list[str]:
    """The class name of each 0-based label; empty where there is none (-1: not seen)."""
    return [names[label] if label >= 0 else "" for label in labels]


def sequential_order(loader: Any) -> Callable[[], list[int]]:
    """The sample order of a non-shuffling loader (the clean pass; a rank's shard under DDP)."""
    return lambda: list(iter(loader.sampler))


def pictures_due(epoch: int, every: int, last_epoch: int) -> bool:
    """``trainer.plots_every``: the per-epoch files of every ``every``-th epoch and of the last."""
    return epoch % every == 0 or epoch >= last_epoch


class SampleDetector(Callback):
    """Owns the recorder, the per-epoch scores file and picture, and the end-of-run suspects."""

    def __init__(self, data: DataBundle, method: Method, device: torch.device, run_dir: Path, logger: Logger,
                 writer: BackgroundWriter, *, epochs: int, plots_every: int = 1, is_main: bool = True,
                 suspects_by: str = "aux_loss", suspects: int = 36) -> None:
        self.data, self.method, self.logger, self.writer, self.is_main = data, method, logger, writer, is_main
        self.run_dir = Path(run_dir)
        self.epochs, self.plots_every = epochs, plots_every
        self.suspects_by, self.suspects = suspects_by, suspects
        self.recorder = SampleRecorder(len(data.train_labels), method, device, needed=suspects_by)
        self.scores: SampleScores | None = None
        self.flipped = (None if data.clean_train_labels is None else  # [N] bool: which labels the noise changed
                        np.asarray(data.clean_train_labels) != np.asarray(data.train_labels))

    # -- passes --------------------------------------------------------------------------
    def begin_pass(self, kind: str) -> BatchHook | None:
        """The method's own class-distribution pass when it has one, else the training pass."""
        observes = self.method.observes
        if kind == CLASS_DIST_PASS and observes == LDPass.clean:
            return self.recorder.start(sequential_order(self.data.clean_train_loader))
        if kind == CLASS_DIST_PASS and observes == LDPass.augmented:
            return self.recorder.start(self.data.train_order)
        if kind == TRAIN_PASS and observes not in (LDPass.augmented, LDPass.clean):
            return self.recorder.start(self.data.train_order)
        return None

    # -- files ---------------------------------------------------------------------------
    def begin_run(self) -> None:
        """The flipped-label list (label noise only), written once and logged."""
        if not self.is_main or self.flipped is None:
            return
        import pandas as pd

        flipped = self.data.flipped()
        path = self.run_dir / FLIPPED_CSV
        frame = pd.DataFrame(flipped, columns=["index", "path", "clean", "noisy"])
        names = self.data.class_names
        frame.insert(3, "clean_name", class_name_column(names, frame["clean"]))
        frame["noisy_name"] = class_name_column(names, frame["noisy"])
        write_text_atomic(path, frame.to_csv(index=False))
        self.logger.log_file(path, "flipped-labels", "dataset")
        log.info("label noise: %d of %d training labels flipped (%s)", len(flipped), len(self.flipped), path)

    def table(self, scores: SampleScores):
        import pandas as pd

        data, names = self.data, self.data.class_names
        frame = pd.DataFrame({"index": np.arange(len(data.train_labels)), "path": data.train_paths,
                              "label": data.train_labels,
                              "label_name": class_name_column(names, data.train_labels),
                              **scores.values, "prediction": scores.prediction,
                              "prediction_name": class_name_column(names, scores.prediction)})
        if self.flipped is not None:
            frame["flipped"] = self.flipped
            frame["clean_label"] = data.clean_train_labels
            frame["clean_label_name"] = class_name_column(names, data.clean_train_labels)
        return frame

    def end_epoch(self, epoch: int, reduce: Reducer | None = None) -> dict[str, Any]:
        """Collect this epoch's scores (every rank: one transfer, one all-reduce), the AUROCs for the
        row; the files go to the writer (rank 0, when due)."""
        scores = self.scores = self.recorder.finish(reduce)
        metrics = noise_aurocs(scores, self.flipped) if self.flipped is not None else {}
        if self.is_main and pictures_due(epoch, self.plots_every, self.epochs):
            self.writer.submit(f"{ATTENTION_CSV} and the attention histogram of epoch {epoch}",
                               self._write_epoch, scores, epoch, metrics.get(NOISE_AUROC))
        return metrics

    def _write_epoch(self, scores: SampleScores, epoch: int, auroc: float | None = None) -> None:
        text = self.table(scores).to_csv(index=False)
        write_text_atomic(self.run_dir / SCORES_DIR / f"train_attention_e{epoch:03d}.csv", text)  # the history
        write_text_atomic(self.run_dir / ATTENTION_CSV, text)  # the latest
        if not self.method.trains_attention or "attention" not in scores.values:
            return  # method=ce: a frozen, untrained head says nothing; a network without one: none
        title = f"attention, epoch {epoch}"
        if auroc is not None and auroc == auroc:  # label noise (NaN: no flipped label among those scored)
            title += f" (noise AUROC {auroc:.1f}%)"
        path = plots.attention_histogram(scores.attention, self.flipped,
                                         self.run_dir / PLOTS_DIR / f"attention_e{epoch:03d}.png", title=title)
        self.logger.log_image("attention_histogram", path, epoch)

    def end_run(self, completed: bool) -> None:
        """The images a person should re-check (rank 0, a completed run): to the writer."""
        if completed and self.is_main and self.scores is not None and self.suspects > 0:
            self.writer.submit("the suspects (suspects.csv, plots/suspects.png)", self._write_suspects, self.scores)

    def _write_suspects(self, scores: SampleScores) -> None:
        """A PNG grid and a W&B table of the ``suspects`` highest ranked by ``suspects_by``."""
        frame = self.table(scores)
        frame["suspicion"] = scores.suspicion(self.suspects_by)
        top = frame.dropna(subset=["suspicion"]).sort_values("suspicion", ascending=False, kind="stable")
        top = top.head(self.suspects)
        write_text_atomic(self.run_dir / SUSPECTS_CSV, top.to_csv(index=False))
        images = [display_image(self.data, int(i)) for i in top["index"]]
        captions = [f"#{i} label {label}\npred {prediction or '?'}" + (f" (clean {clean})" if flipped else "")
                    for i, label, prediction, flipped, clean in zip(
                        top["index"], top["label_name"], top["prediction_name"],
                        top.get("flipped", [False] * len(top)), top.get("clean_label_name", top["label_name"]))]
        path = plots.image_grid(images, captions, self.run_dir / PLOTS_DIR / "suspects.png",
                                title=f"most likely mislabelled or ambiguous (by {self.suspects_by})")
        self.logger.log_image("suspects_grid", path)  # "suspects" is the table
        columns = ["image", *[c for c in top.columns if c != "suspicion"], "suspicion"]
        rows = [[image, *[row[c] for c in columns[1:]]] for image, (_, row) in zip(images, top.iterrows())]
        self.logger.log_table("suspects", columns, rows)
        log.info("%d suspects (by %s): %s", len(top), self.suspects_by, path)


def display_image(data: DataBundle, index: int) -> np.ndarray:
    """Training image ``index`` as it is evaluated, [H, W, 3] uint8 (the centre crop of ten-crop data)."""
    image = data.clean_train_loader.dataset[index][0]
    image = torch.as_tensor(image)
    if image.dim() == 4:  # [K, 3, H, W]: TenCrop's fifth crop is the centre
        image = image[min(4, image.shape[0] - 1)]
    if image.dtype != torch.uint8:  # normalised with the ImageNet statistics
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        image = ((image.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return image.permute(1, 2, 0).numpy()
