"""Mixup and CutMix over a training batch, as timm's `Mixup` in batch mode (the released recipe)."""

import numpy as np
import torch

from .augmentation import keyed_uniform, splitmix64
from .transforms import collate_image_classification


# The `keyed_uniform` stream of Mixup/CutMix (the transforms use 0: crop and flip, 1: erasing, 2: RandAugment).
MIXUP_STREAM = 3


class MixupCutmixCollator:
    """Mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) over a training batch, as timm's `Mixup` in its default
    batch mode, which DeiT and the MJP release train with: one mixing coefficient per batch, each image mixed with
    the batch's reverse, labels turned into label-smoothed soft targets mixed alike.

    A batch is CutMix with probability `switch_prob` when both are on. CutMix pastes a box of area about `1 - lam` and
    corrects `lam` to the pasted area. Only batches whose examples carry `index_key` (the training set's, see
    `ImageClassificationTransform`) are mixed, with randomness keyed to `(seed, epoch, their indices)`; evaluation
    batches are only stacked. `MJPTrainer` trains on the soft targets with a soft cross-entropy.
    """

    def __init__(
        self,
        num_labels: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        index_key: str = "sample_index",
        seed: int = 0,
    ):
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (0 turns it off; DeiT: mixup 0.8, cutmix 1.0).")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError(
                "mixup_alpha and cutmix_alpha are both 0: nothing to mix; use collate_image_classification."
            )
        for name, value in (("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value} must be in [0, 1].")
        if num_labels < 2:
            raise ValueError(f"num_labels={num_labels}: mixing labels needs at least 2 classes.")
        self.num_labels = num_labels
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.index_key = index_key
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self, indices: np.ndarray) -> np.random.Generator:
        # The transforms' keyed draws (`keyed_uniform`), on a stream of their own, for the batch as a set of samples;
        # they seed the generator that draws the Beta-distributed coefficient, as the erasing noise is seeded.
        with np.errstate(over="ignore"):
            batch_key = np.bitwise_xor.reduce(splitmix64(indices.astype(np.uint64)))
        uniform = keyed_uniform(self.seed, self.epoch, [batch_key], draws=1, stream=MIXUP_STREAM)
        return np.random.default_rng(int(uniform[0, 0] * 2**53))

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_labels
        targets = torch.full((len(labels), self.num_labels), off)
        return targets.scatter_(1, labels.long().view(-1, 1), 1 - self.label_smoothing + off)

    def __call__(self, examples: list[dict]) -> dict:
        batch = collate_image_classification(examples)
        if self.index_key not in examples[0] or "labels" not in batch:
            return batch
        rng = self._rng(np.array([int(example[self.index_key]) for example in examples]))
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        lam = float(rng.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
        pixels, partner = batch["pixel_values"], batch["pixel_values"].flip(0)
        if use_cutmix:
            height, width = pixels.shape[-2:]
            cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
            centre_y, centre_x = int(rng.integers(height)), int(rng.integers(width))
            top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
            left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
            pixels = pixels.clone()
            pixels[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            pixels = pixels * lam + partner * (1 - lam)
        targets = self.soft_targets(batch["labels"])
        return {"pixel_values": pixels, "labels": targets * lam + targets.flip(0) * (1 - lam)}
