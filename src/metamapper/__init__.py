"""metamapper: multimodal few-shot learning with a meta-learned mapper between a frozen image
encoder and a frozen language model (Najdenkoska et al., ICLR 2023), and beyond.

The public API (everything else may change)::

    from metamapper import MetaMapper
    model = MetaMapper.from_pretrained("runs/demo")
    adapted = model.adapt(support_images, ["This is a dax.", "This is a blicket."])
    adapted.answer([query_image], question="This is a")

Names are imported on first use, so ``import metamapper`` (and ``metamapper.config``) stays
light: torch loads with the first name that needs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any

try:  # one version, pyproject.toml's, as installed (the distribution is metamapper-fewshot)
    __version__ = importlib.metadata.version("metamapper-fewshot")
except importlib.metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_EXPORTS = {
    "CheckpointError": "metamapper.checkpoint",
    "Config": "metamapper.config",
    "ConfigError": "metamapper.config",
    "InnerLoop": "metamapper.config",
    "load_config": "metamapper.config",
    "evaluation_tasks": "metamapper.data.sources",
    "list_datasets": "metamapper.data.sources",
    "training_tasks": "metamapper.data.sources",
    "adapt": "metamapper.meta.maml",
    "meta_loss": "metamapper.meta.maml",
    "task_losses": "metamapper.meta.maml",
    "BackboneError": "metamapper.models.backbones",
    "LanguageModel": "metamapper.models.backbones",
    "VisionEncoder": "metamapper.models.backbones",
    "build_language_model": "metamapper.models.backbones",
    "build_vision_encoder": "metamapper.models.backbones",
    "make_tiny_backbones": "metamapper.models.backbones",
    "AttentionMapper": "metamapper.models.mapper",
    "MLPMapper": "metamapper.models.mapper",
    "Text": "metamapper.models.metamapper",
    "MetaMapper": "metamapper.pretrained",
    "LANGUAGE_MODELS": "metamapper.registry",
    "TASK_SOURCES": "metamapper.data.sources",  # there with the built-in sources registered
    "VISION_ENCODERS": "metamapper.registry",
    "TaskSource": "metamapper.registry",
    "list_language_models": "metamapper.registry",
    "list_vision_encoders": "metamapper.registry",
}

__all__ = [
    "AttentionMapper", "BackboneError", "CheckpointError", "Config", "ConfigError", "InnerLoop",
    "LANGUAGE_MODELS", "LanguageModel", "MLPMapper", "MetaMapper", "TASK_SOURCES", "TaskSource",
    "Text", "VISION_ENCODERS", "VisionEncoder", "adapt", "build_language_model",
    "build_vision_encoder", "evaluation_tasks", "list_datasets", "list_language_models",
    "list_vision_encoders", "load_config", "make_tiny_backbones", "meta_loss", "task_losses",
    "training_tasks",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metamapper' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from metamapper.checkpoint import CheckpointError
    from metamapper.config import Config, ConfigError, InnerLoop, load_config
    from metamapper.data.sources import evaluation_tasks, list_datasets, training_tasks
    from metamapper.meta.maml import adapt, meta_loss, task_losses
    from metamapper.models.backbones import (
        BackboneError,
        LanguageModel,
        VisionEncoder,
        build_language_model,
        build_vision_encoder,
        make_tiny_backbones,
    )
    from metamapper.models.mapper import AttentionMapper, MLPMapper
    from metamapper.models.metamapper import Text
    from metamapper.pretrained import MetaMapper
    from metamapper.registry import (
        LANGUAGE_MODELS,
        TASK_SOURCES,
        VISION_ENCODERS,
        TaskSource,
        list_language_models,
        list_vision_encoders,
    )
