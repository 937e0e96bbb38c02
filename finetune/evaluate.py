"""``python -m finetune.evaluate``: the retrieval report, several encoders side by side on one split.

Compared by default: the fine-tuned checkpoint (``--checkpoint`` or MODEL_CHECKPOINT), the same
encoder fused with colour at several weights (as the service fuses its two vectors), a whitened
checkpoint's trunk before its whitening, the untuned encoder it started from, and the HSV colour
histogram alone. Protocol in `finetune.data` (fixed query/gallery split) and `lookalike.metrics`
(P@1, P@4, P@10, mAP@R, colour@4). Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from finetune.data import LABELS, ImageCache, label_of, require_scorable, split_by_holdout, split_catalogue
from finetune.model import linear_projection
from lookalike.catalogue import CatalogueItem, read_catalogue
from lookalike.checkpoint import read_base_source, read_classes, read_info
from lookalike.classifier import CategoryClassifier
from lookalike.cli import description, float_list, program
from lookalike.colour import colour_histogram
from lookalike.encoder import ImageEncoder, load_visual
from lookalike.errors import LookalikeError, ModelLoadError
from lookalike.files import stop_message
from lookalike.logs import configure_logging
from lookalike.metrics import COLOUR_K, KS, retrieval_scores
from lookalike.model_source import ModelSource
from lookalike.settings import Settings

METRICS = [*(f"P@{k}" for k in KS), "mAP@R", f"colour@{COLOUR_K}"]
EMBED_BATCH = 64
COLOUR_WEIGHTS = (0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Candidate:
    """Something that turns images into unit-length embeddings, maybe with a classifier head."""

    name: str
    embed: Callable[[Sequence[Image.Image]], np.ndarray]
    classifier: CategoryClassifier | None = None


def encoder_candidate(name: str, encoder: ImageEncoder) -> Candidate:
    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        return np.concatenate(
            [encoder.embed_images(images[i : i + EMBED_BATCH]) for i in range(0, len(images), EMBED_BATCH)]
        )

    return Candidate(name, embed, encoder.classifier)


def trunk_candidate(name: str, encoder: ImageEncoder, mix: float) -> Candidate:
    """The cosine (1 - mix)·projection + mix·trunk, where the trunk's features are those before the
    projection the class loss trains (a timm tower with a projection head: the small and large
    presets). For a checkpoint that ranks by its trunk (``--embedding trunk``) the trunk's features
    are the stored ones (whitened, where it was) and the projection is the one kept beside its
    head, so mix 0 shows what ``--embedding projection`` would have ranked (through a whitening's
    inverse: from the trunk's strongest directions only)."""
    kept = encoder.classifier.projection if isinstance(encoder.classifier, CategoryClassifier) else None
    if kept is None:
        if linear_projection(encoder.visual) is not None:
            return Candidate(name, _projection_and_trunk(encoder, mix))
        # a ViT, or a checkpoint trained on products (no category head to keep it)
        raise ModelLoadError(f"{encoder.identity} has no timm trunk with a projection head: --trunk-mix needs one")
    trunk_vectors = encoder_candidate(name, encoder).embed

    def embed(images: Sequence[Image.Image]) -> np.ndarray:
        trunk = trunk_vectors(images)
        projected = trunk @ kept.T
        projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        return np.hstack([(1 - mix) ** 0.5 * projected, mix**0.5 * trunk]).astype(np.float32)

    return Candidate(name, embed)


def _projection_and_trunk(encoder: ImageEncoder, mix: float) -> Callable[[Sequence[Image.Image]], np.ndarray]:
    def mixed(pooled: torch.Tensor) -> torch.Tensor:
        both = F.normalize(encoder.visual.head(pooled).float(), dim=-1), F.normalize(pooled.float(), dim=-1)
        return torch.cat([(1 - mix) ** 0.5 * both[0], mix**0.5 * both[1]], dim=1)

    return lambda images: _from_trunk(encoder, images, mixed)


def unwhitened_candidate(name: str, encoder: ImageEncoder) -> Candidate:
    """A whitened checkpoint (`finetune.whitening`) ranked by its trunk's features before the
    whitening: what the whitening changes on this catalogue."""
    return Candidate(name, lambda images: _from_trunk(encoder, images, _unit))


def _unit(pooled: torch.Tensor) -> torch.Tensor:
    return F.normalize(pooled.float(), dim=-1)


def _from_trunk(
    encoder: ImageEncoder, images: Sequence[Image.Image], vectors: Callable[[torch.Tensor], torch.Tensor]
) -> np.ndarray:
    """``vectors`` of the trunk's pooled features of ``images``, in batches."""
    parts = []
    for start in range(0, len(images), EMBED_BATCH):
        pixels = encoder.pixels(images[start : start + EMBED_BATCH]).to(encoder.weights_dtype)
        with torch.inference_mode():
            parts.append(vectors(encoder.visual.trunk(pixels)).cpu().numpy())
    return np.concatenate(parts)


def colour_candidate() -> Candidate:
    return Candidate("colour histogram (HSV 8x8x8)", lambda images: np.stack([colour_histogram(i) for i in images]))


def fuse(embeddings: np.ndarray, colours: np.ndarray, weight: float) -> np.ndarray:
    """Vectors whose dot product is the service's fused score (1-w)·embedding + w·colour."""
    return np.hstack([np.sqrt(1 - weight) * embeddings, np.sqrt(weight) * colours])


def evaluate_candidates(
    queries: ImageCache,
    gallery: ImageCache | None,
    candidates: Sequence[Candidate],
    colour_weights: Sequence[float] = (),
    label: str = "category",
) -> dict:
    """Scores of every candidate on the same split (relevant = same ``label``); the first one also
    fused with colour at each weight. ``gallery`` None: leave-one-out among the queries."""
    leave_one_out = gallery is None
    gallery = queries if gallery is None else gallery
    query_labels = [label_of(item, label) for item in queries.items]
    gallery_labels = [label_of(item, label) for item in gallery.items]
    colours = colour_candidate().embed(queries.images), colour_candidate().embed(gallery.images)
    report = {}

    def add(name: str, query_vectors: np.ndarray, gallery_vectors: np.ndarray, accuracy: float | None) -> None:
        scores = retrieval_scores(
            query_vectors, query_labels, gallery_vectors, gallery_labels, colours=colours, leave_one_out=leave_one_out
        )
        report[name] = {"overall": scores.overall, "per_category": scores.per_category, "head_accuracy": accuracy}

    for index, candidate in enumerate(candidates):
        query_embeddings = candidate.embed(queries.images)
        gallery_embeddings = query_embeddings if leave_one_out else candidate.embed(gallery.images)
        accuracy = None
        if candidate.classifier is not None:
            predicted = [candidate.classifier.predict(e)[0] for e in query_embeddings]
            accuracy = float(np.mean([p == label for p, label in zip(predicted, query_labels, strict=True)]))
        add(candidate.name, query_embeddings, gallery_embeddings, accuracy)
        for weight in colour_weights if index == 0 else ():
            fused_queries, fused_gallery = (
                fuse(query_embeddings, colours[0], weight),
                fuse(gallery_embeddings, colours[1], weight),
            )
            add(f"{candidate.name} + colour_weight={weight:g}", fused_queries, fused_gallery, None)
    return report


def markdown(report: dict, per_label: bool = True) -> str:
    """The overall table, then P@4 per category (worst categories of the first model first)."""
    lines = ["| encoder | " + " | ".join(METRICS) + " | head accuracy |", "|---" * (len(METRICS) + 2) + "|"]
    for name, result in report.items():
        values = " | ".join(f"{result['overall'][m]:.3f}" for m in METRICS)
        accuracy = "–" if result["head_accuracy"] is None else f"{result['head_accuracy']:.3f}"
        lines.append(f"| {name} | {values} | {accuracy} |")
    if not per_label:  # one row per product would bury the table
        return "\n".join(lines)
    names = list(report)
    first = report[names[0]]["per_category"]
    categories = sorted(first, key=lambda c: first[c]["P@4"])
    lines += [
        "",
        "P@4 per category (worst first):",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for category in categories:
        lines.append(
            f"| {category} | " + " | ".join(f"{report[n]['per_category'][category]['P@4']:.3f}" for n in names) + " |"
        )
    return "\n".join(lines)


def build_candidates(args: argparse.Namespace, settings: Settings) -> list[Candidate]:
    candidates = []
    checkpoint = args.checkpoint or settings.model_checkpoint
    if checkpoint is not None:
        tuned = ImageEncoder.from_settings(settings.model_copy(update={"model_checkpoint": checkpoint}))
        candidates.append(encoder_candidate(f"fine-tuned ({Path(checkpoint).name})", tuned))
        if (read_info(Path(checkpoint)).get("training") or {}).get("whitening"):
            candidates.append(unwhitened_candidate("fine-tuned, its trunk before the whitening", tuned))
        candidates += [trunk_candidate(f"fine-tuned, trunk mix {mix:g}", tuned, mix) for mix in args.trunk_mix]
        base = untuned_source(Path(checkpoint))
        candidates.append(encoder_candidate(f"untuned ({base.label})", untuned_encoder(base)))
    else:
        encoder = ImageEncoder.from_settings(settings)
        candidates.append(encoder_candidate(f"untuned ({encoder.identity.split('@')[0]})", encoder))
    if not args.no_colour:
        candidates.append(colour_candidate())
    return candidates


def untuned_source(checkpoint: Path) -> ModelSource:
    """What a checkpoint started from: recorded as a structure since this version; older
    checkpoints recorded only the label of an open_clip architecture and its weights."""
    recorded = read_base_source(checkpoint)
    if recorded is not None:
        return recorded
    name, _, weights = read_info(checkpoint).get("base_model", "").partition("/")
    if not name or not weights or ":" in name:
        raise ModelLoadError(f"{checkpoint} does not record the model it was trained from: retrain it to compare")
    return ModelSource("random-init", name) if weights == "random-init" else ModelSource("tag", name, weights)


def untuned_encoder(source: ModelSource) -> ImageEncoder:
    """The encoder a checkpoint started from (random-init weights are seeded: the same as then)."""
    visual, preprocess = load_visual(source)
    return ImageEncoder(visual, preprocess, source.label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=program("finetune.evaluate"), description=description(__doc__))
    parser.add_argument("catalogue", nargs="?", type=Path, help="catalogue (default CATALOGUE_DIR)")
    parser.add_argument("--checkpoint", type=Path, help="fine-tuned checkpoint (default MODEL_CHECKPOINT)")
    parser.add_argument("--no-colour", action="store_true", help="leave out the colour-histogram baseline")
    parser.add_argument(
        "--colour-weights",
        type=float_list(0.0, 1.0),
        default=list(COLOUR_WEIGHTS),
        help="colour weights of the fused rows, comma-separated (empty: none)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("reports"), help="where JSON and Markdown go")
    parser.add_argument(
        "--trunk-mix",
        type=float_list(0.0, 1.0),
        default=[],
        help="also rank the checkpoint by its trunk's features (before the projection), mixed m with the "
        "projection's cosine, for each comma-separated m (issue 18); on a checkpoint that ranks by its trunk, "
        "0 ranks by the projection it keeps beside its head",
    )
    parser.add_argument(
        "--label",
        choices=LABELS,
        default="category",
        help="relevant = the same category (default) or the same product (product_id); the split follows it",
    )
    parser.add_argument(
        "--holdout-categories",
        action="store_true",
        help="leave-categories-out protocol: report retrieval on the held-out categories (never trained on by "
        "a checkpoint made with `finetune --holdout-categories`; each of their photos a query against all the "
        "others) and, separately, on the categories trained on (their fixed query/gallery split)",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    try:
        settings = Settings.from_env()
        catalogue = read_catalogue(args.catalogue or settings.catalogue_source())
        candidates = build_candidates(args, settings)
        args.output_dir.mkdir(parents=True, exist_ok=True)  # before the work, if it cannot be written
    except (LookalikeError, OSError) as e:
        return _stopped(e)
    if args.holdout_categories:
        seen, unseen = split_by_holdout(catalogue.items)
        parts = {"unseen categories (never trained on)": (unseen, True), "seen categories (trained on)": (seen, False)}
        _warn_if_trained_on(args.checkpoint or settings.model_checkpoint, {i.category for i in unseen})
    else:
        parts = {"all categories": (catalogue.items, False)}
    results, sections = {}, []
    for title, (items, leave_one_out) in parts.items():
        try:
            queries, gallery = _queries_and_gallery(items, leave_one_out, args.label, settings.max_image_pixels)
        except LookalikeError as e:
            return _stopped(e, f"{title}: ")
        report = evaluate_candidates(queries, gallery, candidates, args.colour_weights, args.label)
        split_info = {"queries": len(queries.items), "gallery": None if gallery is None else len(gallery.items)}
        results[title] = {"split": split_info, "models": report}
        if gallery is None:
            heading = f"## {title}: all {len(queries.items)} photos as queries, each against the others (leave-one-out)"
        else:
            heading = f"## {title}: held-out queries {split_info['queries']}, gallery {split_info['gallery']}"
        sections.append(
            f"{heading}, relevant = same {args.label}\n\n{markdown(report, per_label=args.label == 'category')}"
        )
    only = next(iter(results.values())) if len(results) == 1 else {"parts": results}
    try:
        (args.output_dir / "evaluation.json").write_text(json.dumps(only, indent=2))
        (args.output_dir / "evaluation.md").write_text("\n\n".join(sections) + "\n")
    except OSError as e:  # a full disk
        return _stopped(e)
    print("\n\n".join(sections))
    return 0


def _stopped(error: LookalikeError | OSError, part: str = "") -> int:
    """The one line a stopped evaluation prints, and its exit status."""
    print(f"evaluate: error: {part}{stop_message(error)}", file=sys.stderr)
    return 2


def _queries_and_gallery(
    items: Sequence[CatalogueItem], leave_one_out: bool, label: str, max_pixels: int
) -> tuple[ImageCache, ImageCache | None]:
    """The fixed query/gallery split; or, for categories no checkpoint trained on, every photo as a
    query against all the others (137 -> 673 queries on the shared catalogue: less noise)."""
    if leave_one_out:
        photos = ImageCache.load(list(items), None, max_pixels)
        require_scorable(photos.items, None, label)
        return photos, None
    split = split_catalogue(items, label=label)
    queries = ImageCache.load(split.queries, None, max_pixels)
    gallery = ImageCache.load(split.gallery, None, max_pixels)
    require_scorable(queries.items, gallery.items, label)
    return queries, gallery


def _warn_if_trained_on(checkpoint: Path | None, unseen: set[str]) -> None:
    """A checkpoint trained on every category makes the 'unseen' table meaningless: say so."""
    if checkpoint is None:
        return
    classes = read_classes(Path(checkpoint))
    if classes is None:
        return
    overlap = set(classes) & unseen
    if overlap:
        print(
            f"evaluate: warning: {Path(checkpoint).name} was trained on {len(overlap)} of the held-out "
            "categories; train with `python -m finetune --holdout-categories` for this protocol",
            file=sys.stderr,
        )


if __name__ == "__main__":
    sys.exit(main())
