"""What one fine-tuning run is asked to do: its recipe, one frozen dataclass (presets and flags
fill it in `finetune.__main__`; resume files compare it, `finetune.epochs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: At most this share of training time goes to the per-epoch validation (the default of
#: `TrainingConfig.eval_share`).
EVAL_SHARE = 0.25
VALIDATION_SHARE = 0.1


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
    #: The fewest epochs a time budget may plan (at most ``epochs``): on a slow CPU training runs
    #: past ``max_minutes`` rather than stop short of them, so the model's quality does not depend
    #: on the CPU model, only its time does (0: the budget alone decides).
    min_epochs: int = 0
    precision: str = "auto"  # "auto" (bf16 on a GPU, measured on a CPU), "bf16" or "fp32"
    progress: bool = True
    #: What a class is: "category", or "product" (photos sharing a product_id; "the same product"
    #: then ranks first, and the head predicts products, so the service's category=auto is off).
    label: str = "category"
    #: What retrieval ranks by: "projection" (the embedding the head classifies) or "trunk" (the
    #: features before it; a checkpoint then ends at the trunk, `finetune.model`).
    embedding: str = "projection"
    #: With ``embedding="trunk"``: the power of the partial whitening fitted on the training photos'
    #: trunk features once training is over, which then replaces the projection in the saved tower
    #: (`finetune.whitening`; 0 = none, the trunk's features as they are).
    whitening: float = 0.0
    #: Weight of an instance-discrimination loss beside the class loss (two views an image; 0 = off).
    instance_weight: float = 0.0
    #: Probability that a training batch is cut and mixed (CutMix, `finetune.train.cut_and_mix`; 0 = off).
    cutmix: float = 0.0
    #: Stochastic depth of a timm tower's residual blocks in training (`add_stochastic_depth`; 0 = off).
    drop_path: float = 0.0
    #: Re-estimate BatchNorm's statistics on the training photos as the product sees them once
    #: training is over (`finetune.train.recalibrate_batch_norm`; False: as training left them).
    bn_recalibration: bool = False
    #: Decay of the moving average of the weights that is evaluated and saved (`WeightAverage`;
    #: 0 = off: the weights of the last step).
    ema_decay: float = 0.0
    #: Evaluate every N epochs (default: as often as keeps evaluation <= eval_share of the time).
    eval_every: int | None = None
    #: The most of the training time the validation evaluations may take (when eval_every is None).
    eval_share: float = EVAL_SHARE
    #: Share of each class's training photos held out of training to choose the epoch kept (and stop
    #: by patience) without reading the held-out queries that measure it. 0: none, the last epoch is
    #: kept. (Before, the held-out queries chose it, so the figures they gave were their pick.)
    validation_share: float = VALIDATION_SHARE
    #: Write the resume file at most this often (and after the last epoch).
    resume_every_s: float = 20.0
    #: Hold the training images on the device and augment them there (finetune.device_data);
    #: None: on a GPU (unless instance_weight needs two PIL views), not on a CPU.
    data_on_device: bool | None = None

    def holds_data_on(self, device: torch.device) -> bool:
        if self.data_on_device is None:
            return device.type == "cuda" and not self.instance_weight
        return self.data_on_device
