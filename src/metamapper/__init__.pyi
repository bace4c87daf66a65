# The public API of metamapper, listed once: type checkers read this stub, and __init__.py's
# lazy_loader.attach_stub imports each name from it on first use.
from ._version import __version__ as __version__
from .checkpoint import CheckpointError as CheckpointError
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import InnerLoop as InnerLoop
from .config import load_config as load_config
from .data.sources import TASK_SOURCES as TASK_SOURCES  # there with the built-in sources registered
from .data.sources import evaluation_tasks as evaluation_tasks
from .data.sources import list_datasets as list_datasets
from .data.sources import training_tasks as training_tasks
from .data.tasks import TaskSource as TaskSource
from .meta.maml import adapt as adapt
from .meta.maml import meta_loss as meta_loss
from .meta.maml import task_losses as task_losses
from .methods import METHODS as METHODS  # there with the built-in methods registered
from .methods import get_method as get_method
from .methods import train as train
from .models.backbones import BackboneError as BackboneError
from .models.backbones import LanguageModel as LanguageModel
from .models.backbones import VisionEncoder as VisionEncoder
from .models.backbones import build_language_model as build_language_model
from .models.backbones import build_vision_encoder as build_vision_encoder
from .models.backbones import make_tiny_backbones as make_tiny_backbones
from .models.mapper import AttentionMapper as AttentionMapper
from .models.mapper import MLPMapper as MLPMapper
from .models.metamapper import Text as Text
from .pretrained import MetaMapper as MetaMapper
from .registry import LANGUAGE_MODELS as LANGUAGE_MODELS
from .registry import VISION_ENCODERS as VISION_ENCODERS
from .registry import Method as Method
from .registry import list_language_models as list_language_models
from .registry import list_vision_encoders as list_vision_encoders
