"""A fine-tuned checkpoint folder, both halves of its format: what `finetune` writes and what the
encoder, `finetune.evaluate` and a resumed run read. open_clip's ``local-dir:`` format plus ours:

    open_clip_config.json        model_cfg + preprocess_cfg (loads with open_clip's factory)
    open_clip_model.safetensors  the weights
    head.safetensors             the cosine classifier (category=auto in the service), and for a
                                 tower that ranks by its trunk the projection it classifies through
    classes.json                 class names, in head order
    training.json                version, base model (label and structured source), arguments, metrics
    resume.pt                    only while training: the state to resume from

``training.json`` is written last: its presence means the checkpoint is complete.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file as load_numpy

from lookalike.errors import LookalikeError, ModelLoadError
from lookalike.files import write_atomically
from lookalike.model_source import ModelSource

if TYPE_CHECKING:  # reading a checkpoint's head and info needs no torch (the ONNX runtime's API process)
    import torch

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
HEAD_FILE = "head.safetensors"
CLASSES_FILE = "classes.json"
INFO_FILE = "training.json"
RESUME_FILE = "resume.pt"
#: Training settings a resumed run may change: how long and how visibly it runs, not what it learns.
RESUMABLE_CHANGES = frozenset(
    {"max_minutes", "min_epochs", "progress", "precision", "eval_every", "resume_every_s", "patience", "data_on_device"}
)


class ResumeRefused(LookalikeError):
    code = "resume_refused"


def is_complete(directory: Path) -> bool:
    return (directory / INFO_FILE).is_file()


def require_checkpoint(directory: Path) -> None:
    if not (directory / CONFIG_FILE).is_file():
        raise ModelLoadError(
            f"MODEL_CHECKPOINT={directory} is not a checkpoint directory "
            f"(no {CONFIG_FILE}); point it at a folder written by `python -m finetune`"
        )
    if not is_complete(directory):  # `save_checkpoint` writes it last: its files may be of two runs
        raise ModelLoadError(
            f"MODEL_CHECKPOINT={directory} is an unfinished checkpoint (no {INFO_FILE}: its run stopped "
            "while saving it); run `python -m finetune` again"
        )


def read_info(directory: Path) -> dict[str, Any]:
    """training.json, or {} when it is missing or unreadable (an unfinished or foreign folder)."""
    try:
        return json.loads((directory / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}


def read_base_source(directory: Path) -> ModelSource | None:
    """What the checkpoint was trained from (None for checkpoints written before it was recorded)."""
    require_checkpoint(directory)
    base = read_info(directory).get("base_source")
    return ModelSource.from_dict(base) if base else None


def trained_label(directory: Path) -> str:
    """What the head's classes are: "category" or "product"."""
    return (read_info(directory).get("training") or {}).get("label", "category")


def read_classes(directory: Path) -> list[str] | None:
    try:
        return json.loads((directory / CLASSES_FILE).read_text())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ClassifierHead:
    """The cosine classifier: ``weight`` (classes, dim), its logit scale and class names; for a tower
    that ranks by its trunk (``finetune --embedding trunk``) the ``projection`` (dim, stored dim) from
    the stored embedding to the space the head classifies: the class-trained projection, composed
    with the whitening's inverse where one was fitted (`finetune.whitening`). Tensors when written,
    numpy when read."""

    weight: Any
    scale: float
    classes: list[str]
    projection: Any = None


def read_head(directory: Path) -> ClassifierHead | None:
    """The category head; None without one, or when it predicts products."""
    classes = read_classes(directory)
    if classes is None or not (directory / HEAD_FILE).is_file() or trained_label(directory) != "category":
        return None
    tensors = load_numpy(directory / HEAD_FILE)
    projection = tensors.get("projection")
    return ClassifierHead(
        tensors["weight"].astype(np.float32),
        float(tensors["scale"]),
        classes,
        None if projection is None else projection.astype(np.float32),
    )


def ends_at_trunk(
    visual: torch.nn.Module, head: ClassifierHead, model_cfg: dict[str, Any]
) -> tuple[ClassifierHead, dict[str, Any]]:
    """Cut ``visual``'s linear projection off (in place) so the tower ends at its trunk's pooled
    features; the projection moves into the head, and the config says ``timm_proj: none``. The saved
    model stays a plain open_clip model: ingest, the service and the ONNX export need nothing new."""
    import torch

    projection = visual.head.proj.weight
    visual.head = torch.nn.Sequential()
    vision_cfg = {**model_cfg["vision_cfg"], "timm_proj": "none"}
    return dataclasses.replace(head, projection=projection), {**model_cfg, "vision_cfg": vision_cfg}


def model_config(source: ModelSource) -> dict[str, Any] | None:
    """The open_clip model config a checkpoint trained from ``source`` records."""
    if source.kind == "checkpoint":
        return json.loads((Path(source.name) / CONFIG_FILE).read_text())["model_cfg"]
    import open_clip

    from lookalike.encoder import register_model_configs

    register_model_configs()  # the presets' architectures, before anything has loaded a model
    return open_clip.get_model_config(source.open_clip_arguments[0])


def save_checkpoint(
    directory: Path,
    clip: torch.nn.Module,
    head: ClassifierHead,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    info: dict[str, Any],
) -> None:
    """Write every file, each on disk before the next; ``training.json`` goes first and comes back
    last: without it the directory is no checkpoint (`is_complete`), so a run killed or a power
    cut while saving over an older checkpoint cannot leave one run's weights beside the other's
    classes and metrics."""
    import torch
    from safetensors.torch import save

    directory.mkdir(parents=True, exist_ok=True)
    (directory / INFO_FILE).unlink(missing_ok=True)  # on disk with the first file's directory sync
    config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(preprocess_cfg)}
    write_atomically(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
    weights = {k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()}
    write_atomically(directory / WEIGHTS_FILE, save(weights))
    tensors = {"weight": head.weight.detach().contiguous(), "scale": torch.tensor(head.scale)}
    if head.projection is not None:
        tensors["projection"] = head.projection.detach().contiguous()
    write_atomically(directory / HEAD_FILE, save(tensors))
    write_atomically(directory / CLASSES_FILE, json.dumps(head.classes, indent=2).encode())
    (directory / RESUME_FILE).unlink(missing_ok=True)
    write_atomically(directory / INFO_FILE, json.dumps(info, indent=2).encode())


def save_resume_state(directory: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """The training state (tensors, numbers, lists) and the config that produced it, atomically."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{RESUME_FILE}.tmp"
    torch.save({**state, "config": _jsonable(config)}, tmp)
    tmp.replace(directory / RESUME_FILE)


def load_resume_state(directory: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The state to resume from, loaded with ``weights_only`` (no code runs from the file);
    `ResumeRefused` when it was written by a run that learns differently."""
    import torch

    path = directory / RESUME_FILE
    if not path.is_file():
        return None
    state = torch.load(path, weights_only=True, map_location="cpu")
    saved, wanted = state.get("config") or {}, _jsonable(config)
    changed = _changes(saved, wanted, wanted.keys() | saved.keys())
    if changed:
        raise ResumeRefused(
            f"{path} was written by a run with other settings or data ({', '.join(changed)}): "
            "rerun with the same options and catalogue to resume, or pass --force to start over"
        )
    return state


def recipe_changes(directory: Path, config: dict[str, Any], image_size: Any, defaults: dict[str, Any]) -> list[str]:
    """How the recipe that trained the finished checkpoint in ``directory`` differs from ``config``
    and the architecture's ``image_size`` (say, after an upgrade changed a preset): what it learns,
    not how long or how visibly it ran. A setting its training.json predates counts as its value
    in ``defaults`` (a new setting's default keeps the behaviour from before it existed)."""
    saved = {**_jsonable(defaults), **(read_info(directory).get("training") or {})}
    wanted = _jsonable(config)
    changed = _changes(saved, wanted, wanted.keys())
    saved_size = json.loads((directory / CONFIG_FILE).read_text())["model_cfg"]["vision_cfg"].get("image_size")
    if image_size is not None and saved_size != image_size:
        changed.insert(0, f"image_size: {saved_size!r} -> {image_size!r}")
    return changed


def _changes(saved: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str]) -> list[str]:
    compared = sorted(set(keys) - RESUMABLE_CHANGES)
    return [f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in compared if saved.get(k) != wanted.get(k)]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
