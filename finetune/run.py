"""The fine-tuning job: data, model and precision; the epochs (`finetune.epochs`); the held-out
figures and the checkpoint."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from torch.utils.data import DataLoader
from torchvision import transforms

from finetune.config import TrainingConfig
from finetune.data import (
    ImageCache,
    LabelledImages,
    Pixels,
    Split,
    catalogue_fingerprint,
    label_of,
    require_scorable,
    split_catalogue,
)
from finetune.device_data import DeviceBatches
from finetune.epochs import EpochLoop
from finetune.export import export_checkpoint
from finetune.model import RetrievalModel, add_stochastic_depth, linear_projection
from finetune.train import HeldOut, evaluate, recalibrate_batch_norm, training_loss
from finetune.whitening import Whitening, fit_whitening, replace_projection
from lookalike.catalogue import CatalogueItem
from lookalike.checkpoint import ClassifierHead, ends_at_trunk, model_config, save_checkpoint
from lookalike.device import BF16, FP32, Placement, default_workers, fastest_training_precision
from lookalike.encoder import create_clip
from lookalike.errors import CatalogueError, ModelLoadError
from lookalike.model_source import ModelSource
from lookalike.pixels import Preprocess

log = logging.getLogger(__name__)
#: Colour jitter leaves hue alone: colour is part of "looks alike", so a red shoe stays red.
AUGMENTATION = open_clip.AugmentationCfg(scale=(0.35, 1.0), color_jitter=(0.2, 0.2, 0.2, 0.0), color_jitter_prob=0.8)
CACHE_MARGIN = 1.15  # cached images keep a little more than the model's input size for cropping


@dataclass
class TrainingResult:
    output: Path
    epochs_run: int
    best_epoch: int
    seconds: float
    metrics: dict[str, Any]
    epochs_planned: int = 0
    stopped_by_budget: bool = False  # the time budget's plan ended training, short of the configured epochs
    placement: str = ""
    phases_s: dict[str, float] = dataclasses.field(default_factory=dict)


def fine_tune(
    items: list[CatalogueItem],
    source: ModelSource,
    output: Path,
    config: TrainingConfig,
    max_pixels: int,
    device: torch.device | None = None,
) -> TrainingResult:
    """Train on the catalogue's split, keep the best epoch, measure it as the product will use it,
    save the checkpoint (and its ONNX export)."""
    started = time.perf_counter()
    fingerprint = catalogue_fingerprint(items)
    if config.whitening and config.embedding != "trunk":
        raise ModelLoadError("whitening applies to the trunk's features: it needs --embedding trunk")
    device = device or torch.device("cpu")
    torch.manual_seed(config.seed)
    random.seed(config.seed)  # timm's and open_clip's PIL augmentations draw from Python's own RNG
    clip, train_transform, val_transform = create_clip(source, aug_cfg=AUGMENTATION)
    if config.drop_path:
        add_stochastic_depth(clip.visual, config.drop_path)
    train_transform = transforms.Compose([transforms.RandomHorizontalFlip(), train_transform])
    side = round(get_model_preprocess_cfg(clip)["size"][0] * CACHE_MARGIN)
    photos = _photos(items, side, config, max_pixels)
    split, training, validation, classes = photos.split, photos.training, photos.validation, photos.classes
    dim = int(_embedding_dim(clip.visual, val_transform, training))
    model = RetrievalModel(clip.visual, dim, len(classes), config.head_scale, config.margin, config.embedding)
    model.to(device, memory_format=torch.channels_last)
    start_state = copy.deepcopy(clip.visual.state_dict())
    loader = _training_batches(clip, training, train_transform, classes, side, config, device)
    placement = Placement(device, _training_precision(model, loader, config, device))
    validate = _validation(model, validation, training, val_transform, classes, config, placement)
    log.info("training on", extra={"placement": placement.describe(), "data": type(loader).__name__})
    learns_from = {"base_source": source.to_dict(), "catalogue_fingerprint": fingerprint[:16]}
    loop = EpochLoop(model, loader, config, output, placement, started, learns_from)
    phases = {"prepare": time.perf_counter() - started}
    with _cudnn_autotuning(device):
        loop.run(validate)
    phases.update(loop.phases_s)

    model.load_state_dict(loop.best_state)
    if config.wise_alpha is not None:
        interpolate_weights(clip.visual, start_state, config.wise_alpha)
    final_started = time.perf_counter()
    recalibration = _recalibrate(model, training, val_transform, validate, device) if config.bn_recalibration else None
    metrics, whitening = _final_metrics(model, split, val_transform, classes, config, max_pixels, device)
    model.cpu()
    phases["final_eval"] = time.perf_counter() - final_started
    info = {
        "version": output.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": source.label,
        "base_source": source.to_dict(),
        "catalogue_fingerprint": fingerprint,
        "training": dataclasses.asdict(config),
        "epochs_run": loop.epoch,
        "epochs_planned": loop.planned_epochs,
        "best_epoch": loop.best_epoch,
        "stopped_by": loop.stopped_by,
        "history": loop.history,
        "seconds": round(time.perf_counter() - started, 1),
        "phases_s": {name: round(seconds, 2) for name, seconds in phases.items()},
        "metrics": metrics,
        "bn_recalibration": recalibration,
    }
    _save(output, clip, model, classes, source, config, whitening, info)
    return TrainingResult(
        output,
        loop.epoch,
        loop.best_epoch,
        info["seconds"],
        metrics,
        config.epochs,
        loop.stopped_by == "budget",
        placement.describe(),
        info["phases_s"],
    )


@dataclass(frozen=True)
class _Photos:
    """The photos of one run: the held-out split, and its gallery cut into training and validation
    photos, decoded once; the labels to learn."""

    split: Split
    training: ImageCache
    validation: ImageCache
    classes: list[str]


def _photos(items: list[CatalogueItem], side: int, config: TrainingConfig, max_pixels: int) -> _Photos:
    """Split the catalogue's photos and decode them once (short side ``side``, a little over the
    model's input, for cropping); stop before training when they cannot train or be scored."""
    split = split_catalogue(items, label=config.label)
    fit = split_catalogue(split.gallery, config.validation_share, config.label, round_up=False)  # validation, training
    classes = _classes(items, config.label)
    training = ImageCache.load(fit.gallery, side, max_pixels)
    validation = ImageCache.load(fit.queries, side, max_pixels)
    log.info(
        "data ready",
        extra={"training": len(training.images), "validation": len(validation.images), "classes": len(classes)},
    )
    if len(training.images) < config.batch_size:  # also before anything reads the first image
        validating = f" (beside {len(validation.images)} validation photos)" if validation.images else ""
        raise CatalogueError(
            f"{len(training.images)} training images{validating} are fewer than one batch of {config.batch_size}: "
            "pass a smaller --batch-size" + (" or --validation-share 0" if validation.images else "")
        )
    require_scorable(split.queries, [*training.items, *validation.items], config.label)  # before training
    return _Photos(split, training, validation, classes)


def _classes(items: list[CatalogueItem], label: str) -> list[str]:
    """The labels to learn, two at least: one gives a zero loss, so the checkpoint would be its
    start, and any ranking of one label's photos scores 1.0."""
    classes = sorted({label_of(item, label) for item in items})
    if len(classes) < 2:
        has = f"only one ({classes[0]})" if classes else "none"
        raise CatalogueError(f"fine-tuning learns to tell one {label} from another; the photos to train on have {has}")
    return classes


def _validation(
    model: RetrievalModel,
    validation: ImageCache,
    training: ImageCache,
    val_transform,
    classes: list[str],
    config: TrainingConfig,
    placement: Placement,
) -> Callable[[], HeldOut] | None:
    """The per-epoch evaluation that chooses the epoch: validation photos ranking the training
    photos, read through the val transform once; None when there are no validation photos."""
    if not validation.images:
        if config.validation_share:  # asked for, but no class had a training photo to spare
            log.warning("no validation photos: the last epoch is kept", extra={"label": config.label})
        return None
    require_scorable(validation.items, training.items, config.label)
    device = placement.device
    validation, training = validation.with_pixels(val_transform, device), training.with_pixels(val_transform, device)
    return lambda: evaluate(model, validation, training, val_transform, classes, placement, config.label)


def _recalibrate(
    model: RetrievalModel,
    training: ImageCache,
    val_transform: Preprocess,
    validate: Callable[[], HeldOut] | None,
    device: torch.device,
) -> dict[str, float] | None:
    """BatchNorm's statistics re-estimated on the training photos (`recalibrate_batch_norm`); with
    validation photos, their P@4 before and after, recorded in training.json: what it changed,
    measured on photos the reported figures do not use. None for a tower without BatchNorm."""

    def recalibrated() -> bool:
        pixels = Pixels.of(training.images, val_transform, device)
        if not recalibrate_batch_norm(model.visual, pixels, device):
            return False
        log.info("batch norm recalibrated", extra={"photos": len(training.images)})
        return True

    if validate is None:
        return {} if recalibrated() else None
    before = validate().scores.overall["P@4"]
    if not recalibrated():
        return None
    return {"validation_p_at_4_before": before, "validation_p_at_4": validate().scores.overall["P@4"]}


def _final_metrics(
    model: RetrievalModel,
    split: Split,
    val_transform: Preprocess,
    classes: list[str],
    config: TrainingConfig,
    max_pixels: int,
    device: torch.device,
) -> tuple[dict[str, Any], Whitening | None]:
    """The reported figures of the trained model, and its whitening when the config asks for one:
    full-resolution images in fp32, as ingest and the service see them on a CPU."""
    queries, gallery = (
        ImageCache.load(split.queries, None, max_pixels),
        ImageCache.load(split.gallery, None, max_pixels),
    )
    require_scorable(queries.items, gallery.items, config.label)  # every held-out photo unreadable, say
    fp32 = Placement(device, FP32)
    whitening, unwhitened = None, None
    if config.whitening:
        unwhitened = evaluate(model, queries, gallery, val_transform, classes, fp32, config.label)
        whitening = _fit_whitening(model, unwhitened.gallery, config.whitening, device)
    held_out = evaluate(model, queries, gallery, val_transform, classes, fp32, config.label)
    scores, accuracy = held_out.scores, held_out.accuracy
    by_category = (
        scores if config.label == "category" else evaluate(model, queries, gallery, val_transform, classes, fp32).scores
    )
    metrics = {
        "label": config.label,
        "overall": scores.overall,  # by the training label
        "per_category": by_category.per_category,
        "head_accuracy": accuracy,
    }
    if config.label != "category":  # "the same product" and "the same kind of thing", side by side
        metrics["by_label"] = {"category": by_category.overall, config.label: scores.overall}
    if held_out.trained is not held_out.scores:  # ranked by the trunk: what the projection gave beside it
        metrics["by_projection"] = held_out.trained.overall
    if unwhitened is not None:
        metrics["unwhitened"] = unwhitened.scores.overall
    return metrics, whitening


def _save(
    output: Path,
    clip: torch.nn.Module,
    model: RetrievalModel,
    classes: list[str],
    source: ModelSource,
    config: TrainingConfig,
    whitening: Whitening | None,
    info: dict[str, Any],
) -> None:
    """The checkpoint the service loads, then its ONNX export (an older run's goes first: a model
    that cannot be exported must not be served by another's)."""
    from lookalike.onnx_encoder import EXPORT_DIR

    shutil.rmtree(output / EXPORT_DIR, ignore_errors=True)
    head = ClassifierHead(model.head.weight, config.head_scale, classes)
    model_cfg = model_config(source)
    if whitening is not None:  # the saved tower ends at the whitening; the head keeps the projection
        head = replace_projection(clip.visual, head, whitening)
    elif config.embedding == "trunk":  # the saved tower ends at the trunk; the head keeps the projection
        head, model_cfg = ends_at_trunk(clip.visual, head, model_cfg)
    save_checkpoint(output, clip, head, model_cfg, get_model_preprocess_cfg(clip), info)
    export_checkpoint(output)


@contextlib.contextmanager
def _cudnn_autotuning(device: torch.device) -> Iterator[None]:
    """cuDNN times its algorithms for each new input shape: worth it for training's fixed shapes
    (the last partial batch is dropped), and only there. Left on, whatever runs next in the
    process (gpu-check's ingest) paid the timing again for every new batch shape."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _fit_whitening(model: RetrievalModel, features: np.ndarray, power: float, device: torch.device) -> Whitening:
    """The whitening of the training photos' trunk ``features``, kept as wide as the projection it
    replaces; ``model`` ranks by it from now on, and its head classifies as the saved head will."""
    whitening = fit_whitening(features, linear_projection(model.visual).out_features, power)
    model.whitening = torch.from_numpy(whitening.matrix).to(device)
    model.unwhitening = torch.from_numpy(whitening.inverse).to(device)
    return whitening


def _training_batches(
    clip, gallery: ImageCache, train_transform, classes: list[str], side: int, config: TrainingConfig, device
) -> DataLoader | DeviceBatches:
    """PIL transforms in worker processes beside a GPU, in the main process on a CPU (the model
    needs the cores); or, with `data_on_device`, the gallery held and augmented on the device."""
    if config.holds_data_on(device):
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
