"""The meta-mapper: visual features -> a visual prefix of ``l`` vectors in the LM's embedding space.

Three mappers, all self-contained ``nn.Module`` s whose parameters can be swapped functionally
(``torch.func.functional_call``) so the MAML code adapts them without touching the module:

* ``AttentionMapper`` — the paper's meta-mapper. ``l`` learnable prefix vectors ``p`` are
  concatenated with the projected visual features ``x``; one set multi-head attention block
  (Q = K = V = [p; x]) with residuals, layer norms and a feed-forward residual; the first ``l``
  outputs are the visual prefix ``p*``.
* ``MLPMapper`` — the paper's ablation: one hidden layer, pooled feature -> ``l`` prefix vectors.
* ``PaperMapper`` — the authors' released mapper exactly (``mapper.kind: paper``): the prefix
  lives in the visual space, Q/K/V map the set straight to the LM size, one linear feed-forward;
  ~1.78 M parameters at CLIP 512 / GPT-2 768 against ``AttentionMapper``'s ~3.9 M.

Example::

    mapper = AttentionMapper(visual_dim=512, embed_dim=768, prefix_len=4, num_heads=8)
    prefix = mapper(torch.randn(2, 1, 512))    # (2, 4, 768)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class MapperShapeError(ValueError):
    """Visual features whose size does not match the mapper."""


class _FeatureStats(nn.Module):
    """What every mapper has: its sizes, and an optional standardisation of the visual features
    with fixed dataset statistics (``set_feature_stats``), stored as buffers so that checkpoints
    carry them."""

    visual_dim: int  # size of one visual token
    embed_dim: int  # the LM's embedding size (the prefix vectors' size)
    prefix_len: int  # prefix vectors per image
    standardize: bool
    feat_mean: torch.Tensor  # (visual_dim,) buffers
    feat_std: torch.Tensor

    def _init_stats(self, visual_dim: int, standardize: bool) -> None:
        self.standardize = standardize
        self.register_buffer("feat_mean", torch.zeros(visual_dim))
        self.register_buffer("feat_std", torch.ones(visual_dim))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension mean and standard deviation of the training features."""
        self.feat_mean.copy_(mean.reshape(-1))
        self.feat_std.copy_(std.reshape(-1).clamp(min=1e-3))

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, n, visual_dim)`` visual tokens (a pooled ``(B, visual_dim)`` becomes one token),
        refusing features of another size."""
        if features.dim() == 2:
            features = features.unsqueeze(1)  # (B, d) pooled -> (B, 1, d)
        if features.shape[-1] != self.visual_dim:
            raise MapperShapeError(
                f"visual features have size {features.shape[-1]}, the mapper expects "
                f"{self.visual_dim} (features from another encoder or mode?)"
            )
        return features

    def standardized(self, features: torch.Tensor) -> torch.Tensor:
        """The features standardised with the stored statistics (unchanged when ``standardize`` is off)."""
        if not self.standardize:
            return features
        return (features - self.feat_mean) / self.feat_std


class AttentionMapper(_FeatureStats):
    """Set multi-head attention over ``[prefix; projected visual tokens]``.

    Args:
        visual_dim: size of one visual token from the encoder.
        embed_dim: the LM's embedding size (also the prefix vectors' size).
        prefix_len: number of prefix vectors ``l`` (paper: 4).
        num_heads: attention heads; must divide ``embed_dim`` (paper: 8 for 768).
        ff_dim: hidden size of the feed-forward block (default: ``embed_dim``).
        dropout: dropout on attention output and feed-forward (only in train mode).
        output_scale: if set, each output vector is layer-normalised and multiplied by a learned
            scale initialised to this (e.g. the typical norm of the LM's token embeddings divided
            by sqrt(embed_dim)); None keeps the raw output (the paper's).
        norm_first: pre-LN block (LayerNorm before attention and feed-forward) instead of the
            original post-LN.
        standardize: standardise the features with fixed dataset statistics first.
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        embed_dim: int,
        prefix_len: int = 4,
        num_heads: int = 8,
        ff_dim: int | None = None,
        dropout: float = 0.1,
        output_scale: float | None = None,
        norm_first: bool = False,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self._init_stats(visual_dim, standardize)
        self.norm_first = norm_first
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        if prefix_len < 1:
            raise ValueError(f"prefix_len must be >= 1, got {prefix_len}")
        self.visual_dim, self.embed_dim, self.prefix_len = visual_dim, embed_dim, prefix_len
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.out_scale = nn.Parameter(torch.tensor(float(output_scale))) if output_scale else None
        ff_dim = ff_dim or embed_dim
        self.prefix = nn.Parameter(torch.empty(prefix_len, embed_dim))
        self.visual_proj = nn.Linear(visual_dim, embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ff = nn.Sequential(
            nn.Linear(embed_dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, embed_dim)
        )
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (the prefix is Xavier-initialised too)."""
        nn.init.xavier_uniform_(self.prefix)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Visual features ``(batch, n_tokens, visual_dim)`` -> prefix ``(batch, l, embed_dim)``."""
        features = self.tokens(features)  # (B, n, visual_dim)
        b = features.shape[0]
        x = self.visual_proj(self.standardized(features))  # (B, n, D)
        h = torch.cat([self.prefix.expand(b, -1, -1), x], dim=1)  # (B, l + n, D)
        if self.norm_first:
            h = h + self.dropout(self._attend(self.norm1(h)))
            h = h + self.dropout(self.ff(self.norm2(h)))
        else:
            h = self.norm1(h + self.dropout(self._attend(h)))
            h = self.norm2(h + self.dropout(self.ff(h)))
        out = h[:, : self.prefix_len]  # (B, l, D): the outputs at the learned prefix positions
        if self.out_scale is not None:
            out = F.layer_norm(out, (self.embed_dim,)) * self.out_scale
        return out

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the set: ``(B, T, D) -> (B, T, D)``."""
        q, k, v = rearrange(self.qkv(h), "b t (three h d) -> three b h t d", three=3, h=self.num_heads)
        # scaled_dot_product_attention scales scores by 1/sqrt(head_dim)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, head_dim)
        return self.out(rearrange(a, "b h t d -> b t (h d)"))


class MLPMapper(_FeatureStats):
    """One hidden layer from the pooled feature to ``l`` prefix vectors (the paper's ablation).

    Multi-token features are mean-pooled first.
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        embed_dim: int,
        prefix_len: int = 4,
        hidden_dim: int | None = None,
        dropout: float = 0.1,
        output_scale: float | None = None,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self._init_stats(visual_dim, standardize)
        self.visual_dim, self.embed_dim, self.prefix_len = visual_dim, embed_dim, prefix_len
        self.out_scale = nn.Parameter(torch.tensor(float(output_scale))) if output_scale else None
        hidden_dim = hidden_dim or (embed_dim * prefix_len) // 2
        self.net = nn.Sequential(
            nn.Linear(visual_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, prefix_len * embed_dim),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Visual features ``(batch, n_tokens, visual_dim)`` -> prefix ``(batch, l, embed_dim)``."""
        features = self.tokens(features).mean(1)  # (B, n, d) -> (B, d): the MLP reads one vector
        out = rearrange(self.net(self.standardized(features)), "b (l d) -> b l d", l=self.prefix_len)
        if self.out_scale is not None:
            out = F.layer_norm(out, (self.embed_dim,)) * self.out_scale
        return out


class PaperMapper(_FeatureStats):
    """The authors' meta-mapper as released (Najdenkoska et al., ICLR 2023), module by module.

    A set attention block in the style of the Set Transformer's MAB over ``[p; x]``, where the
    ``l`` learnable prefix vectors ``p`` live in the *visual* space (``visual_dim``) beside the
    visual tokens ``x``; there is no projection of the features first:

    * ``Q, K, V = q([p; x]), k([p; x]), v([p; x])``, each ``visual_dim -> embed_dim``;
    * heads are slices of ``visual_dim // num_heads`` channels of the ``embed_dim``-wide Q/K/V
      (at 512 / 768 with 8 "heads": 12 slices of 64), scores scaled by ``1/sqrt(visual_dim)``;
    * ``O = LN1(dropout(Q + softmax(Q K^T) V))`` — the residual is the projected query;
    * ``O = LN2(dropout(O + leaky_relu(ff(O))))`` — one linear ``embed_dim -> embed_dim``;
    * the first ``l`` outputs are the visual prefix.

    Unlike the released code, dropout (paper: 0.5) is only active in train mode.

    Args:
        visual_dim: size of one visual token (paper: 512).
        embed_dim: the LM's embedding size (paper: 768).
        prefix_len: prefix vectors ``l`` (paper: 4).
        num_heads: the authors' head count (paper: 8); it sets the slice width
            ``visual_dim // num_heads``, which must divide ``embed_dim``.
        dropout: dropout on both residual sums (paper: 0.5).
        output_scale: as in ``AttentionMapper`` (None: the raw output, the paper's).
        standardize: as in ``AttentionMapper`` (False: the raw features, the paper's).
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        embed_dim: int,
        prefix_len: int = 4,
        num_heads: int = 8,
        dropout: float = 0.5,
        output_scale: float | None = None,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self._init_stats(visual_dim, standardize)
        if prefix_len < 1:
            raise ValueError(f"prefix_len must be >= 1, got {prefix_len}")
        if visual_dim % num_heads or embed_dim % (visual_dim // num_heads):
            raise ValueError(f"num_heads={num_heads} must divide visual_dim={visual_dim}, and the "
                             f"slice width {visual_dim // max(num_heads, 1)} must divide "
                             f"embed_dim={embed_dim}")
        self.visual_dim, self.embed_dim, self.prefix_len = visual_dim, embed_dim, prefix_len
        self.head_dim = visual_dim // num_heads
        self.num_heads = embed_dim // self.head_dim  # the slices actually attended over
        self.out_scale = nn.Parameter(torch.tensor(float(output_scale))) if output_scale else None
        self.prefix = nn.Parameter(torch.randn(prefix_len, visual_dim))  # N(0, 1), as released
        self.q = nn.Linear(visual_dim, embed_dim)
        self.k = nn.Linear(visual_dim, embed_dim)
        self.v = nn.Linear(visual_dim, embed_dim)
        self.ff = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        for m in (self.q, self.k, self.v, self.ff):  # Xavier-uniform weights, zero biases
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Visual features ``(batch, n_tokens, visual_dim)`` -> prefix ``(batch, l, embed_dim)``."""
        features = self.tokens(features)  # (B, n, visual_dim)
        b = features.shape[0]
        x = torch.cat([self.prefix.expand(b, -1, -1), self.standardized(features)], dim=1)  # (B, l + n, V)
        q, k, v = (rearrange(f(x), "b t (h d) -> b h t d", d=self.head_dim) for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(self.visual_dim))  # (B, h, T, d)
        h = rearrange(q + a, "b h t d -> b t (h d)")  # (B, l + n, D): the residual is Q itself
        h = self.norm1(self.dropout(h))
        h = self.norm2(self.dropout(h + F.leaky_relu(self.ff(h))))
        out = h[:, : self.prefix_len]  # (B, l, D)
        if self.out_scale is not None:
            out = F.layer_norm(out, (self.embed_dim,)) * self.out_scale
        return out


def paper_mapper_param_count(visual_dim: int, embed_dim: int, prefix_len: int) -> int:
    """Exact trainable parameters of ``PaperMapper`` without an output scale (the authors' count).

    prefix l*V + q, k, v 3*(V+1)*D + feed-forward (D+1)*D + two LayerNorms 4D; at CLIP 512,
    GPT-2 768, l=4: 1,777,664.
    """
    v, d = visual_dim, embed_dim
    return prefix_len * v + 3 * (v + 1) * d + (d + 1) * d + 4 * d


def attention_mapper_param_count(
    visual_dim: int, embed_dim: int, prefix_len: int, ff_dim: int | None = None
) -> int:
    """Exact trainable parameters of ``AttentionMapper`` (the formula the tests check).

    prefix l*D + projection (V+1)*D + qkv (D+1)*3D + out (D+1)*D + two LayerNorms 4D
    + feed-forward (D+1)*F + (F+1)*D.
    """
    d, f = embed_dim, ff_dim or embed_dim
    return (
        prefix_len * d + (visual_dim + 1) * d + (d + 1) * 3 * d + (d + 1) * d + 4 * d
        + (d + 1) * f + (f + 1) * d
    )


MAPPERS = {"attention": AttentionMapper, "mlp": MLPMapper, "paper": PaperMapper}


Mapper = _FeatureStats
"""The type every mapper has (``AttentionMapper``, ``MLPMapper``, ``PaperMapper``)."""


def build_mapper(kind: str, **kwargs: Any) -> Mapper:
    """Build a mapper by kind (``"attention"``, ``"mlp"`` or ``"paper"``) with keyword arguments."""
    if kind not in MAPPERS:
        raise ValueError(f"unknown mapper {kind!r}; choose from {', '.join(MAPPERS)}")
    return MAPPERS[kind](**kwargs)


def _typical_embedding_norm(weight: torch.Tensor) -> float:
    """Median L2 norm of the rows of a token-embedding matrix."""
    return float(weight.norm(dim=-1).median())


def suggested_output_scale(embedding_weight: torch.Tensor) -> float:
    """A prefix scale matching the LM's token embeddings (their median norm / sqrt(D))."""
    return _typical_embedding_norm(embedding_weight) / math.sqrt(embedding_weight.shape[-1])
