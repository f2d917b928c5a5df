"""CropFlip against torchvision's own crop and flip of single images."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from kdlab.data.augment import CropFlip


def test_crop_and_flip_match_torchvision_per_sample():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    aug = CropFlip(4, True)
    params = aug.draw(16, torch.Generator().manual_seed(0))
    out = aug.apply(images, params)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for img, (top, left, flip), got in zip(images, params.tolist(), out):
        want = TF.crop(TF.pad(img, [4]), top, left, 32, 32)
        want = TF.horizontal_flip(want) if flip else want
        assert torch.equal(got, want)
    assert len({tuple(p) for p in params.tolist()}) > 8  # one draw per sample, not per batch


def test_draws_cover_the_whole_range_and_no_flip_when_off():
    params = CropFlip(1, False).draw(500, torch.Generator().manual_seed(1))
    assert set(params[:, 0].tolist()) == {0, 1, 2} and set(params[:, 1].tolist()) == {0, 1, 2}
    assert params[:, 2].eq(0).all()
