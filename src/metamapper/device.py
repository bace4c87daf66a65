"""Where a run computes: device selection, the frozen backbones' precision, one GPU per rank.

``runtime.device`` (and ``--device`` on every command) is ``auto`` or an explicit device:

* ``auto``: ``cuda:LOCAL_RANK`` when CUDA is available (each ``torchrun`` rank on its own GPU),
  else ``mps``, else ``cpu``;
* ``cpu``, ``mps``, ``cuda`` (= ``cuda:LOCAL_RANK``) or ``cuda:N``.

Asking for a device this machine does not have raises ``DeviceError`` (a ``ValueError``: the CLI
prints it as one line) naming the device and what is available.

``runtime.precision`` sets the dtype of the *frozen* backbones, when a run trains and when it is
loaded: ``float32`` or ``bfloat16`` set both; ``auto`` puts the LM in bfloat16 where the hardware
computes it natively (CUDA, or a CPU with AVX512-BF16/AMX: ``lm_dtype``) and the vision encoder in
bfloat16 on CUDA only (``backbone_dtype``), float32 elsewhere. The mapper, its
optimiser state and the loss stay float32 whatever it is (``MetaMapper.loss`` upcasts the logits). Casting the weights, rather than autocasting each op,
halves the backbones' memory and traffic and casts nothing per step: autocast re-casts frozen
weights at every call, since it only caches casts of tensors that require grad.

Example::

    device = setup_device(resolve_device("auto"))   # + TF32 matmuls, current CUDA device
    dtype = backbone_dtype("auto", device)            # torch.bfloat16 on CUDA
"""

from __future__ import annotations

import os
import re

import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
PRECISIONS = ("auto", "float32", "bfloat16")


class DeviceError(ValueError):
    """A device that is not valid or not available here (the message names what is)."""


def local_rank() -> int:
    """This process's rank on its machine (``torchrun`` sets ``LOCAL_RANK``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this machine offers, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def _unavailable(spec: str, why: str) -> DeviceError:
    return DeviceError(f"device {spec!r} is not available: {why}; available here: "
                       f"{', '.join(available_devices())}")


def _cuda(spec: str, index: int | None) -> torch.device:
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU found"
        raise _unavailable(spec, f"{build} (torch {torch.__version__})")
    n = torch.cuda.device_count()
    if index is None:  # one GPU per torchrun rank
        index = local_rank()
        if index >= n:
            raise _unavailable(spec, f"LOCAL_RANK {index} needs GPU {index}, this machine has {n}")
    elif index >= n:
        raise _unavailable(spec, f"this machine has {n} CUDA GPU{'s' if n > 1 else ''}")
    return torch.device("cuda", index)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device a device spec names on this machine.

    Args:
        spec: ``"auto"`` (or None), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or a
            ``torch.device``.

    Returns:
        A ``torch.device``; CUDA devices always carry an index.

    Raises:
        DeviceError: an invalid spec, or a device this machine does not have.

    Example::

        resolve_device("cpu")   # device(type='cpu')
        resolve_device("auto")  # cuda:LOCAL_RANK if CUDA is available, else mps, else cpu
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if not DEVICE_PATTERN.fullmatch(text):
        raise DeviceError(f"device must be auto, cpu, cuda, cuda:N or mps, got {str(spec)!r}")
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda("auto", None)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise _unavailable(text, "no Apple MPS backend")
        return torch.device("mps")
    return _cuda(text, int(text.split(":")[1]) if ":" in text else None)


def setup_device(device: torch.device) -> torch.device:
    """Make ``device`` this process's current device and turn on TF32 matmuls on CUDA.

    TF32 only affects float32 matmuls and convolutions on CUDA (the mapper's; the frozen
    backbones are bfloat16 there by default). Returns ``device``.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the caching allocator use the current device
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matmuls
    return device


def backbone_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The frozen vision encoder's dtype for ``runtime.precision`` on ``device`` (the LM's is
    ``lm_dtype``).

    ``auto``: bfloat16 on CUDA (tensor cores, half the memory), float32 elsewhere (CPUs without
    bfloat16 matmul units run it slower; MPS float32 is the safe default).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, precision)


def lm_dtype(precision: str, device: torch.device) -> str:
    """The frozen LM's dtype for ``runtime.precision`` on ``device``, while training and
    evaluating: ``float32`` / ``bfloat16`` as given; ``auto`` is bfloat16 where the hardware
    computes it natively (CUDA; a CPU with AVX512-BF16 or AMX, as oneDNN reports) and float32
    elsewhere, where bfloat16 matrix products are emulated (measured ~40x slower than float32 on an
    AVX2 CPU). A run is evaluated in the dtype it resolves to on the machine that loads it.

    Example::

        >>> lm_dtype("auto", torch.device("cuda", 0)), lm_dtype("float32", torch.device("cuda", 0))
        ('bfloat16', 'float32')
    """
    if precision == "auto" and device.type == "cpu" and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return str(backbone_dtype(precision, device)).removeprefix("torch.")  # the encoder's rule


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (for timing); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
