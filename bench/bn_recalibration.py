"""`python -m bench.bn_recalibration CHECKPOINT [CATALOGUE]`: what `finetune --bn-recalibration`
would change on a checkpoint already trained without it.

Loads the checkpoint, re-estimates its BatchNorm statistics on the catalogue split's gallery (the
photos it trained on, cached as `finetune` caches them, through its val transform) with the
shipped `recalibrate_batch_norm`, and scores the held-out queries before and after, each also by
the trunk before its whitening where it has one. These are the reporting queries: with
validation photos a `finetune --bn-recalibration` run records the honest comparison itself.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from bench.common import report
from finetune.data import ImageCache, Pixels, split_catalogue
from finetune.evaluate import encoder_candidate, evaluate_candidates, unwhitened_candidate
from finetune.run import CACHE_MARGIN
from finetune.train import recalibrate_batch_norm
from lookalike.catalogue import read_catalogue
from lookalike.checkpoint import read_info
from lookalike.encoder import ImageEncoder, open_clip_image_size
from lookalike.settings import Settings

METRICS = ("P@1", "P@4", "P@10", "mAP@R")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("catalogue", nargs="?", type=Path, help="default CATALOGUE_DIR")
    args = parser.parse_args()
    settings = Settings().with_overrides(model_checkpoint=args.checkpoint, precision="fp32")
    as_saved = ImageEncoder.from_settings(settings)
    split = split_catalogue(read_catalogue(args.catalogue or settings.catalogue_source()).items)
    max_pixels = settings.max_image_pixels
    queries, gallery = (ImageCache.load(part, None, max_pixels) for part in (split.queries, split.gallery))
    side = round(open_clip_image_size(as_saved.preprocess) * CACHE_MARGIN)
    training = ImageCache.load(split.gallery, side, max_pixels)
    tower = copy.deepcopy(as_saved.visual)
    cpu = torch.device("cpu")
    if not recalibrate_batch_norm(tower, Pixels.of(training.images, as_saved.preprocess, cpu), cpu):
        raise SystemExit(f"{args.checkpoint}: its tower has no BatchNorm layers")
    recalibrated = ImageEncoder(tower, as_saved.preprocess, "recalibrated", as_saved.classifier, as_saved.placement)
    whitened = bool((read_info(args.checkpoint).get("training") or {}).get("whitening"))
    candidates = []
    for name, encoder in (("as saved", as_saved), ("recalibrated", recalibrated)):
        candidates.append(encoder_candidate(name, encoder))
        if whitened:
            candidates.append(unwhitened_candidate(f"{name}, trunk before the whitening", encoder))
    scores = evaluate_candidates(queries, gallery, candidates)
    report(
        "bn_recalibration",
        [
            {
                "checkpoint": args.checkpoint.name,
                "encoder": name.replace(" ", "_").replace(",", ""),
                **{metric: round(result["overall"][metric], 3) for metric in METRICS},
                "head_accuracy": None if result["head_accuracy"] is None else round(result["head_accuracy"], 3),
            }
            for name, result in scores.items()
        ],
    )


if __name__ == "__main__":
    main()
