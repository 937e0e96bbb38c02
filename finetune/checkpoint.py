"""The versioned checkpoint directory, in open_clip's ``local-dir:`` format plus our head.

    open_clip_config.json        model_cfg + preprocess_cfg (loads with open_clip's factory)
    open_clip_model.safetensors  the weights
    head.safetensors             the cosine classifier (category=auto in the service)
    classes.json                 class names, in head order
    training.json                version, base model, arguments, catalogue fingerprint, metrics
    resume.pt                    only while training: the state to resume from

``training.json`` is written last: its presence means the checkpoint is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lookalike.encoder import CHECKPOINT_INFO, CLASSES_FILE, HEAD_FILE

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
RESUME_FILE = "resume.pt"


def is_complete(directory: Path) -> bool:
    return (directory / CHECKPOINT_INFO).is_file()


def save_checkpoint(
    directory: Path,
    clip: torch.nn.Module,
    head_weight: torch.Tensor,
    head_scale: float,
    classes: list[str],
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    info: dict[str, Any],
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": _jsonable(preprocess_cfg)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()}, directory / WEIGHTS_FILE)
    save_file({"weight": head_weight.detach().contiguous(), "scale": torch.tensor(head_scale)}, directory / HEAD_FILE)
    (directory / CLASSES_FILE).write_text(json.dumps(classes, indent=2))
    (directory / RESUME_FILE).unlink(missing_ok=True)
    (directory / CHECKPOINT_INFO).write_text(json.dumps(info, indent=2))


def save_resume_state(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f"{RESUME_FILE}.tmp"
    torch.save(state, tmp)
    tmp.replace(directory / RESUME_FILE)


def load_resume_state(directory: Path) -> dict[str, Any] | None:
    path = directory / RESUME_FILE
    return torch.load(path, weights_only=False, map_location="cpu") if path.is_file() else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
