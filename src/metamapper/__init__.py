"""metamapper: multimodal few-shot learning with a meta-learned mapper between a frozen image
encoder and a frozen language model (Najdenkoska et al., ICLR 2023), and beyond.

The public API (everything else may change)::

    from metamapper import MetaMapper
    model = MetaMapper.from_pretrained("runs/demo")
    adapted = model.adapt(support_images, ["This is a dax.", "This is a blicket."])
    adapted.answer([query_image], question="This is a")
"""

from metamapper.checkpoint import CheckpointError
from metamapper.config import Config, ConfigError, load_config
from metamapper.meta.maml import InnerLoop, adapt, meta_loss, task_losses
from metamapper.models.backbones import (
    BackboneError,
    LanguageModel,
    VisionEncoder,
    build_language_model,
    build_vision_encoder,
    make_tiny_backbones,
)
from metamapper.models.mapper import AttentionMapper, MLPMapper
from metamapper.models.metamapper import MetaMapper, Text
from metamapper.registry import (
    LANGUAGE_MODELS,
    TASK_SOURCES,
    VISION_ENCODERS,
    list_language_models,
    list_vision_encoders,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionMapper", "BackboneError", "CheckpointError", "Config", "ConfigError", "InnerLoop",
    "LANGUAGE_MODELS", "LanguageModel", "MLPMapper", "MetaMapper", "TASK_SOURCES", "Text",
    "VISION_ENCODERS", "VisionEncoder", "adapt", "build_language_model", "build_vision_encoder",
    "list_language_models", "list_vision_encoders", "load_config", "make_tiny_backbones",
    "meta_loss", "task_losses",
]
