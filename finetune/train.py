"""One epoch of training, the held-out evaluation, and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from finetune.data import ImageCache
from finetune.metrics import RetrievalScores, retrieval_scores
from finetune.model import RetrievalModel


def bf16_supported() -> bool:
    """bfloat16 autocast pays on CPUs with AMX or AVX512-BF16 (2-2.5x here); elsewhere stay fp32."""
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.cpu._is_amx_tile_supported() or (capability == "AVX512" and torch.cpu._is_avx512_bf16_supported())


def autocast(enabled: bool) -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to zero."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def train_one_epoch(
    model: RetrievalModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    label_smoothing: float,
    bar: tqdm,
    bf16: bool = False,
) -> float:
    """Returns the mean training loss."""
    model.train()
    losses = []
    for pixels, labels in loader:
        with autocast(bf16):
            logits = model(pixels.contiguous(memory_format=torch.channels_last), labels)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.update(len(labels))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return float(np.mean(losses))


@torch.inference_mode()
def embed_cache(
    model: RetrievalModel,
    cache: ImageCache,
    preprocess: Callable[[Image.Image], torch.Tensor],
    bf16: bool = False,
    batch_size: int = 128,
) -> np.ndarray:
    model.eval()
    chunks = []
    for start in range(0, len(cache.images), batch_size):
        pixels = torch.stack([preprocess(image) for image in cache.images[start : start + batch_size]])
        with autocast(bf16):
            chunks.append(model.embed(pixels.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)


def evaluate(
    model: RetrievalModel,
    queries: ImageCache,
    gallery: ImageCache,
    preprocess: Callable[[Image.Image], torch.Tensor],
    classes: list[str],
    bf16: bool = False,
) -> tuple[RetrievalScores, float]:
    """Held-out retrieval scores, and the head's classification accuracy on the queries."""
    query_embeddings = embed_cache(model, queries, preprocess, bf16)
    gallery_embeddings = embed_cache(model, gallery, preprocess, bf16)
    query_labels = [item.category for item in queries.items]
    scores = retrieval_scores(
        query_embeddings, query_labels, gallery_embeddings, [item.category for item in gallery.items]
    )
    with torch.inference_mode():
        predicted = model.head.cosine(torch.from_numpy(query_embeddings)).argmax(dim=1).numpy()
    accuracy = float(np.mean([classes[p] == label for p, label in zip(predicted, query_labels, strict=True)]))
    return scores, accuracy
