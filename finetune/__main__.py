"""``python -m finetune [CATALOGUE] [--preset small]``: fine-tune an image tower on the catalogue's categories.

Starts from MODEL_NAME/MODEL_PRETRAINED (the real-user path: pretrained weights, LP-FT) or, with
``--preset small``, trains this project's small architecture from scratch on the CPU. Writes a
versioned checkpoint directory; ``MODEL_CHECKPOINT=<dir>`` then makes ingest and the service use it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from finetune.config import TrainingConfig
from finetune.data import LABELS, catalogue_fingerprint, split_by_holdout
from finetune.model import EMBEDDINGS
from finetune.run import fine_tune
from lookalike.catalogue import CatalogueItem, read_catalogue
from lookalike.checkpoint import RESUME_FILE, is_complete, model_config, read_info, recipe_changes
from lookalike.cli import description, float_range, int_range, positive_float, program
from lookalike.device import resolve_device
from lookalike.errors import CatalogueError, InvalidRequest, LookalikeError
from lookalike.files import stop_message
from lookalike.lockfile import ProcessLock, StoreLockBusy
from lookalike.logs import configure_logging
from lookalike.model_source import ModelSource
from lookalike.settings import Settings

log = logging.getLogger("finetune")

#: Offline presets, trained from scratch: an architecture of lookalike/model_configs and its recipe.
#: small: ResNet-18 at 128 px, 90 epochs in 27-45 minutes on 2 cores with bf16, a 45-minute budget
#: that never plans fewer than 64 (a 2-core AMD EPYC with AVX2 alone held 38, ~73 s an epoch in
#: fp32; its 64 took 81 minutes and gave P@4 0.804, 2026-11-28; 36 epochs gave 0.755-0.764), ranking by its
#: trunk's features partially whitened (issue 18: they carry to categories never trained on; 90
#: epochs win back on the trained ones what the whitening costs their deep ranking, README), keeping
#: its last epoch (validation P@4 was flat over the last third, 0.81-0.83 from epoch 64 to 90 in one
#: run, so the photos validation held out train instead, and the 15 % of the time it took), its
#: BatchNorm statistics re-estimated on the unaugmented training photos at the end (on two of its
#: checkpoints, held-out P@4 +0.001/+0.004, mAP@R +0.011/+0.010, 2026-11-28);
#: large: ResNet-50 at 160 px, for a GPU (3 minutes), evaluated and saved as the moving average of
#: its weights, a batch in two cut and mixed, keeping the epoch that ranks its validation photos
#: best (it overfits in its last third there), weight decay 0.2 against that overfitting (on one
#: H200, 2026-11-28, one run each, the epoch chosen on validation photos: held-out P@4 0.885,
#: mAP@R 0.870, validation 0.892, against 0.865 / 0.843, validation 0.876, with 0.05; README).
PRESETS: dict[str, tuple[str, TrainingConfig]] = {
    "small": (
        "lookalike-small",
        TrainingConfig(
            epochs=90,
            batch_size=64,
            lr=2e-3,
            patience=90,
            max_minutes=45,
            min_epochs=64,
            embedding="trunk",
            whitening=0.2,
            validation_share=0.0,
            bn_recalibration=True,
        ),
    ),
    "large": (
        "lookalike-large",
        TrainingConfig(
            epochs=400,
            batch_size=128,
            lr=3e-3,
            weight_decay=0.2,
            warmup_epochs=5,
            patience=100,
            max_minutes=3,
            ema_decay=0.998,
            cutmix=0.5,
        ),
    ),
}
AUTO, CONFIGURED = "auto", "model"
PRETRAINED_RECIPE = TrainingConfig(epochs=10, batch_size=64, lr=1e-3, lp_epochs=2, backbone_lr_scale=0.1, patience=3)


#: Recipe options that override the preset's value (TrainingConfig fields): name, type, meaning.
OPTIONS = (
    ("epochs", int_range(1, 10_000), "training epochs"),
    ("batch_size", int_range(2, 4096), "images per step"),
    ("lr", positive_float(10.0), "peak learning rate"),
    ("weight_decay", float_range(0.0, 1.0), "AdamW's weight decay (the head has none)"),
    ("patience", int_range(1, 10_000), "epochs without a better validation P@4 before stopping"),
    ("lp_epochs", int_range(0, 10_000), "linear-probe epochs (head only) before full fine-tuning"),
    ("backbone_lr_scale", float_range(0.0, 1.0), "learning rate of the backbone relative to the head"),
    ("wise_alpha", float_range(0.0, 1.0), "WiSE-FT: weight of the fine-tuned weights against the start"),
    ("max_minutes", positive_float(), "stop training after this many minutes (not before --min-epochs)"),
    (
        "min_epochs",
        int_range(0, 10_000),
        "the fewest epochs the time budget may plan: a slow machine trains past it rather than stop short",
    ),
    ("eval_share", positive_float(1.0), "the most of the training time the validation evaluations may take"),
    (
        "validation_share",
        float_range(0.0, 0.5),
        "share of each class's training photos held out to choose the epoch kept (0: none, the last epoch)",
    ),
    ("seed", int_range(0, 2**32 - 1), "random seed"),
    ("instance_weight", float_range(0.0, 10.0), "weight of the instance-discrimination loss (two views an image)"),
    ("head_scale", positive_float(100.0), "scale of the cosine head's logits (lower: a softer softmax)"),
    ("margin", float_range(0.0, 1.0), "additive margin on the true class's cosine (CosFace)"),
    ("label_smoothing", float_range(0.0, 0.9), "label smoothing of the class loss"),
    ("drop_path", float_range(0.0, 0.9), "stochastic depth: the last residual block's drop rate in training (0: off)"),
    ("cutmix", float_range(0.0, 1.0), "probability that a training batch is cut and mixed (CutMix; 0: never)"),
    (
        "ema_decay",
        float_range(0.0, 0.9999),
        "decay of the moving average of the weights that is evaluated and saved (0: none, the last step's)",
    ),
    (
        "whitening",
        float_range(0.0, 0.5),
        "with --embedding trunk: power of the partial whitening of the trunk's features, fitted on the "
        "training photos after training (0: none; 0.5: full whitening)",
    ),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=program("finetune"), description=description(__doc__))
    parser.add_argument("catalogue", nargs="?", type=Path, help="catalogue folder or manifest (default CATALOGUE_DIR)")
    parser.add_argument(
        "--preset",
        choices=[AUTO, CONFIGURED, *sorted(PRESETS)],
        default=AUTO,
        help="recipe: 'model' = the MODEL_NAME/MODEL_PRETRAINED encoder (LP-FT from pretrained weights); "
        "'small'/'large' = this project's architectures from scratch (2 CPU cores / a GPU); "
        "auto (default) = 'model' when MODEL_PRETRAINED is set, else 'large' on a GPU and 'small' on a CPU",
    )
    parser.add_argument("--output", type=Path, help="checkpoint directory (default models/<model>-<catalogue hash>)")
    parser.add_argument("--force", action="store_true", help="train even if the output holds a finished checkpoint")
    for field, kind, meaning in OPTIONS:
        recipes = ", ".join(f"{name} {getattr(config, field)}" for name, (_, config) in sorted(PRESETS.items()))
        help_text = f"{meaning} (default: the preset's; {recipes})"
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, dest=field, help=help_text)
    parser.add_argument(
        "--label",
        choices=LABELS,
        help="what a class is: category (default) or product (photos sharing a product_id: the same product "
        "ranks first; the evaluation reports category and product P@k)",
    )
    parser.add_argument(
        "--embedding",
        choices=EMBEDDINGS,
        help="what retrieval ranks by: the projection the class loss trains, or the trunk's features before "
        "it (they generalise better to categories never trained on; README) "
        f"(default: the preset's; {', '.join(f'{n} {c.embedding}' for n, (_, c) in sorted(PRESETS.items()))})",
    )
    parser.add_argument(
        "--bn-recalibration",
        action=argparse.BooleanOptionalAction,
        help="re-estimate BatchNorm's statistics on the training photos, unaugmented, once training is over "
        "(default: the preset's; "
        + ", ".join(f"{n} {'on' if c.bn_recalibration else 'off'}" for n, (_, c) in sorted(PRESETS.items()))
        + ")",
    )
    parser.add_argument(
        "--holdout-categories",
        action="store_true",
        help="train without the leave-categories-out protocol's held-out categories (see finetune.evaluate)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument(
        "--print-checkpoint", action="store_true", help="print only the checkpoint path on stdout (for scripts)"
    )
    return parser.parse_args(argv)


def preset_for(requested: str, settings: Settings, device: torch.device) -> str | None:
    """The preset `auto` stands for on this machine; None = the MODEL_* encoder (a pretrained start)."""
    if requested != AUTO:
        return None if requested == CONFIGURED else requested
    if settings.pretrained:
        return None
    return "large" if device.type == "cuda" else "small"


def choose_recipe(
    args: argparse.Namespace, settings: Settings, device: torch.device
) -> tuple[ModelSource, TrainingConfig]:
    preset = preset_for(args.preset, settings, device)
    if preset:
        model_name, config = PRESETS[preset]
        source = ModelSource.from_settings(
            settings.model_copy(update={"model_name": model_name, "model_pretrained": "", "model_checkpoint": None})
        )
    else:
        source = ModelSource.from_settings(settings)
        config = TrainingConfig(epochs=30, lr=2e-3, patience=6) if source.random_init else PRETRAINED_RECIPE
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainingConfig)}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    return source, dataclasses.replace(config, progress=not args.no_progress, **overrides)


def already_trained(output: Path, source: ModelSource, config: TrainingConfig, items: list[CatalogueItem]) -> str:
    """Why a finished checkpoint is reused, and what differs when this recipe or these catalogue
    ``items`` would train another (it is kept all the same: training again is minutes to hours,
    and `--force` says so)."""
    image_size = (model_config(source) or {}).get("vision_cfg", {}).get("image_size")
    changes = recipe_changes(output, dataclasses.asdict(config), image_size, dataclasses.asdict(TrainingConfig()))
    trained_on = read_info(output).get("catalogue_fingerprint")
    if trained_on not in (None, catalogue_fingerprint(items)):  # an --output kept across catalogue changes
        recipe = f", and with another recipe than this one ({', '.join(changes)})" if changes else ""
        return (
            f"checkpoint {output} was trained on another version of this catalogue (photos or categories changed "
            f"since){recipe}: using it; --force trains it again on this one"
        )
    if not changes:
        return f"checkpoint {output} is already trained for this catalogue (--force to train again)"
    return (
        f"checkpoint {output} is already trained for this catalogue, with another recipe than this one "
        f"({', '.join(changes)}): using it; --force trains it again with this recipe"
    )


@contextlib.contextmanager
def trained_alone(output: Path) -> Iterator[None]:
    """Hold ``output`` for one run: two runs into one checkpoint interleave its files (one's
    weights beside the other's metrics or ONNX export) and share the cores, each half as fast."""
    output.mkdir(parents=True, exist_ok=True)
    try:
        lock = ProcessLock(output)
    except StoreLockBusy as e:
        raise InvalidRequest(f"{output} is being trained by {e.holder}: wait for it or pass another --output") from None
    try:
        yield
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level)
        catalogue = read_catalogue(args.catalogue or settings.catalogue_source())
        items = split_by_holdout(catalogue.items)[0] if args.holdout_categories else catalogue.items
        if args.label == "product" and not any(item.product_id for item in items):
            raise CatalogueError("--label product needs a catalogue with a product_id column (a manifest)")
        device = resolve_device(settings.device)
        source, config = choose_recipe(args, settings, device)
        name = source.short_name
        suffix = ("-seen" if args.holdout_categories else "") + ("-product" if args.label == "product" else "")
        output = args.output or Path("models") / f"{name}-{catalogue_fingerprint(catalogue.items)[:10]}{suffix}"
        with trained_alone(output):
            if is_complete(output) and not args.force:
                message = already_trained(output, source, config, items)
                print(output if args.print_checkpoint else message)
                if args.print_checkpoint:
                    print(message, file=sys.stderr)
                return 0
            if args.force:
                (output / RESUME_FILE).unlink(missing_ok=True)  # start over, whatever an earlier run left
            result = fine_tune(items, source, output, config, settings.max_image_pixels, device)
    except (LookalikeError, OSError) as e:  # OSError: an --output that cannot be written, a full disk
        print(f"finetune: error: {stop_message(e)}", file=sys.stderr)
        return 2
    overall = result.metrics["overall"]
    out = sys.stderr if args.print_checkpoint else sys.stdout
    if args.print_checkpoint:
        print(result.output)
    print(
        f"checkpoint={result.output} epochs={result.epochs_run} best_epoch={result.best_epoch} "
        f"seconds={result.seconds:.0f} heldout_P@4={overall['P@4']:.3f} mAP@R={overall['mAP@R']:.3f} "
        f"head_accuracy={result.metrics['head_accuracy']:.3f}" + _unwhitened(result.metrics),
        file=out,
    )
    print(f"use it: MODEL_CHECKPOINT={shlex.quote(str(result.output))}", file=out)
    if result.stopped_by_budget:
        preset = preset_for(args.preset, settings, resolve_device(settings.device))
        arguments = rerun_arguments(sys.argv[1:] if argv is None else argv, preset)
        print(budget_note(result, config, overall["P@4"], arguments), file=out)
    return 0


def _unwhitened(metrics: dict) -> str:
    """The held-out figures before the whitening, where one was fitted: what it changed."""
    before = metrics.get("unwhitened")
    return f" unwhitened_P@4={before['P@4']:.3f} unwhitened_mAP@R={before['mAP@R']:.3f}" if before else ""


def budget_note(result, config: TrainingConfig, p_at_4: float, arguments: list[str]) -> str:
    """One line for whoever watches `make demo`: the budget held fewer epochs, and the command that
    trains them all, this run's ``arguments`` with the budget that holds every epoch at this run's
    pace, a tenth more for a pace that varies (on a CPU without bf16, 28 minutes held 36 of 90
    epochs of the small preset: all 90 need 77, not twice 28)."""
    budget = config.max_minutes or 0
    minutes = max(budget, result.seconds / 60)  # past the budget where `min_epochs` outlasted it
    enough = math.ceil(1.1 * minutes / max(result.epochs_run, 1) * result.epochs_planned)
    command = shlex.join(["python", "-m", "finetune", *arguments, "--max-minutes", str(enough), "--force"])
    held = (
        f"the {budget:g}-minute budget held {result.epochs_run} of {result.epochs_planned} planned epochs"
        if minutes <= budget
        else f"the {budget:g}-minute budget held fewer than the recipe's fewest, {result.epochs_run} of "
        f"{result.epochs_planned} planned epochs, which took {minutes:.0f} minutes"
    )
    return (
        f"note: {held} on {result.placement} (best epoch {result.best_epoch}, held-out P@4 {p_at_4:.3f}); "
        f"to train all {result.epochs_planned}: {command}"
    )


#: Options the note's command sets itself or leaves out, with the number of values each takes.
NOTE_REPLACES = {"--max-minutes": 1, "--preset": 1, "--force": 0, "--print-checkpoint": 0}


def rerun_arguments(argv: list[str], preset: str | None) -> list[str]:
    """This run's arguments (its catalogue, --output, recipe options) for the note's command,
    without the options it sets itself, and the preset `auto` stood for."""
    kept: list[str] = []
    values_to_skip = 0
    for argument in argv:
        name, has_value, _ = argument.partition("=")
        if values_to_skip:
            values_to_skip -= 1
        elif name in NOTE_REPLACES:
            values_to_skip = 0 if has_value else NOTE_REPLACES[name]
        else:
            kept.append(argument)
    return [*kept, *(["--preset", preset] if preset else [])]


if __name__ == "__main__":
    sys.exit(main())
