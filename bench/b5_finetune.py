"""B5: fine-tuning epochs vs pure forward + backward on pre-decoded tensors. Goal: <= 1.2x.

Two epochs are timed against the same baseline (the model on tensors prepared beforehand): the
training step alone (`train_one_epoch`: augmenting cached images, collating, the optimiser step),
and a whole epoch as ``python -m finetune`` runs it (`fine_tune` on the same images: the training
step plus its share of held-out evaluation and of writing ``resume.pt``, at the default cadence).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from tqdm import tqdm

from bench.common import report, spread_sample
from finetune.config import TrainingConfig
from finetune.data import ImageCache, LabelledImages, split_catalogue
from finetune.model import RetrievalModel
from finetune.run import AUGMENTATION, _training_precision, fine_tune
from finetune.train import train_one_epoch, training_loss
from lookalike.catalogue import read_catalogue
from lookalike.device import Placement
from lookalike.encoder import create_clip
from lookalike.model_source import ModelSource
from lookalike.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the whole fine-tuning run")
    args = parser.parse_args()
    settings = Settings(model_name="lookalike-small", model_pretrained="", model_checkpoint=None)
    items = split_catalogue(read_catalogue(settings.catalogue_source()).items).gallery
    items = spread_sample(items, args.images)
    clip, train_transform, _ = create_clip(ModelSource.from_settings(settings), aug_cfg=AUGMENTATION)
    train_transform = transforms.Compose([transforms.RandomHorizontalFlip(), train_transform])
    cache = ImageCache.load(items, 129, settings.max_image_pixels)
    classes = sorted({item.category for item in cache.items})
    config = TrainingConfig()
    model = RetrievalModel(clip.visual, 256, len(classes)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    dataset = LabelledImages(cache, train_transform, classes)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True)

    placement = Placement(torch.device("cpu"), _training_precision(model, loader, config, torch.device("cpu")))
    with tqdm(disable=True) as bar:
        train_one_epoch(model, loader, optimizer, scheduler, config.label_smoothing, bar, placement)  # warm-up
        started = time.perf_counter()
        train_one_epoch(model, loader, optimizer, scheduler, config.label_smoothing, bar, placement)
        epoch_s = time.perf_counter() - started

    batches = [next(iter(loader)) for _ in range(len(loader))]  # pre-decoded, pre-augmented tensors
    model.train()
    started = time.perf_counter()
    for pixels, labels in batches:
        loss = training_loss(model, pixels, labels, 0.0, placement)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    pure_s = time.perf_counter() - started

    images = len(loader) * config.batch_size
    pure_per_image = pure_s / images
    with tempfile.TemporaryDirectory() as tmp:
        run = TrainingConfig(epochs=args.epochs, progress=False, precision=placement.precision, resume_every_s=20)
        result = fine_tune(
            items, ModelSource.from_settings(settings), Path(tmp) / "ckpt", run, settings.max_image_pixels
        )
    trained_images = len(split_catalogue(items).gallery) // run.batch_size * run.batch_size
    whole_epoch_s = sum(result.phases_s[phase] for phase in ("train", "eval", "save")) / result.epochs_run
    report(
        "b5_finetune",
        [
            {
                "figure": "epoch_vs_forward_backward",
                "value": round(epoch_s / pure_s, 3),
                "goal": "<=1.2",
                "epoch_images_per_s": round(images / epoch_s, 1),
                "baseline_images_per_s": round(images / pure_s, 1),
                "precision": placement.precision,
                "images": images,
            },
            {
                "figure": "whole_epoch_vs_forward_backward",
                "value": round(whole_epoch_s / (pure_per_image * trained_images), 3),
                "goal": "<=1.2",
                "whole_epoch_s": round(whole_epoch_s, 2),
                "phases_s": result.phases_s,
                "epochs": result.epochs_run,
                "images_per_epoch": trained_images,
            },
        ],
    )


if __name__ == "__main__":
    main()
