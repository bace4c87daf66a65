"""Features of a fixed set of images held in memory, looked up by image key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from metamapper.data.feature_cache import FeatureCache
from metamapper.data.tasks import ImageSource
from metamapper.models.backbones import VisionEncoder, cache_dir


class FeatureTable:
    """``table(keys) -> (len(keys), n_tokens, dim)`` from one in-memory tensor.

    Build it with ``FeatureTable.from_cache``, which encodes missing images once (the frozen
    encoder's output never changes) and reuses the on-disk cache afterwards.
    """

    def __init__(self, keys: Sequence[str], features: torch.Tensor) -> None:
        if len(keys) != features.shape[0]:
            raise ValueError(f"{len(keys)} keys for {features.shape[0]} feature rows")
        self.index = {k: i for i, k in enumerate(keys)}
        self.features = features
        self.skipped: list[tuple[str, str]] = []

    @property
    def dim(self) -> int:
        return self.features.shape[-1]

    def __contains__(self, key: object) -> bool:
        return key in self.index

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device: torch.device | str) -> FeatureTable:
        """This table with its features on ``device`` (moved once; the lookups then stay there)."""
        table = FeatureTable.__new__(FeatureTable)
        table.index, table.skipped = self.index, self.skipped
        table.features = self.features.to(device)
        return table

    def __call__(self, keys: Sequence[str]) -> torch.Tensor:
        """Features of ``keys``: ``(len(keys), n_tokens, dim)`` on the table's device."""
        try:
            rows = [self.index[k] for k in keys]
        except KeyError as e:
            raise KeyError(f"no features for image {e.args[0]!r} (skipped or not cached)") from None
        return self.features[torch.tensor(rows, dtype=torch.long, device=self.features.device)]

    @classmethod
    def from_cache(
        cls,
        encoder: VisionEncoder,
        source: ImageSource,
        keys: Sequence[str],
        *,
        root: str | Path | None = None,
        batch_size: int = 64,
        progress: bool = True,
        device: torch.device | str | None = None,
    ) -> FeatureTable:
        """Fill the feature cache for ``keys`` (only what is missing) and load them.

        The cache stays on disk; the loaded table is moved to ``device`` once (default: CPU).
        Images that cannot be read are skipped and listed in ``table.skipped``.
        """
        cache = FeatureCache(Path(root) if root else cache_dir() / "features", encoder)
        unique = list(dict.fromkeys(keys))
        report = cache.fill(source, unique, batch_size=batch_size, progress=progress)
        bad = {k for k, _ in report.skipped}
        good = [k for k in unique if k not in bad]
        table = cls(good, cache.get(source, good).float())
        table.skipped = list(report.skipped)
        return table.to(device) if device is not None else table
