"""Build a ``MetaMapper`` from the ``backbones`` and ``mapper`` config sections."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from metamapper.models.backbones import build_language_model, build_vision_encoder
from metamapper.models.mapper import build_mapper, suggested_output_scale
from metamapper.models.metamapper import MetaMapper

if TYPE_CHECKING:
    from metamapper.config import BackboneConfig, MapperConfig


def build_vision(bb: BackboneConfig):  # noqa: ANN201 - returns a VisionEncoder
    """The frozen vision encoder named by the backbones config."""
    kw = {"mode": bb.vision_mode, "seed": bb.seed}
    if bb.vision_path:
        kw["path"] = bb.vision_path
    return build_vision_encoder(bb.vision, **kw)


def build_lm(bb: BackboneConfig):  # noqa: ANN201 - returns a LanguageModel
    """The frozen language model named by the backbones config."""
    kw: dict[str, object] = {"seed": bb.seed}
    if bb.lm_path:
        kw["path"] = bb.lm_path
    return build_language_model(bb.lm, **kw)


def build_model(bb: BackboneConfig, mc: MapperConfig, *, visual_dim: int | None = None,
                with_vision: bool = True, vision: object | None = None) -> MetaMapper:
    """Frozen encoder + a freshly initialised mapper + frozen LM.

    Args:
        bb: the ``backbones`` config section.
        mc: the ``mapper`` config section.
        visual_dim: the visual feature size (needed when ``with_vision=False``).
        with_vision: build the image encoder too (not needed when features are cached).
        vision: an encoder already built from ``bb`` (reused instead of building another).
    """
    if vision is None and with_vision:
        vision = build_vision(bb)
    lm = build_lm(bb)
    dim = vision.dim if vision is not None else visual_dim
    if dim is None:
        raise ValueError("visual_dim is required when the model is built without its encoder")
    scale = suggested_output_scale(lm.model.get_input_embeddings().weight) if mc.output_norm else None
    kwargs: dict[str, object] = dict(
        visual_dim=dim, embed_dim=lm.embed_dim, prefix_len=mc.prefix_len, dropout=mc.dropout,
        output_scale=scale, standardize=mc.standardize,
    )
    kind = "paper" if mc.preset == "paper" else mc.kind  # the authors' mapper (PaperMapper)
    if kind == "attention":
        kwargs.update(num_heads=mc.num_heads, ff_dim=mc.ff_dim, norm_first=mc.norm_first)
    elif kind == "paper":
        kwargs.update(num_heads=mc.num_heads)
    mapper = build_mapper(kind, **kwargs)
    return MetaMapper(vision=vision, lm=lm, mapper=mapper)


def set_lm_dtype(model: MetaMapper, dtype: str) -> None:
    """Cast the frozen LM to ``dtype`` ("float32" or "bfloat16"); the mapper is left as it is.

    On CPU, bfloat16 also switches the LM to plain matmul-softmax attention: PyTorch's fused CPU
    attention runs its bfloat16 backward ~3x slower than float32 (``benchmarks/lm_dtype.py``).
    """
    lm = model.lm.model
    lm.to(getattr(torch, dtype))
    if dtype == "bfloat16" and not torch.cuda.is_available():
        lm.set_attn_implementation("eager")
