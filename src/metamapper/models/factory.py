"""Build a ``MetaMapper`` from the ``backbones`` and ``mapper`` config sections."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from metamapper.device import backbone_dtype, lm_dtype
from metamapper.models.backbones import (
    LanguageModel,
    VisionEncoder,
    build_language_model,
    build_vision_encoder,
)
from metamapper.models.mapper import Mapper, build_mapper, suggested_output_scale
from metamapper.models.metamapper import MetaMapper

if TYPE_CHECKING:
    from metamapper.config import BackboneConfig, MapperConfig


def build_vision(bb: BackboneConfig, *, device: torch.device | None = None,
                 precision: str = "auto") -> VisionEncoder:
    """The frozen vision encoder named by the backbones config (on ``device`` in the dtype
    ``precision`` gives there, see ``metamapper.device.backbone_dtype``; default: CPU float32)."""
    kw = {"mode": bb.vision_mode, "seed": bb.seed}
    if bb.vision_path:
        kw["path"] = bb.vision_path
    vision = build_vision_encoder(bb.vision, **kw)
    if device is not None:
        vision.to(device=device, dtype=backbone_dtype(precision, device))
    return vision


def build_lm(bb: BackboneConfig) -> LanguageModel:
    """The frozen language model named by the backbones config."""
    kw: dict[str, object] = {"seed": bb.seed}
    if bb.lm_path:
        kw["path"] = bb.lm_path
    return build_language_model(bb.lm, **kw)


def build_model(bb: BackboneConfig, mc: MapperConfig, *, visual_dim: int | None = None,
                with_vision: bool = True, vision: VisionEncoder | None = None,
                device: torch.device | None = None, precision: str = "auto") -> MetaMapper:
    """Frozen encoder + a freshly initialised mapper + frozen LM.

    Everything is built on the CPU (the mapper's initialisation is the same on every device),
    then moved with ``place_model`` when ``device`` is given.

    Args:
        bb: the ``backbones`` config section.
        mc: the ``mapper`` config section.
        visual_dim: the visual feature size (needed when ``with_vision=False``).
        with_vision: build the image encoder too (not needed when features are cached).
        vision: an encoder already built from ``bb`` (reused instead of building another).
        device: where the model runs (a resolved device, ``metamapper.device.resolve_device``);
            None: the CPU, in float32.
        precision: ``runtime.precision``, the frozen backbones' dtype on ``device``
            (``place_model``).
    """
    if vision is None and with_vision:
        vision = build_vision(bb)
    lm = build_lm(bb)
    dim = vision.dim if vision is not None else visual_dim
    if dim is None:
        raise ValueError("visual_dim is required when the model is built without its encoder")
    scale = suggested_output_scale(lm.model.get_input_embeddings().weight) if mc.output_norm else None
    mapper = mapper_from_config(mc, visual_dim=dim, embed_dim=lm.embed_dim, output_scale=scale)
    model = MetaMapper(vision=vision, lm=lm, mapper=mapper)
    return place_model(model, device, precision=precision) if device is not None else model


def mapper_from_config(mc: MapperConfig, *, visual_dim: int, embed_dim: int,
                       output_scale: float | None) -> Mapper:
    """A fresh mapper of the ``mapper`` config section between features of ``visual_dim`` and an
    LM of ``embed_dim`` (raises ``ValueError`` when the config does not fit those sizes)."""
    kwargs: dict[str, object] = dict(
        visual_dim=visual_dim, embed_dim=embed_dim, prefix_len=mc.prefix_len, dropout=mc.dropout,
        output_scale=output_scale, standardize=mc.standardize,
    )
    if mc.kind == "attention":
        kwargs.update(num_heads=mc.num_heads, ff_dim=mc.ff_dim, norm_first=mc.norm_first)
    elif mc.kind == "paper":  # the authors' mapper (PaperMapper)
        kwargs.update(num_heads=mc.num_heads)
    return build_mapper(mc.kind, **kwargs)


def place_model(model: MetaMapper, device: torch.device, *, precision: str = "auto") -> MetaMapper:
    """Move ``model`` to ``device``: the frozen backbones in ``runtime.precision``'s dtypes there
    (``auto``: the LM in bfloat16 where the hardware computes it natively, ``device.lm_dtype``;
    the vision encoder in bfloat16 on CUDA, ``device.backbone_dtype``), each cast once from its
    float32 weights; the mapper in float32. Returns ``model``.

    Example::

        model = place_model(model, resolve_device("auto"))
    """
    model.to(device)
    if model.vision is not None:
        model.vision.to(backbone_dtype(precision, device))
    set_lm_dtype(model, lm_dtype(precision, device))
    return model


def set_lm_dtype(model: MetaMapper, dtype: str) -> None:
    """Cast the frozen LM to ``dtype`` ("float32" or "bfloat16"); the mapper is left as it is.

    On CPU, bfloat16 also switches the LM to plain matmul-softmax attention: PyTorch's fused CPU
    attention runs its bfloat16 backward ~3x slower than float32 (``benchmarks/lm_dtype.py``).
    """
    lm = model.lm.model
    lm.to(getattr(torch, dtype))
    if dtype == "bfloat16" and model.lm.device.type == "cpu":
        lm.set_attn_implementation("eager")
