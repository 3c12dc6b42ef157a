"""Loading weights into :class:`AdaDF`: pretrained ResNet files, reference Ada-DF checkpoints and
adadf checkpoints (spec sections 1 and 6).

Every loader is strict: each of our parameters/buffers must be filled and each tensor of the file must
be used (the pretrained fc is checked, then dropped), otherwise a one-line :class:`UserError` names
the file and the offending keys. The only tolerated gap is a missing BatchNorm
``num_batches_tracked`` (old files lack it; torch's own strict load fills it too).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from adadf.errors import UserError
from adadf.torchfile import describe, listed, read_torch_file
from adadf.models.adadf import BRANCH_LAYERS, TRUNK_LAYERS, AdaDF

log = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_BN_COUNTER = "num_batches_tracked"


# ----------------------------------------------------------------------------------------- helpers
def _shape(t: object) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _strip_prefixes(state: Mapping[str, object]) -> dict[str, object]:
    """Drop leading ``module.`` / ``_orig_mod.`` (in any nesting) from every key."""
    out: dict[str, object] = {}
    for key, value in state.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _pick(obj: Mapping, *keys: str) -> Mapping:
    """The first ``obj[key]`` that is a mapping, else ``obj`` itself (a bare state dict)."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, Mapping):
            return value
    return obj


def _raise_mismatch(path: Path, what: str, missing: list[str], unexpected: list[str],
                    wrong: list[str]) -> None:
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys [{listed(missing)}]")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys [{listed(unexpected)}]")
    if wrong:
        parts.append(f"{len(wrong)} wrong shapes [{listed(wrong)}]")
    raise UserError(f"{path}: expected {what}; " + "; ".join(parts))


def _compare(expected: Mapping[str, torch.Tensor], given: Mapping[str, object]
             ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) keys of ``given`` against ``expected``.

    A missing ``num_batches_tracked`` is tolerated.
    """
    missing = [k for k in expected if k not in given and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in given if k not in expected]
    wrong = [f"{k} {_shape(given[k])} vs {tuple(expected[k].shape)}" for k in expected
             if k in given and _shape(given[k]) != tuple(expected[k].shape)]
    return missing, unexpected, wrong


def _fill_bn_counters(expected: Mapping[str, torch.Tensor], given: dict[str, object]) -> int:
    """Add ``num_batches_tracked = 0`` where the file has none; returns how many were added."""
    added = 0
    for key, ref in expected.items():
        if key.endswith(_BN_COUNTER) and key not in given:
            given[key] = torch.zeros_like(ref)
            added += 1
    return added


def _check_num_classes(model: AdaDF, path: Path, fc_weight: object) -> None:
    shape = _shape(fc_weight)
    if shape is not None and len(shape) == 2 and shape[0] != model.num_classes:
        raise UserError(
            f"{path}: checkpoint has {shape[0]} classes but the model has {model.num_classes} "
            f"(dataset.num_classes); expected a checkpoint trained on the same classes"
        )


def _class_distributions(model: AdaDF, path: Path, value: object) -> torch.Tensor | None:
    """The checkpoint's LD matrix as a float32 CPU tensor [C, C], or None when absent."""
    if value is None:
        return None
    try:
        ld = torch.as_tensor(value).detach().to(device="cpu", dtype=torch.float32).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: class_distributions is not a tensor ({describe(err)})") from None
    c = model.num_classes
    if tuple(ld.shape) != (c, c):
        raise UserError(f"{path}: class_distributions has shape {tuple(ld.shape)}, expected ({c}, {c})")
    return ld


# ------------------------------------------------------------------------------------- file access
BACKBONE_OPT_IN = "backbone.allow_pickle=true"


def load_state_file(path: str | Path, allow_pickle: bool = False, opt_in: str = BACKBONE_OPT_IN) -> dict:
    """A checkpoint from elsewhere (pretrained backbone, Ada-DF or adadf file), onto the CPU with
    ``weights_only=True``; one that needs full unpickling only with ``allow_pickle``, else refused
    naming ``opt_in`` (see :mod:`adadf.torchfile`). Failures are one-line UserErrors."""
    return read_torch_file(path, allow_pickle=allow_pickle, opt_in=opt_in)


# --------------------------------------------------------------------------- pretrained ResNet file
def load_pretrained_backbone(model: AdaDF, path: str | Path) -> None:
    """Load a pretrained ResNet file into the trunk and both branches (spec section 1).

    Accepts ``{'state_dict': <resnet state dict>}`` (the MS-Celeb-1M ResNet-18 format), ``{'model':
    ...}`` or a bare state dict; ``module.`` / ``_orig_mod.`` prefixes are stripped. Strict: every
    ResNet key must be present with our shape and nothing else may be in the file. The file's fc
    (usually 1000 classes) is checked (input width F) but not used: both branches keep their fresh,
    identical fc. Result: trunk = file, layer2..4 of both branches = file, fc_1 == fc_2.
    """
    path = Path(path).expanduser()
    _load_backbone_state(model, load_state_file(path), path)


def _load_backbone_state(model: AdaDF, obj: Mapping, path: Path) -> None:
    state = _strip_prefixes(_pick(obj, "state_dict", "model"))
    trunk_ref = model.trunk.state_dict()  # keys already in ResNet naming: conv1.weight, layer1.0...
    branch_ref = {k: v for k, v in model.aux_branch.state_dict().items() if not k.startswith("fc.")}
    expected = {**trunk_ref, **branch_ref}
    resnet_fc = {"fc.weight": None, "fc.bias": None}
    missing, unexpected, wrong = _compare(expected, {k: v for k, v in state.items() if k not in resnet_fc})
    missing += [k for k in resnet_fc if k not in state]
    fc_w, fc_b = _shape(state.get("fc.weight")), _shape(state.get("fc.bias"))
    if fc_w is not None and (len(fc_w) != 2 or fc_w[1] != model.num_features):
        wrong.append(f"fc.weight {fc_w} vs (K, {model.num_features})")
    if fc_w is not None and fc_b is not None and fc_b != fc_w[:1]:
        wrong.append(f"fc.bias {fc_b} vs ({fc_w[0]},)")
    _raise_mismatch(path, f"a {model.backbone} state dict (with fc)", missing, unexpected, wrong)

    trunk_state = {k: state[k] for k in trunk_ref if k in state}
    branch_state = {k: state[k] for k in branch_ref if k in state}
    filled = _fill_bn_counters(trunk_ref, trunk_state) + _fill_bn_counters(branch_ref, branch_state)
    model.trunk.load_state_dict(trunk_state, strict=True)
    for branch in model.branches:
        own_fc = {f"fc.{k}": v for k, v in branch.fc.state_dict().items()}
        branch.load_state_dict({**branch_state, **own_fc}, strict=True)
    log.info(
        "Loaded pretrained %s from %s: %d tensors into the trunk and both branches; file fc (%d classes) "
        "not used, fresh fc %d -> %d%s",
        model.backbone, path, len(trunk_state) + len(branch_state) - filled, fc_w[0],
        model.num_features, model.num_classes,
        f"; {filled} missing num_batches_tracked set to 0" if filled else "",
    )


# --------------------------------------------------------------------- reference Ada-DF checkpoint
# Naming of the original implementation (its model is built from a timm resnet18 as
#   feature  = Sequential(conv1, bn1, act1, maxpool, layer1)           -> feature.0|1|4.*
#   branch_k = Sequential(layer2, layer3, layer4, global_pool, fc)     -> branch_k.0|1|2|4.*
#   branch_k_feature = Sequential(layer2, layer3, layer4, global_pool) -> branch_k_feature.0|1|2.*
#   branch_k_classifier = fc                                           -> branch_k_classifier.weight|bias
#   alpha_k = Sequential(Linear(512, 1), Sigmoid())                    -> alpha_k.0.weight|bias
# and branch_2 is a deep copy of branch_1), so a state dict names each branch tensor twice.
_BRANCH_NAME = {"1": "aux", "2": "target"}
_REFERENCE_PATTERNS: tuple[tuple[re.Pattern, object], ...] = (
    (re.compile(r"feature\.(\d+)\.(.+)"),
     lambda m: f"trunk.{TRUNK_LAYERS[int(m[1])]}.{m[2]}" if int(m[1]) < len(TRUNK_LAYERS) else None),
    (re.compile(r"branch_([12])(?:_feature)?\.(\d+)\.(.+)"),
     lambda m: (f"{_BRANCH_NAME[m[1]]}_branch.{BRANCH_LAYERS[int(m[2])]}.{m[3]}"
                if int(m[2]) < len(BRANCH_LAYERS) else None)),
    (re.compile(r"branch_([12])_classifier\.(.+)"), lambda m: f"{_BRANCH_NAME[m[1]]}_branch.fc.{m[2]}"),
    (re.compile(r"alpha_([12])\.0\.(.+)"), lambda m: f"{_BRANCH_NAME[m[1]]}_attention.{m[2]}"),
)


def reference_key_to_adadf(key: str) -> str | None:
    """Our parameter name for a reference state-dict key (None when it follows no known pattern).

    ``feature.0.weight`` -> ``trunk.conv1.weight``; ``feature.4.0.conv1.weight`` ->
    ``trunk.layer1.0.conv1.weight``; ``branch_1.0.0.conv1.weight`` and its alias
    ``branch_1_feature.0.0.conv1.weight`` -> ``aux_branch.layer2.0.conv1.weight``;
    ``branch_1.4.weight`` and ``branch_1_classifier.weight`` -> ``aux_branch.fc.weight``;
    ``branch_2*`` likewise -> ``target_branch.*``; ``alpha_1.0.weight`` -> ``aux_attention.weight``,
    ``alpha_2.0.*`` -> ``target_attention.*``.
    """
    for pattern, convert in _REFERENCE_PATTERNS:
        match = pattern.fullmatch(key)
        if match:
            return convert(match)
    return None


def is_reference_state(state: Mapping[str, object]) -> bool:
    """True for a state dict in the original Ada-DF naming (keys ``feature.*`` / ``branch_1*``)."""
    return any(str(k).startswith(("feature.", "branch_1")) for k in state)


def load_reference_checkpoint(model: AdaDF, path: str | Path) -> torch.Tensor | None:
    """Import an original Ada-DF ``checkpoint.pth.tar`` / ``model_best.pth.tar`` (spec section 6).

    The file is ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer', 'class_distributions'}``
    (a bare state dict is accepted too). Aliases (``branch_k_feature.*``, ``branch_k_classifier.*``)
    are optional and must agree with ``branch_k.*``. Strict: every parameter/buffer of ``model`` must
    be filled; a class-count mismatch names both counts. Returns ``class_distributions`` as a float32
    tensor [C, C], or None when the file has none.
    """
    path = Path(path).expanduser()
    return _load_reference_state(model, load_state_file(path), path)


def _load_reference_state(model: AdaDF, obj: Mapping, path: Path) -> torch.Tensor | None:
    state = _strip_prefixes(_pick(obj, "state_dict"))
    ours = model.state_dict()
    mapped: dict[str, object] = {}
    source: dict[str, str] = {}  # our key -> first reference key seen for it
    unknown: list[str] = []
    for key, value in state.items():
        target = reference_key_to_adadf(key)
        if target is None or target not in ours:
            unknown.append(key)
            continue
        if target in mapped:  # an alias: must hold the same tensor
            first = mapped[target]
            same = (isinstance(value, torch.Tensor) and isinstance(first, torch.Tensor)
                    and value.shape == first.shape and torch.equal(value, first))
            if not same:
                raise UserError(f"{path}: aliases {source[target]} and {key} hold different tensors; "
                                f"expected an unmodified Ada-DF checkpoint")
            continue
        mapped[target], source[target] = value, key
    _check_num_classes(model, path, mapped.get("aux_branch.fc.weight", mapped.get("target_branch.fc.weight")))
    missing, _, wrong = _compare(ours, mapped)
    missing = [_ours_to_reference_hint(k) for k in missing]
    _raise_mismatch(path, f"an Ada-DF {model.backbone} checkpoint", missing, unknown, wrong)
    filled = _fill_bn_counters(ours, mapped)
    model.load_state_dict(mapped, strict=True)
    ld = _class_distributions(model, path, obj.get("class_distributions") if "state_dict" in obj else None)
    log.info("Imported reference Ada-DF checkpoint %s (%d tensors from %d keys incl. aliases%s%s)",
             path, len(mapped) - filled, len(state),
             f", epoch {obj['epoch']}" if "epoch" in obj else "",
             ", with class distributions" if ld is not None else "")
    return ld


def _ours_to_reference_hint(key: str) -> str:
    """Name a key missing from a reference file in the reference's own naming (for error messages)."""
    head, _, rest = key.partition(".")
    if head == "trunk":
        layer, _, tail = rest.partition(".")
        return f"feature.{TRUNK_LAYERS.index(layer)}.{tail}"
    if head in ("aux_branch", "target_branch"):
        k = "1" if head == "aux_branch" else "2"
        layer, _, tail = rest.partition(".")
        return f"branch_{k}.{BRANCH_LAYERS.index(layer)}.{tail}"
    if head in ("aux_attention", "target_attention"):
        return f"alpha_{'1' if head == 'aux_attention' else '2'}.0.{rest}"
    return key


# ------------------------------------------------------------------------------ adadf checkpoints
def is_adadf_checkpoint(obj: Mapping) -> bool:
    """True for our own checkpoints: ``{'model': <AdaDF state dict>, ...}``, or a comparison method's
    ``{'model': <body.* + head.* state dict>, 'format': 'adadf-checkpoint-*', ...}``."""
    model_state = obj.get("model")
    if not isinstance(model_state, Mapping):
        return False
    keys = _strip_prefixes(model_state)
    return any(k.startswith("trunk.") for k in keys) or (
        str(obj.get("format", "")).startswith("adadf-checkpoint") and any(k.startswith("body.") for k in keys))


def _load_adadf_state(model: AdaDF, obj: Mapping, path: Path) -> torch.Tensor | None:
    state = _strip_prefixes(obj["model"])
    ours = model.state_dict()
    _check_num_classes(model, path, state.get("aux_branch.fc.weight"))
    _raise_mismatch(path, f"an adadf {model.backbone} checkpoint", *_compare(ours, state))
    _fill_bn_counters(ours, state)
    model.load_state_dict(state, strict=True)
    method_state = obj.get("method")
    ld_value = method_state.get("class_dist") if isinstance(method_state, Mapping) else None
    ld = _class_distributions(model, path, obj.get("class_distributions", ld_value))
    log.info("Loaded adadf checkpoint %s (%d tensors%s)", path, len(state),
             ", with class distributions" if ld is not None else "")
    return ld


# ------------------------------------------------------------------------------------------ build
def build_model(num_classes: int, name: str = "resnet18", checkpoint: str | None = None,
                drop_rate: float = 0.0, allow_pickle: bool = False) -> AdaDF:
    """Build an :class:`AdaDF` and optionally load weights (the ``backbone`` group's ``_target_``).

    ``checkpoint`` (``~`` expanded, made absolute) is auto-detected:
      - adadf checkpoint ``{'model': <AdaDF state dict>, ...}``: loaded as is, with its class
        distributions (``method.class_dist`` as the trainer saves them, or a top-level
        ``class_distributions``);
      - reference Ada-DF checkpoint (keys ``feature.*`` / ``branch_1*``): :func:`load_reference_checkpoint`;
      - anything else: a pretrained ResNet, :func:`load_pretrained_backbone`.
    Class distributions found in the file go to ``model.imported_state['class_dist']``, for the
    method to start from (``Method.start_from``). ``allow_pickle``: load a file that needs full
    unpickling (a third-party file the user trusts: it runs any code the file contains).
    """
    model = AdaDF(num_classes, backbone=name, drop_rate=drop_rate)
    if checkpoint is None or str(checkpoint).strip() == "":
        return model
    path = Path(checkpoint).expanduser().resolve()
    model.imported_state["class_dist"] = load_weights(model, load_state_file(path, allow_pickle), path)
    return model


def load_weights(model: AdaDF, obj: Mapping, path: Path) -> torch.Tensor | None:
    """Load ``obj``, the already-read contents of checkpoint file ``path`` (format auto-detected as
    in :func:`build_model`), into ``model``; returns its class distributions, if it has any."""
    if is_adadf_checkpoint(obj):
        return _load_adadf_state(model, obj, path)
    if is_reference_state(_strip_prefixes(_pick(obj, "state_dict"))):
        return _load_reference_state(model, obj, path)
    _load_backbone_state(model, obj, path)
    return None
