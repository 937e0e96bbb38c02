"""One epoch of training, the retrieval evaluation (of validation photos while training, of the
held-out queries after), the learning-rate schedule, the weight average and BatchNorm's
statistics re-estimated once training is over."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from finetune.data import ImageCache, Pixels, label_of
from finetune.model import RetrievalModel
from lookalike.device import Placement
from lookalike.metrics import RetrievalScores, retrieval_scores

#: Temperature of the instance-discrimination loss (SimCLR's default range).
INSTANCE_TEMPERATURE = 0.1
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


class WarmupCosine:
    """LR multiplier: linear warm-up, then cosine decay to zero at ``total_steps``.

    A callable object, not a closure, so the LR scheduler's state keeps ``total_steps``: the
    epoch loop shortens it when a time budget cannot hold every planned epoch, and a resumed
    run goes on with the shortened schedule.
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (Polyak averaging, as
    timm's ModelEmaV3): the average of the last few hundred steps generalises better than the
    last step's weights, for nothing but a copy of the model and one fused update a step.

    ``decay`` is reached gradually, ``(1 + n) / (10 + n)`` after ``n`` updates, so the first
    epochs' average is not held near the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self._live = model.state_dict()  # views of the model's own tensors: updated in place
        self.state = {name: tensor.detach().clone() for name, tensor in self._live.items()}
        floats = [name for name, tensor in self.state.items() if tensor.is_floating_point()]
        self._averaged = ([self.state[name] for name in floats], [self._live[name] for name in floats])
        self._copied = [(self.state[name], self._live[name]) for name in self.state if name not in floats]

    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self._averaged, 1 - decay)
        for averaged, live in self._copied:  # BatchNorm's step counters: copied, not averaged
            averaged.copy_(live)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """``model`` holds the averaged weights inside the block, its training weights again after."""
        training = {name: tensor.detach().clone() for name, tensor in self._live.items()}
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(training)


def recalibrate_batch_norm(tower: torch.nn.Module, pixels: Pixels, device: torch.device, batch_size: int = 128) -> bool:
    """Re-estimate the running statistics of ``tower``'s BatchNorm layers on ``pixels`` (the
    training photos through the val transform), in fp32, as the average over every photo; False
    when the tower has none (a ViT).

    Training leaves statistics of augmented crops (and, with a weight average, averages of
    statistics rather than those of the averaged weights); the product embeds clean, centred
    photos. On two small-preset checkpoints (2026-11-28, README) this raised held-out P@4 by
    0.001-0.004 and mAP@R by 0.010-0.011. Only the BatchNorm layers run in training mode: torch's
    `update_bn` would put the whole tower there, where stochastic depth drops blocks at random.
    """
    norms = [module for module in tower.modules() if isinstance(module, BATCH_NORMS)]
    count = len(pixels.values)
    if not norms or not count:
        return bool(norms)
    momenta = [norm.momentum for norm in norms]
    was_training = tower.training
    tower.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    try:
        with torch.no_grad():  # batches of at least batch_size (or all): none of one photo, which BatchNorm refuses
            for chunk in np.array_split(np.arange(count), max(1, count // batch_size)):
                batch = pixels.batch(int(chunk[0]), int(chunk[-1]) + 1).to(device)
                tower(batch.contiguous(memory_format=torch.channels_last))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        tower.train(was_training)
    return True


def cut_and_mix(pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix (Yun et al. 2019): one box of each image replaced by the same box of the image at
    the mirrored position in the batch. Returns the pixels, the pasted images' labels and the
    share of each image still its own (the box's area is uniform in [0, 1))."""
    height, width = pixels.shape[-2:]
    cut = math.sqrt(1.0 - float(torch.rand(())))
    centre_y, centre_x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(centre_y - round(height * cut / 2), 0), min(centre_y + round(height * cut / 2), height)
    left, right = max(centre_x - round(width * cut / 2), 0), min(centre_x + round(width * cut / 2), width)
    mixed = pixels.clone()
    mixed[..., top:bottom, left:right] = pixels.flip(0)[..., top:bottom, left:right]
    own_share = 1.0 - (bottom - top) * (right - left) / (height * width)
    return mixed, labels.flip(0), own_share


def train_one_epoch(
    model: RetrievalModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    label_smoothing: float,
    bar: tqdm,
    placement: Placement,
    instance_weight: float = 0.0,
    cutmix: float = 0.0,
    average: WeightAverage | None = None,
) -> float:
    """Returns the mean training loss."""
    model.train()
    losses = []
    for pixels, labels in loader:
        loss = training_loss(model, pixels, labels, label_smoothing, placement, instance_weight, cutmix)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update()
        losses.append(loss.detach())
        bar.update(len(labels))
    return float(torch.stack(losses).mean()) if losses else float("nan")  # one device sync per epoch


def training_loss(
    model: RetrievalModel,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
    placement: Placement,
    instance_weight: float = 0.0,
    cutmix: float = 0.0,
) -> torch.Tensor:
    """Forward pass and loss of one batch on the placement's device and precision.

    ``pixels`` of shape (B, 2, 3, H, W) are two augmented views of each image: the class loss is
    taken on the first, and ``instance_weight`` times an instance-discrimination loss (NT-Xent, as
    SimCLR) asks each view to find its twin among the batch, which keeps apart what one class
    holds instead of collapsing it onto the class. With probability ``cutmix`` a batch of one
    view is cut and mixed (`cut_and_mix`), its class loss shared between both images' labels.
    """
    device = placement.device
    labels = labels.to(device, non_blocking=True)
    two_views = pixels.dim() == 5
    if two_views:
        pixels = torch.cat(pixels.unbind(1))
    pixels = pixels.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    pasted, own_share = labels, 1.0
    if cutmix and not two_views and float(torch.rand(())) < cutmix:
        pixels, pasted, own_share = cut_and_mix(pixels, labels)
    with placement.autocast():
        embeddings = model.embed(pixels)
        first = embeddings[: len(labels)]
        logits = model.head(first, labels)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    if own_share < 1.0:
        pasted_logits = model.head(first, pasted).float()
        pasted_loss = F.cross_entropy(pasted_logits, pasted, label_smoothing=label_smoothing)
        loss = own_share * loss + (1 - own_share) * pasted_loss
    if two_views and instance_weight:
        loss = loss + instance_weight * nt_xent(embeddings.float())
    return loss


def nt_xent(embeddings: torch.Tensor, temperature: float = INSTANCE_TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss over 2B unit vectors whose i-th and (i+B)-th rows are views of one image."""
    count = len(embeddings) // 2
    similarity = embeddings @ embeddings.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    twins = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(embeddings.device)
    return F.cross_entropy(similarity, twins)


@torch.inference_mode()
def embed_cache(
    model: RetrievalModel,
    cache: ImageCache,
    preprocess: Callable[[Image.Image], torch.Tensor],
    placement: Placement,
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """(retrieval embeddings, the embeddings the head classifies) of every cached image."""
    model.eval()
    chunks: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for start in range(0, len(cache.images), batch_size):
        if cache.pixels is not None:  # through the transform once (`ImageCache.with_pixels`)
            pixels = cache.pixels.batch(start, start + batch_size)
        else:
            pixels = torch.stack([preprocess(image) for image in cache.images[start : start + batch_size]])
        pixels = pixels.to(placement.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with placement.autocast():
            for chunk, embedded in zip(chunks, model.embed_both(pixels), strict=True):
                chunk.append(embedded.float().cpu().numpy())
    if not chunks[0]:
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32)
    return np.concatenate(chunks[0]), np.concatenate(chunks[1])


@dataclass
class HeldOut:
    """Held-out retrieval by the embedding retrieval ranks by (``scores``) and by the one the head
    classifies (``trained``: the same unless the model ranks by its trunk), and the head's accuracy."""

    scores: RetrievalScores
    trained: RetrievalScores
    accuracy: float
    #: The gallery's embeddings that ``scores`` ranked (a whitening is fitted on them).
    gallery: np.ndarray


def evaluate(
    model: RetrievalModel,
    queries: ImageCache,
    gallery: ImageCache,
    preprocess: Callable[[Image.Image], torch.Tensor],
    classes: list[str],
    placement: Placement,
    label: str = "category",
) -> HeldOut:
    """Held-out retrieval scores by ``label``, and the head's classification accuracy on the queries."""
    query_embeddings, query_classified = embed_cache(model, queries, preprocess, placement)
    gallery_embeddings, gallery_classified = embed_cache(model, gallery, preprocess, placement)
    query_labels = [label_of(item, label) for item in queries.items]
    gallery_labels = [label_of(item, label) for item in gallery.items]
    scores = retrieval_scores(query_embeddings, query_labels, gallery_embeddings, gallery_labels)
    trained = scores
    if model.embedding != "projection":
        trained = retrieval_scores(query_classified, query_labels, gallery_classified, gallery_labels)
    with torch.inference_mode():
        cosine = model.head.cosine(torch.from_numpy(query_classified).to(placement.device))
        predicted = cosine.argmax(dim=1).cpu().numpy()
    accuracy = float(np.mean([classes[p] == label for p, label in zip(predicted, query_labels, strict=True)]))
    return HeldOut(scores, trained, accuracy, gallery_embeddings)
