"""The fine-tuning job: data, model, the epoch loop with early stopping and resume, the checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm import tqdm

from finetune.data import ImageCache, LabelledImages, catalogue_fingerprint, label_of, split_catalogue
from finetune.device_data import DeviceBatches, preprocess_on_device
from finetune.model import RetrievalModel
from finetune.train import evaluate, train_one_epoch, training_loss, warmup_cosine
from lookalike.catalogue import CatalogueItem
from lookalike.checkpoint import load_resume_state, model_config, save_checkpoint, save_resume_state
from lookalike.device import BF16, FP32, Placement, default_workers, fastest_training_precision
from lookalike.encoder import create_clip
from lookalike.errors import CatalogueError
from lookalike.model_source import ModelSource

log = logging.getLogger(__name__)
#: Colour jitter leaves hue alone: colour is part of "looks alike", so a red shoe stays red.
AUGMENTATION = open_clip.AugmentationCfg(scale=(0.35, 1.0), color_jitter=(0.2, 0.2, 0.2, 0.0), color_jitter_prob=0.8)
#: At most this share of training time goes to the per-epoch held-out evaluation.
EVAL_SHARE = 0.25
CACHE_MARGIN = 1.15  # cached images keep a little more than the model's input size for cropping


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    head_scale: float = 16.0
    margin: float = 0.1
    patience: int = 6
    lp_epochs: int = 0  # linear probe (head only) before full fine-tuning; for pretrained starts
    backbone_lr_scale: float = 1.0  # < 1 keeps pretrained features close to where they started
    wise_alpha: float | None = None  # WiSE-FT: interpolate fine-tuned and starting weights
    seed: int = 0
    max_minutes: float | None = None
    precision: str = "auto"  # "auto" (bf16 on a GPU, measured on a CPU), "bf16" or "fp32"
    progress: bool = True
    #: What a class is: "category", or "product" (photos sharing a product_id; "the same product"
    #: then ranks first, and the head predicts products, so the service's category=auto is off).
    label: str = "category"
    #: Weight of an instance-discrimination loss beside the class loss (two views an image; 0 = off).
    instance_weight: float = 0.0
    #: Evaluate every N epochs (default: as often as keeps evaluation <= EVAL_SHARE of the time).
    eval_every: int | None = None
    #: Write the resume file at most this often (and after the last epoch).
    resume_every_s: float = 20.0
    #: Hold the training images on the device and augment them there (finetune.device_data). Off by
    #: default: on one H200 it trained the large preset no faster per epoch than the PIL workers and
    #: to a lower held-out P@4 (0.837 vs 0.865; README, "GPU").
    data_on_device: bool = False


@dataclass
class TrainingResult:
    output: Path
    epochs_run: int
    best_epoch: int
    seconds: float
    metrics: dict[str, Any]
    epochs_planned: int = 0
    stopped_by_budget: bool = False  # max_minutes ran out before the epochs or patience did
    placement: str = ""


def fine_tune(
    items: list[CatalogueItem],
    source: ModelSource,
    output: Path,
    config: TrainingConfig,
    max_pixels: int,
    device: torch.device | None = None,
) -> TrainingResult:
    started = time.perf_counter()
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    clip, train_transform, val_transform = create_clip(source, aug_cfg=AUGMENTATION)
    train_transform = transforms.Compose([transforms.RandomHorizontalFlip(), train_transform])
    split = split_catalogue(items, label=config.label)
    classes = sorted({label_of(item, config.label) for item in items})
    side = round(get_model_preprocess_cfg(clip)["size"][0] * CACHE_MARGIN)
    gallery, queries = (
        ImageCache.load(split.gallery, side, max_pixels),
        ImageCache.load(split.queries, side, max_pixels),
    )
    log.info(
        "data ready", extra={"gallery": len(gallery.images), "queries": len(queries.images), "classes": len(classes)}
    )

    dim = int(_embedding_dim(clip.visual, val_transform, gallery))
    model = RetrievalModel(clip.visual, dim, len(classes), config.head_scale, config.margin)
    model.to(device, memory_format=torch.channels_last)
    start_state = copy.deepcopy(clip.visual.state_dict())
    loader = _training_batches(clip, gallery, train_transform, classes, side, config, device)
    if config.data_on_device:  # evaluation images through the val transform once, kept there
        queries, gallery = (
            preprocess_on_device(queries, val_transform, device),
            preprocess_on_device(gallery, val_transform, device),
        )
    if len(loader) == 0:
        raise CatalogueError(
            f"{len(gallery.images)} training images are fewer than one batch of {config.batch_size}: "
            "pass a smaller --batch-size"
        )
    placement = Placement(device, _training_precision(model, loader, config, device))
    log.info("training on", extra={"placement": placement.describe(), "data": type(loader).__name__})
    loop = EpochLoop(model, loader, config, output, placement)
    loop.run(lambda: evaluate(model, queries, gallery, val_transform, classes, placement, config.label), started)

    model.load_state_dict(loop.best_state)
    if config.wise_alpha is not None:
        interpolate_weights(clip.visual, start_state, config.wise_alpha)
    # The reported numbers: full-resolution images in fp32, as ingest and the service see them on a CPU.
    queries, gallery = (
        ImageCache.load(split.queries, None, max_pixels),
        ImageCache.load(split.gallery, None, max_pixels),
    )
    fp32 = Placement(device, FP32)
    scores, accuracy = evaluate(model, queries, gallery, val_transform, classes, fp32, config.label)
    by_category = (
        scores if config.label == "category" else evaluate(model, queries, gallery, val_transform, classes, fp32)[0]
    )
    model.cpu()
    metrics = {
        "label": config.label,
        "overall": scores.overall,  # by the training label
        "per_category": by_category.per_category,
        "head_accuracy": accuracy,
    }
    if config.label != "category":  # "the same product" and "the same kind of thing", side by side
        metrics["by_label"] = {"category": by_category.overall, config.label: scores.overall}
    info = {
        "version": output.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": source.label,
        "base_source": source.to_dict(),
        "catalogue_fingerprint": catalogue_fingerprint(items),
        "training": dataclasses.asdict(config),
        "epochs_run": loop.epoch,
        "best_epoch": loop.best_epoch,
        "history": loop.history,
        "seconds": round(time.perf_counter() - started, 1),
        "metrics": metrics,
    }
    head = (model.head.weight, config.head_scale, classes)
    save_checkpoint(output, clip, head, model_config(source), get_model_preprocess_cfg(clip), info)
    return TrainingResult(
        output,
        loop.epoch,
        loop.best_epoch,
        info["seconds"],
        metrics,
        config.epochs,
        loop.budget_hit,
        placement.describe(),
    )


def _training_batches(
    clip, gallery: ImageCache, train_transform, classes: list[str], side: int, config: TrainingConfig, device
) -> DataLoader | DeviceBatches:
    """PIL transforms in worker processes beside a GPU, in the main process on a CPU (the model
    needs the cores); or, with `data_on_device`, the gallery held and augmented on the device."""
    if config.data_on_device:
        if config.instance_weight:
            raise CatalogueError("instance_weight needs the PIL data path (data_on_device=False)")
        preprocess_cfg = get_model_preprocess_cfg(clip)
        index = {name: i for i, name in enumerate(classes)}
        return DeviceBatches(
            gallery,
            [index[label_of(item, config.label)] for item in gallery.items],
            side,
            preprocess_cfg["size"][0],
            preprocess_cfg["mean"],
            preprocess_cfg["std"],
            config.batch_size,
            AUGMENTATION.scale,
            device,
            config.seed,
        )
    workers = default_workers(device) if device.type == "cuda" else 0
    return DataLoader(
        LabelledImages(gallery, train_transform, classes, config.label, views=2 if config.instance_weight else 1),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _training_precision(model: RetrievalModel, loader: DataLoader, config: TrainingConfig, device) -> str:
    """PRECISION as configured, or measured on a real batch (`fastest_training_precision`)."""
    if config.precision != "auto":
        return config.precision
    pixels, labels = next(iter(loader))

    def step(bf16: bool) -> None:
        placement = Placement(device, BF16 if bf16 else FP32)
        loss = training_loss(model, pixels, labels, config.label_smoothing, placement, config.instance_weight)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    return fastest_training_precision(device, step)


class EpochLoop:
    """Epochs with LP-FT phases, early stopping on held-out P@4, and a resume file after each."""

    def __init__(
        self,
        model: RetrievalModel,
        loader: DataLoader | DeviceBatches,
        config: TrainingConfig,
        output: Path,
        placement: Placement,
    ) -> None:
        self.model, self.loader, self.config, self.output = model, loader, config, output
        self.placement = placement
        self.budget_hit = False
        #: Set after the first epoch (unless configured): evaluation stays a bounded share of the time.
        self.eval_every = config.eval_every or 1
        self._saved_at = -math.inf
        backbone_lr = config.lr * config.backbone_lr_scale
        self.optimizer = torch.optim.AdamW(
            [
                {"params": model.visual.parameters(), "lr": backbone_lr},
                {"params": model.head.parameters(), "lr": config.lr, "weight_decay": 0.0},
            ],
            weight_decay=config.weight_decay,
        )
        steps = len(loader) * config.epochs
        multiplier = warmup_cosine(round(len(loader) * config.warmup_epochs), steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, multiplier)
        self.epoch, self.best_epoch, self.best_score, self.stale = 0, 0, -1.0, 0
        self.best_state = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self._resume()

    def run(self, evaluate_now, started: float) -> None:
        while self.epoch < self.config.epochs and self.stale < self.config.patience:
            if self.config.max_minutes and time.perf_counter() - started > self.config.max_minutes * 60:
                log.warning("time budget reached", extra={"epoch": self.epoch, "max_minutes": self.config.max_minutes})
                self.budget_hit = True
                break
            self.epoch += 1
            self.model.visual.requires_grad_(self.epoch > self.config.lp_epochs)
            bar = tqdm(
                total=len(self.loader) * self.config.batch_size,
                desc=f"epoch {self.epoch}/{self.config.epochs}",
                unit="img",
                disable=not self.config.progress,
                leave=False,
            )
            with bar:
                epoch_started = time.perf_counter()
                loss = train_one_epoch(
                    self.model,
                    self.loader,
                    self.optimizer,
                    self.scheduler,
                    self.config.label_smoothing,
                    bar,
                    self.placement,
                    self.config.instance_weight,
                )
                train_s = time.perf_counter() - epoch_started
                if self.epoch % self.eval_every == 0 or self.epoch == self.config.epochs:
                    eval_started = time.perf_counter()
                    scores, accuracy = evaluate_now()
                    self._bound_evaluation(train_s, time.perf_counter() - eval_started)
                    bar.set_postfix(loss=f"{loss:.3f}", p_at_4=f"{scores.overall['P@4']:.3f}")
                    self._record(loss, scores.overall["P@4"], accuracy)
            self._save_resume_state()

    def _bound_evaluation(self, train_s: float, eval_s: float) -> None:
        """Evaluate every N epochs so that evaluation takes at most `EVAL_SHARE` of the time."""
        if self.epoch == 1 and self.config.eval_every is None:
            self.eval_every = max(1, math.ceil(eval_s / (EVAL_SHARE * max(train_s, 1e-6))))
            cadence = {"every_epochs": self.eval_every, "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)}
            log.info("evaluation cadence", extra=cadence)

    def _record(self, loss: float, p_at_4: float, accuracy: float) -> None:
        self.history.append({"epoch": self.epoch, "loss": loss, "P@4": p_at_4, "accuracy": accuracy})
        log.info("epoch done", extra=self.history[-1])
        if p_at_4 > self.best_score:
            self.best_score, self.best_epoch = p_at_4, self.epoch
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.stale = self.epoch - self.best_epoch  # epochs without a better held-out P@4

    def _save_resume_state(self) -> None:
        """The resume file, at most every `resume_every_s` (a GPU epoch can take less time than
        writing a ResNet-50 with its optimiser state), and after the last epoch."""
        now = time.perf_counter()
        last = self.epoch >= self.config.epochs
        if not last and now - self._saved_at < self.config.resume_every_s:
            return
        self._saved_at = now
        save_resume_state(
            self.output,
            {
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "best_state": self.best_state,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "stale": self.stale,
                "history": self.history,
            },
            dataclasses.asdict(self.config),
        )

    def _resume(self) -> None:
        state = load_resume_state(self.output, dataclasses.asdict(self.config))
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_state, self.best_score = state["epoch"], state["best_state"], state["best_score"]
        self.best_epoch, self.stale, self.history = state["best_epoch"], state["stale"], state["history"]
        log.info("resumed", extra={"epoch": self.epoch, "output": str(self.output)})


def interpolate_weights(module: torch.nn.Module, start: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT: ``alpha`` * fine-tuned + (1 - ``alpha``) * starting weights (float tensors only)."""
    state = module.state_dict()
    for name, tensor in state.items():
        if tensor.is_floating_point():
            state[name] = alpha * tensor + (1 - alpha) * start[name].to(tensor.device)
    module.load_state_dict(state)


def _embedding_dim(visual: torch.nn.Module, preprocess, cache: ImageCache) -> int:
    visual.eval()
    with torch.inference_mode():
        return visual(preprocess(cache.images[0]).unsqueeze(0)).shape[-1]
