"""``python -m finetune [CATALOGUE] [--preset small]``: fine-tune an image tower on the catalogue's categories.

Starts from MODEL_NAME/MODEL_PRETRAINED (the real-user path: pretrained weights, LP-FT) or, with
``--preset small``, trains this project's small architecture from scratch on the CPU. Writes a
versioned checkpoint directory; ``MODEL_CHECKPOINT=<dir>`` then makes ingest and the service use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from finetune.checkpoint import is_complete
from finetune.data import catalogue_fingerprint
from finetune.run import TrainingConfig, fine_tune
from lookalike.catalogue import read_catalogue
from lookalike.cli import float_range, int_range, positive_float
from lookalike.encoder import ModelSource, resolve_model_source
from lookalike.errors import LookalikeError
from lookalike.logs import configure_logging
from lookalike.settings import Settings

log = logging.getLogger("finetune")

#: Offline presets: an architecture of lookalike/model_configs and a recipe that fits 2 CPU cores.
PRESETS: dict[str, tuple[str, TrainingConfig]] = {
    "small": ("lookalike-small", TrainingConfig(epochs=60, batch_size=64, lr=2e-3, patience=12, max_minutes=19)),
}
PRETRAINED_RECIPE = TrainingConfig(epochs=10, batch_size=64, lr=1e-3, lp_epochs=2, backbone_lr_scale=0.1, patience=3)


#: Recipe options that override the preset's value (TrainingConfig fields): name, type, meaning.
OPTIONS = (
    ("epochs", int_range(1, 10_000), "training epochs"),
    ("batch_size", int_range(2, 4096), "images per step"),
    ("lr", positive_float(10.0), "peak learning rate"),
    ("patience", int_range(1, 10_000), "epochs without a better held-out P@4 before stopping"),
    ("lp_epochs", int_range(0, 10_000), "linear-probe epochs (head only) before full fine-tuning"),
    ("backbone_lr_scale", float_range(0.0, 1.0), "learning rate of the backbone relative to the head"),
    ("wise_alpha", float_range(0.0, 1.0), "WiSE-FT: weight of the fine-tuned weights against the start"),
    ("max_minutes", positive_float(), "stop training after this many minutes"),
    ("seed", int_range(0, 2**32 - 1), "random seed"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.splitlines()[0])
    parser.add_argument("catalogue", nargs="?", type=Path, help="catalogue folder or manifest (default CATALOGUE_DIR)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="train a small architecture from scratch")
    parser.add_argument("--output", type=Path, help="checkpoint directory (default models/<model>-<catalogue hash>)")
    parser.add_argument("--force", action="store_true", help="train even if the output holds a finished checkpoint")
    for field, kind, meaning in OPTIONS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, dest=field, help=meaning)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--print-checkpoint", action="store_true", help="print only the checkpoint path on stdout (for scripts)"
    )
    return parser.parse_args(argv)


def choose_recipe(args: argparse.Namespace, settings: Settings) -> tuple[ModelSource, TrainingConfig]:
    if args.preset:
        model_name, config = PRESETS[args.preset]
        source = resolve_model_source(
            settings.model_copy(update={"model_name": model_name, "model_pretrained": "", "model_checkpoint": None})
        )
    else:
        source = resolve_model_source(settings)
        config = TrainingConfig(epochs=30, lr=2e-3, patience=6) if source.random_init else PRETRAINED_RECIPE
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainingConfig)}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    return source, dataclasses.replace(config, progress=not args.no_progress, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        catalogue = read_catalogue(args.catalogue or settings.catalogue_source())
        source, config = choose_recipe(args, settings)
        name = source.label.split("/")[0].replace("checkpoint:", "")
        output = args.output or Path("models") / f"{name}-{catalogue_fingerprint(catalogue.items)[:10]}"
        if is_complete(output) and not args.force:
            message = f"checkpoint {output} is already trained for this catalogue (--force to train again)"
            print(output if args.print_checkpoint else message)
            if args.print_checkpoint:
                print(message, file=sys.stderr)
            return 0
        result = fine_tune(catalogue.items, source, output, config, settings.max_image_pixels)
    except LookalikeError as e:
        print(f"finetune: error: {e.message}", file=sys.stderr)
        return 2
    overall = result.metrics["overall"]
    out = sys.stderr if args.print_checkpoint else sys.stdout
    if args.print_checkpoint:
        print(result.output)
    print(
        f"checkpoint={result.output} epochs={result.epochs_run} best_epoch={result.best_epoch} "
        f"seconds={result.seconds:.0f} heldout_P@4={overall['P@4']:.3f} mAP@R={overall['mAP@R']:.3f} "
        f"head_accuracy={result.metrics['head_accuracy']:.3f}",
        file=out,
    )
    print(f"use it: MODEL_CHECKPOINT={result.output}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
