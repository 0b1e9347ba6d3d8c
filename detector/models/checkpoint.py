"""Reading checkpoints (ours and the official YOLOX ``.pth``) safely and loading them strictly.

A checkpoint is untrusted input: it is read with ``torch.load(..., weights_only=True)``, which
refuses arbitrary pickled objects. Our trainer writes a dict with ``"model"`` (the weights to use
for inference, EMA when EMA is on), optionally ``"train_model"``, ``"optimizer"``, ``"epoch"``, and
``"meta"`` (:func:`checkpoint_meta`: ``model_name``, ``num_classes``, ``class_names``,
``input_size``; older checkpoints also carry a ``preprocess`` dict that repeats the input size).
The official YOLOX files are ``{"model": state_dict, ...}`` without ``"meta"``.

:func:`checkpoint_spec` is the one place that turns a checkpoint's meta (plus the optional input
size and model name a user gives) into what the checkpoint runs as, a :class:`CheckpointSpec`;
:func:`load_inference_model` reads a file, makes its spec and loads the model in one step. Every
consumer (``detector eval``/``predict``, the ONNX and torch2trt exports, the serving runtime's
PyTorch backend) goes through them.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detector.core.defaults import check_input_size
from detector.core.preprocess import PreprocessSpec
from detector.models.build import build_model
from detector.models.config import get_model_config, model_names
from detector.models.yolox import YOLOX

log = logging.getLogger(__name__)

CLASS_PRED_PREFIX = "head.cls_preds."


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model; names the file."""


def _numpy_safe_globals() -> list[Any]:
    """NumPy scalars and dtypes (YOLOX's trainer stores ``best_ap`` as a NumPy float)."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *dtypes]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file into a dict with ``weights_only=True`` (on the CPU).

    A bare state dict (tensors only) is returned as ``{"model": state_dict}``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, holds objects that a
            weights-only load refuses, or is not a checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        with safe(_numpy_safe_globals()) if safe else nullcontext():
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused by the weights-only loader (it holds more than tensors and plain "
            f"containers, or is not a PyTorch file): {first}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere in the unpickler
        size = path.stat().st_size
        what = "an empty file" if size == 0 else f"{size:,} bytes"
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({what}), not a readable PyTorch file"
        ) from exc
    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        return {"model": dict(data)}
    if not isinstance(data, Mapping) or "model" not in data:
        what = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a checkpoint (expected a dict with 'model', got {what})"
        )
    return dict(data)


def _state_dict(checkpoint: Mapping[str, Any], key: str, path: str | Path) -> dict[str, Tensor]:
    if key not in checkpoint:
        raise CheckpointError(f"{path}: no '{key}' entry (has: {', '.join(map(str, checkpoint))})")
    state = checkpoint[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _checkpoint_classes(state: Mapping[str, Tensor]) -> int | None:
    weight = state.get(CLASS_PRED_PREFIX + "0.weight")
    return int(weight.shape[0]) if weight is not None else None


def _describe(keys: list[str], limit: int = 2) -> str:
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def fitting_models(state: Mapping[str, Tensor]) -> list[str]:
    """Names of the model sizes whose state dicts have exactly the keys and shapes of ``state``
    (class predictions aside: any number of classes fits).

    Each size is built on the ``meta`` device (shapes only, no memory, about 2 s for all seven),
    so this is cheap enough for an error message.
    """
    classes = _checkpoint_classes(state) or 80
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for name in model_names():
        with torch.device("meta"):
            own = build_model(name, classes).state_dict()
        if theirs == {k: tuple(v.shape) for k, v in own.items()}:
            fits.append(name)
    return fits


def check_model_name(meta: Mapping[str, Any], name: str, source: str | Path) -> None:
    """Our checkpoints record their model: loading one into another size is an error."""
    recorded = meta.get("model_name")
    if recorded and str(recorded) != name:
        raise CheckpointError(
            f"{source}: checkpoint is {recorded}, not {name} (pass --model {recorded}, or "
            f"start {name} from an official {name} .pth or from scratch)"
        )


def load_state(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model`` strictly, except for the class predictions when the number
    of classes differs (those keep their initialisation, with a warning). ``source`` names the
    file in errors."""
    own = model.state_dict()
    full = dict(state)
    state = dict(full)
    theirs, ours = _checkpoint_classes(state), _checkpoint_classes(own)
    skipped: set[str] = set()
    if theirs is not None and ours is not None and theirs != ours:
        state = {k: v for k, v in state.items() if not k.startswith(CLASS_PRED_PREFIX)}
        skipped = {k for k in own if k.startswith(CLASS_PRED_PREFIX)}
    missing = sorted(k for k in own if k not in state and k not in skipped)
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
    if wrong:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]
        problems.append(f"{len(wrong)} shape mismatches (checkpoint vs model): {_describe(shapes)}")
    if problems:
        name = getattr(model, "name", type(model).__name__)
        fits = [n for n in fitting_models(full) if n != name]
        if fits:
            hint = f"; its weights fit {' or '.join(fits)} (pass --model {fits[0]})"
        else:
            hint = "; its weights fit none of " + ", ".join(model_names())
        raise CheckpointError(
            f"{source}: does not fit model '{name}' (" + "; ".join(problems) + ")" + hint
        )
    if skipped:
        log.warning(
            "%s: checkpoint has %d classes, the model %d: loaded everything except the class "
            "predictions (%s*), which keep their initialisation",
            source,
            theirs,
            ours,
            CLASS_PRED_PREFIX,
        )
    model.load_state_dict(state, strict=not skipped)


def load_checkpoint(model: nn.Module, path: str | Path, key: str = "model") -> dict[str, Any]:
    """Load the weights under ``key`` of checkpoint ``path`` into ``model`` (strictly; see
    :func:`load_state` for a different number of classes). Returns the checkpoint's ``"meta"``
    (``{}`` for official YOLOX files)."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get("meta")
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    check_model_name(meta, getattr(model, "name", ""), path)
    load_state(model, _state_dict(checkpoint, key, path), path)
    return meta


@dataclass(frozen=True)
class CheckpointSpec:
    """What a checkpoint runs as, validated: made by :func:`checkpoint_spec` only.

    Attributes:
        model_name: the architecture (``yolox_nano`` ...).
        num_classes: ``C``, the class count of the model to build.
        class_names: ``C`` names; ``"0" .. "C-1"`` when the checkpoint has none (official files).
        input_size: ``(height, width)`` of the network input, multiples of
            :data:`detector.core.defaults.INPUT_STRIDE`.
    """

    model_name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_size: tuple[int, int]

    @property
    def preprocess(self) -> PreprocessSpec:
        """How an image becomes this model's ``[3, H, W]`` input (letterbox to the input size)."""
        return PreprocessSpec(*self.input_size)


def checkpoint_meta(
    model_name: str, class_names: Sequence[str], input_size: int | Sequence[int]
) -> dict[str, Any]:
    """The ``"meta"`` entry a checkpoint is written with: the model, its classes and the input
    size (stored once, as ``[height, width]``), what :func:`checkpoint_spec` reads back."""
    height, width = check_input_size(input_size, source="checkpoint meta")
    return {
        "model_name": str(model_name),
        "num_classes": len(class_names),
        "class_names": [str(n) for n in class_names],
        "input_size": [height, width],
    }


def _model_name(meta: Mapping[str, Any], model_name: str | None, source: str | Path) -> str:
    """The architecture: ``model_name`` when given (it must agree with the meta's), else the
    one the meta records; official files record none, so then it is required."""
    if model_name:
        check_model_name(meta, str(model_name), source)
    name = model_name or meta.get("model_name")
    if not name:
        raise CheckpointError(
            f"{source}: the checkpoint does not record its model (an official YOLOX .pth?); "
            "pass the model name (e.g. --model yolox_s)"
        )
    return str(name)


def _recorded_size(meta: Mapping[str, Any]) -> Any:
    """The input size the meta records: ``input_size``, else (checkpoints that only kept the
    copy inside it) ``preprocess``'s height and width; ``None`` when it records none."""
    if meta.get("input_size"):
        return meta["input_size"]
    preprocess = meta.get("preprocess")
    if isinstance(preprocess, Mapping) and "input_height" in preprocess:
        return preprocess["input_height"], preprocess.get("input_width", preprocess["input_height"])
    return None


def _input_size(
    meta: Mapping[str, Any], imgsz: int | Sequence[int] | None, name: str, source: str | Path
) -> tuple[int, int]:
    """``imgsz`` when given, else the meta's input size, else the model's default; checked."""
    try:
        if imgsz is not None:
            return check_input_size(imgsz, source=f"{source}: imgsz")
        recorded = _recorded_size(meta)
        if recorded is not None:
            return check_input_size(recorded, source=f"{source}: meta input_size")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    return check_input_size(get_model_config(name).input_size, source=f"model {name}")


def checkpoint_spec(
    meta: Mapping[str, Any],
    imgsz: int | Sequence[int] | None = None,
    model_name: str | None = None,
    *,
    weights_classes: int | None = None,
    source: str | Path = "checkpoint",
) -> CheckpointSpec:
    """What a checkpoint runs as, from its ``meta`` and what the user asked for.

    Args:
        meta: the checkpoint's ``"meta"`` (``{}`` for official YOLOX files).
        imgsz: input size ``N`` or ``(H, W)``; default the meta's, else the model's default.
        model_name: the architecture; required when the meta records none (official files),
            and must agree with it otherwise.
        weights_classes: the class count of the weights' class predictions, used when the meta
            records none.
        source: what errors name (the file).

    Raises:
        CheckpointError: no model name, an unknown class count, class names that do not fit
            it, or an input size that is not positive multiples of 32.
    """
    name = _model_name(meta, model_name, source)
    num_classes = meta.get("num_classes") or weights_classes
    if not num_classes:
        raise CheckpointError(f"{source}: cannot tell the number of classes")
    num_classes = int(num_classes)
    names = meta.get("class_names") or [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(
            f"{source}: meta lists {len(names)} class names for a {num_classes}-class model"
        )
    return CheckpointSpec(
        model_name=name,
        num_classes=num_classes,
        class_names=tuple(str(n) for n in names),
        input_size=_input_size(meta, imgsz, name, source),
    )


def _read_model_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(meta, inference state dict)`` of checkpoint ``path``."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint.get("meta")
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    return meta, _state_dict(checkpoint, "model", path)


def load_inference_model(
    path: str | Path, model_name: str | None = None, imgsz: int | Sequence[int] | None = None
) -> tuple[YOLOX, CheckpointSpec]:
    """The checkpoint-to-model step of every inference path: read ``path``, make its
    :func:`checkpoint_spec`, build that model and load its inference weights strictly.

    Args:
        path: our checkpoint (its ``meta`` names the model) or an official YOLOX ``.pth``.
        model_name: the architecture; required for official files.
        imgsz: input size ``N`` or ``(H, W)`` (default: the checkpoint's).

    Returns:
        ``(model in evaluation mode, its spec)``.

    Raises:
        CheckpointError: the file is unreadable or does not fit, or the spec is invalid.
    """
    meta, state = _read_model_checkpoint(path)
    spec = checkpoint_spec(
        meta, imgsz, model_name, weights_classes=_checkpoint_classes(state), source=path
    )
    model = build_model(spec.model_name, spec.num_classes)
    load_state(model, state, path)
    return model.eval(), spec


def model_from_checkpoint(
    path: str | Path, name: str | None = None, num_classes: int | None = None
) -> tuple[YOLOX, dict[str, Any]]:
    """Build the model a checkpoint describes and load its inference weights.

    For inference prefer :func:`load_inference_model`, which also returns the validated class
    names and input size; this form can build another class count (fine-tuning).

    Args:
        path: our checkpoint (its ``meta`` names the model) or an official YOLOX ``.pth``.
        name: model name; required for official files, overrides ``meta`` when given.
        num_classes: defaults to ``meta["num_classes"]``, else the checkpoint's class predictions.

    Returns:
        ``(model in evaluation mode, meta)``.
    """
    meta, state = _read_model_checkpoint(path)
    name = _model_name(meta, name, path)
    if num_classes is None:
        num_classes = meta.get("num_classes") or _checkpoint_classes(state)
    if num_classes is None:
        raise CheckpointError(f"{path}: cannot tell the number of classes; pass num_classes")
    model = build_model(name, int(num_classes))
    load_state(model, state, path)
    return model.eval(), meta
