"""Random crop (zero padding) and horizontal flip of whole image batches, with each sample's
draw as explicit parameters: on the device the batch lives on, and replayable.

Written by hand because torchvision's batched transforms (``transforms.v2`` on a 4-D tensor)
draw one crop and one flip for the whole batch, while training augmentation needs one per
sample; and because the augmentation-aware teacher cache (``teacher_cache`` with ``views``)
must store a draw and apply exactly it again later. A draw is three integers per sample:
the crop's top and left offsets into the padded image, and whether to flip. Crop and flip are
one gather, so a batch costs one kernel whatever its size.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F


@attrs.frozen
class CropFlip:
    """``pad`` pixels of zeros on each side, then a random crop back to the original size;
    a horizontal flip with probability 1/2 if ``flip`` (CIFAR: pad 4, flip; digits: pad 1)."""

    pad: int
    flip: bool

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws as an int64 tensor (n, 3): top, left, flip."""
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n, 1), generator=generator) if self.flip else torch.zeros(n, 1, dtype=torch.long)
        return torch.cat([offsets, flips], 1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), any dtype, and their draws (B, 3) -> the augmented images."""
        b, c, h, w = images.shape
        params = params.to(images.device)
        padded = F.pad(images, (self.pad,) * 4)
        rows = params[:, 0:1] + torch.arange(h, device=images.device)  # (B, H)
        cols = torch.arange(w, device=images.device).expand(b, w)
        cols = torch.where(params[:, 2:3].bool(), w - 1 - cols, cols) + params[:, 1:2]  # (B, W)
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        channel = torch.arange(c, device=images.device)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
