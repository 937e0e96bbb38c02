"""Where an encoder's weights come from, as a structure rather than a display string.

Five kinds: an open_clip architecture with random-init weights, with an open_clip pretrained tag,
or with a local weights file; a Hugging Face hub model (``hf-hub:org/repo``); or a fine-tuned
checkpoint directory, which records the source it was trained from (its ``base``). A fine-tuning
run writes its base source into the checkpoint (`to_dict`), so `python -m finetune.evaluate` can
rebuild the untuned encoder exactly, even when that base was itself a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lookalike.settings import Settings

Kind = Literal["random-init", "tag", "file", "hf-hub", "checkpoint"]


@dataclass(frozen=True)
class ModelSource:
    kind: Kind
    #: The open_clip architecture (random-init, tag, file), ``org/repo`` (hf-hub), or the checkpoint folder.
    name: str
    weights: str | None = None  # the tag, or the weights file's path
    base: ModelSource | None = None  # a checkpoint's: what it was trained from (None: not recorded)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelSource:
        """MODEL_CHECKPOINT wins; else MODEL_PRETRAINED (`hf-hub:` id, tag or file) on MODEL_NAME."""
        if settings.model_checkpoint is not None:
            from lookalike.checkpoint import read_base_source  # the checkpoint format knows its files

            checkpoint = settings.model_checkpoint.resolve()
            return cls("checkpoint", str(checkpoint), base=read_base_source(checkpoint))
        pretrained = settings.pretrained
        if pretrained.startswith("hf-hub:"):
            return cls("hf-hub", pretrained.removeprefix("hf-hub:"))
        if not pretrained:
            return cls("random-init", settings.model_name)
        is_file = "/" in pretrained or Path(pretrained).suffix != "" or Path(pretrained).is_file()
        return cls("file" if is_file else "tag", settings.model_name, pretrained)

    @property
    def open_clip_arguments(self) -> tuple[str, str | None]:
        """``model_name`` and ``pretrained`` for open_clip's ``create_model_and_transforms``."""
        if self.kind == "checkpoint":
            return f"local-dir:{self.name}", None
        if self.kind == "hf-hub":
            return f"hf-hub:{self.name}", None
        return self.name, self.weights

    @property
    def random_init(self) -> bool:
        return self.kind == "random-init"

    @property
    def label(self) -> str:
        """Human-readable, and the first half of the model identity (stable across versions)."""
        if self.kind == "checkpoint":
            return f"checkpoint:{Path(self.name).name}"
        if self.kind == "hf-hub":
            return f"hf-hub:{self.name}"
        if self.kind == "random-init":
            return f"{self.name}/random-init"
        return f"{self.name}/{Path(self.weights or '').name}"

    @property
    def short_name(self) -> str:
        """For folder names: the architecture, the hub repo, or the checkpoint's folder."""
        return Path(self.name).name if self.kind in ("checkpoint", "hf-hub") else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "weights": self.weights,
            "base": self.base.to_dict() if self.base else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSource:
        base = cls.from_dict(data["base"]) if data.get("base") else None
        return cls(data["kind"], data["name"], data.get("weights"), base)
