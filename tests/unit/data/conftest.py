"""Shared helpers for the data tests: tiny image files and a counting fake encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamapper.data.fashion import find_fashion_root
from metamapper.models.backbones import VisionEncoder


class CountingEncoder(VisionEncoder):
    """A tiny deterministic encoder that counts its forward passes and encoded images.

    Features: the mean RGB of the image (4x4 thumbnail) through a fixed linear map, 2 tokens.
    """

    def __init__(self, identity: str = "counting:v1") -> None:
        super().__init__()
        self.identity = identity
        self.dim, self.n_tokens = 4, 2
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3, 4)
        self.calls = 0
        self.images = 0

    def preprocess(self, images):
        arrays = [np.asarray(im.convert("RGB").resize((4, 4)), dtype=np.float32) for im in images]
        return torch.from_numpy(np.stack(arrays)).mean((1, 2)) / 255.0  # (B, 3)

    def forward(self, pixels):
        self.calls += 1
        self.images += len(pixels)
        x = self.proj(pixels)  # (B, 4)
        return torch.stack([x, 2 * x], 1)  # (B, 2, 4)


@pytest.fixture
def counting_encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture
def make_encoder():
    """Factory of ``CountingEncoder(identity)``."""
    return CountingEncoder


@pytest.fixture
def fashion_root() -> Path:
    """The real Fashion-MNIST where it already is (Debian's, else a checked download that
    ``make setup`` or ``metamapper download`` made); the test skips where there is none."""
    root = find_fashion_root()
    if root is None:
        pytest.skip("Fashion-MNIST is not here (apt-get install dataset-fashion-mnist, or "
                    "metamapper download fashion-mnist)")
    return root


def _write_image(path: Path, color=(255, 0, 0), size=(8, 6), fmt: str | None = None) -> Path:
    """Write a small solid-colour image (JPEG or PNG by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def write_image():
    """``write_image(path, color=(255, 0, 0), size=(8, 6))``: a small solid-colour image file."""
    return _write_image
