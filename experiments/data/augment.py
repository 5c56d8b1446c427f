"""Training-batch augmentation: random crops with zero padding and horizontal flips (CIFAR-10).

The standard CIFAR-10 augmentation of the conv-net literature (e.g. He et al. 2016, Sec. 4.2:
pad 4 pixels on each side, take a random 32x32 crop, flip horizontally with probability 1/2),
applied to each training batch as it is drawn. A dataset carries it as
:attr:`experiments.data.Dataset.train_transform`; the loop applies whatever transform the dataset
carries, with the run's seeded generator, without knowing the dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RandomCropFlip:
    """Random ``padding``-pixel shift (crop of the zero-padded image) and horizontal flip.

    Every example of a batch gets its own crop offset (uniform in ``[0, 2 * padding]`` on each
    axis) and flip (probability 1/2), drawn on the CPU from ``generator`` so that a run's
    augmentation depends only on its seed. Padding is with zeros: for standardised images, the
    training set's mean (torchvision pads the raw image with black instead).

    Args:
        padding: pixels of zero padding on each side (>= 0; 0 only flips).
        flip: also flip horizontally.

    Raises:
        ValueError: for a negative ``padding``.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``x`` ``(batch, channels, height, width)``; same shape and device."""
        n, _, height, width = x.shape
        p = self.padding
        out = x
        if p:
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(height, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            out = padded[batch, channel, rows, cols]
        if self.flip:
            flips = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            out = torch.where(flips[:, None, None, None], out.flip(-1), out)
        return out
