"""Hub-style model folders: export a trained mapper, load it by folder or Hub id, push it.

An exported folder (``MetaMapper.save_pretrained``, ``metamapper export``) holds::

    config.json        the format, the backbones' identities and sizes, the run's config, the
                       SHA-256 of the weights: what rebuilding the model and refusing other
                       backbones need
    model.safetensors  the mapper's tensors only: ``mapper.*`` (parameters and the feature
                       statistics buffers) and ``inner_lrs.*`` (Meta-SGD's learned rates, if any);
                       never the frozen backbones, which load from their own sources
    README.md          the model card (``model_card.py``)

``resolve_checkpoint`` is the one place where what ``--checkpoint`` or ``from_pretrained`` got
becomes a ``Checkpoint``: a run folder (or a ``checkpoints/step-*`` folder in it), an exported
folder, or a Hub id ``owner/name`` fetched with ``huggingface_hub.snapshot_download`` (which
honours ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and what the cache already holds). A local folder
wins over a Hub id spelled the same.

Nothing read from a folder is trusted: ``config.json`` is checked key by key and type by type,
the weights are safetensors (no pickle) whose checksum must match, every tensor finite and
named as a mapper's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from metamapper._version import __version__
from metamapper.checkpoint import (
    CKPT_DIR,
    Checkpoint,
    CheckpointError,
    select_checkpoint,
    write_atomic,
)
from metamapper.config import ConfigError, config_from_dict

PRETRAINED_FORMAT = "metamapper-pretrained-1"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
MAX_CONFIG_BYTES = 4 << 20  # a config.json is a few KiB; a bigger one is refused unread
WEIGHT_PREFIXES = ("mapper.", "inner_lrs.")  # what a mapper's weights are named (never a backbone)

# config.json: key -> the types its value may have (bool is no int here)
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,),
    "library_name": (str,),
    "metamapper_version": (str,),
    "method": (str,),  # train.method of the run
    "mapper": (str,),  # mapper.kind
    "prefix_len": (int,),
    "vision_identity": (str, type(None)),  # backbones' identities (models.backbones: identity)
    "lm_identity": (str,),
    "visual_dim": (int,),
    "embed_dim": (int,),
    "step": (int,),  # the training update the weights are from
    "sha256": (str,),  # of model.safetensors
    "source_sha256": (str, type(None)),  # of the run's checkpoint the weights came from
    "config": (dict,),  # the run's config (config.Config.to_dict())
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class HubError(OSError):
    """The Hub could not be reached or refused a request (one line naming the repository)."""


def is_hub_id(name: str) -> bool:
    """Whether ``name`` is spelled as a Hub model id ``owner/name`` (not a path like ``./x``).

    Example::

        >>> is_hub_id("someone/tiny-mapper"), is_hub_id("/tmp/run"), is_hub_id("runs")
        (True, False, False)
    """
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def is_pretrained_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an exported folder (``config.json`` + ``model.safetensors``)."""
    p = Path(path)
    return (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# --------------------------------------------------------------------------- resolving


def resolve_checkpoint(source: str | os.PathLike[str], *, step: str | int | None = None,
                       revision: str | None = None, allow_fallback: bool = False) -> Checkpoint:
    """The checkpoint ``source`` names: what every ``--checkpoint`` and ``from_pretrained`` reads.

    Args:
        source: a run folder (or one of its ``checkpoints/step-*`` folders), an exported folder,
            or a Hub id ``owner/name`` (when no local folder of that name exists).
        step: with a run folder, which checkpoint (``checkpoint.select_checkpoint``).
        revision: with a Hub id, a branch, tag or commit (default ``main``).
        allow_fallback: with a run folder, a corrupt newest checkpoint falls back to the newest
            valid one.

    Raises:
        CheckpointError: no such folder or Hub model, an invalid folder, ``step`` with an
            exported folder or Hub id, ``revision`` with a local folder (names the source).
    """
    p = Path(source)
    name = os.fspath(source)
    if p.exists():
        if revision is not None:
            raise CheckpointError(f"{name} is a local folder; --revision chooses a revision of a Hub id")
        if is_pretrained_folder(p) and not (p / "meta.json").exists():
            _no_step(name, step)
            return read_pretrained(p)
        return select_checkpoint(p, step, allow_fallback=allow_fallback)
    if is_hub_id(name):
        _no_step(name, step)
        folder = download(name, revision=revision)
        return read_pretrained(folder, where=f"{name} (revision {folder.name[:12]})")
    return select_checkpoint(p, step, allow_fallback=allow_fallback)  # "does not exist"


def _no_step(name: str, step: str | int | None) -> None:
    if step is not None:
        raise CheckpointError(f"{name} is an exported mapper (one set of weights); --step chooses "
                              "among a run folder's checkpoints")


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """The local snapshot folder of Hub model ``repo_id`` (``huggingface_hub.snapshot_download``:
    the cache first when offline, ``HF_HUB_OFFLINE=1`` never connects).

    Raises:
        CheckpointError: the model is neither on the Hub nor in the cache (names it, and why).
    """
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
                                   library_name="metamapper", library_version=__version__)
    except Exception as e:  # the library's errors: not found, offline and not cached, HTTP, bad id
        at = f" at revision {revision!r}" if revision else ""
        raise CheckpointError(f"{repo_id!r} is no local folder, and the Hub model {repo_id}{at} could "
                              f"not be fetched ({_first_line(e)})") from None
    return Path(folder)


# --------------------------------------------------------------------------- reading


def read_pretrained(path: str | os.PathLike[str], *, where: str | None = None) -> Checkpoint:
    """Read and verify an exported folder; its ``config.json`` becomes the checkpoint's ``meta``.

    Args:
        path: the folder.
        where: how errors name it (default: the path; a Hub id for a downloaded snapshot).

    Raises:
        CheckpointError: a missing or invalid ``config.json`` (wrong format, a missing, unknown
            or mistyped key, an invalid config), weights that are missing, corrupt, not
            safetensors, non-finite or not a mapper's.
    """
    p = Path(path)
    where = where or str(p)
    cfile, wfile = p / CONFIG_NAME, p / WEIGHTS_NAME
    if not cfile.is_file() or not wfile.is_file():
        raise CheckpointError(f"{where} is no exported metamapper folder ({CONFIG_NAME} or {WEIGHTS_NAME} missing)")
    record = _read_record(cfile, where)
    blob = wfile.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise CheckpointError(f"{where}: {WEIGHTS_NAME} is corrupt (its SHA-256 is not the one in {CONFIG_NAME})")
    try:
        weights = safetensors_load(blob)  # the bytes just hashed: the file is read once
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: {WEIGHTS_NAME} is no safetensors file ({_first_line(e)})") from None
    check_weights(weights, where)
    return Checkpoint(path=p, step=record["step"], meta=record, weights=weights)


def _read_record(cfile: Path, where: str) -> dict[str, Any]:
    if cfile.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{where}: {CONFIG_NAME} is over {MAX_CONFIG_BYTES >> 20} MiB; refused")
    try:
        record = json.loads(cfile.read_bytes())
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, absurd nesting
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not a JSON object")
    if record.get("format") != PRETRAINED_FORMAT:
        raise CheckpointError(f"{where}: {CONFIG_NAME} is not a metamapper export (format "
                              f"{record.get('format')!r}, expected {PRETRAINED_FORMAT!r})")
    missing = sorted(set(_RECORD_TYPES) - set(record))
    unknown = sorted(set(record) - set(_RECORD_TYPES))
    if missing or unknown:
        raise CheckpointError(f"{where}: {CONFIG_NAME} has missing keys {missing} / unknown keys {unknown}")
    for key, types in _RECORD_TYPES.items():
        v = record[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"{where}: {CONFIG_NAME} key {key!r} must be {want}, got {v!r:.80}")
    for key in ("prefix_len", "visual_dim", "embed_dim"):
        if record[key] < 1:
            raise CheckpointError(f"{where}: {CONFIG_NAME} key {key!r} must be >= 1, got {record[key]}")
    if not _SHA256.fullmatch(record["sha256"]):
        raise CheckpointError(f"{where}: {CONFIG_NAME} key 'sha256' is no SHA-256")
    try:
        config_from_dict(record["config"])
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: {CONFIG_NAME} holds no valid run config ({e})") from None
    return record


def check_weights(weights: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not a mapper's: other names, non-float or non-finite tensors."""
    for k, v in weights.items():
        if not k.startswith(WEIGHT_PREFIXES):
            raise CheckpointError(f"{where}: {WEIGHTS_NAME} holds {k!r}, which is no mapper weight "
                                  f"(names start with {' or '.join(WEIGHT_PREFIXES)})")
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise CheckpointError(f"{where}: {WEIGHTS_NAME} tensor {k!r} is not finite floating point")
    if not any(k.startswith("mapper.") for k in weights):
        raise CheckpointError(f"{where}: {WEIGHTS_NAME} holds no mapper weights")


# --------------------------------------------------------------------------- writing


def pretrained_record(meta: dict[str, Any], *, sha256: str) -> dict[str, Any]:
    """The ``config.json`` of weights whose checkpoint record is ``meta`` (``meta.json``, or an
    exported folder's ``config.json``) and whose safetensors bytes hash to ``sha256``."""
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError("the checkpoint records no config mapping; it cannot be exported")
    cfg = config_from_dict(raw)
    exported = meta.get("format") == PRETRAINED_FORMAT
    record = {
        "format": PRETRAINED_FORMAT,
        "library_name": "metamapper",
        "metamapper_version": __version__,
        "method": cfg.train.method,
        "mapper": cfg.mapper.kind,
        "prefix_len": int(meta.get("prefix_len", cfg.mapper.prefix_len)),
        "vision_identity": meta.get("vision_identity"),
        "lm_identity": meta.get("lm_identity"),
        "visual_dim": meta.get("visual_dim"),
        "embed_dim": meta.get("embed_dim"),
        "step": int(meta.get("step", 0)),
        "sha256": sha256,
        "source_sha256": meta.get("source_sha256") if exported else meta.get("sha256"),
        "config": cfg.to_dict(),
    }
    _check_written(record)
    return record


def _check_written(record: dict[str, Any]) -> None:
    for key in ("lm_identity", "visual_dim", "embed_dim"):
        if record[key] is None:
            raise CheckpointError(f"the checkpoint records no {key}; it cannot be exported "
                                  "(written by an older metamapper?)")


def write_pretrained(weights: dict[str, torch.Tensor], meta: dict[str, Any],
                     out_dir: str | os.PathLike[str], *, results: list[dict[str, Any]] | None = None,
                     repo_id: str | None = None) -> Path:
    """Write an exported folder: ``config.json``, ``model.safetensors`` and the model card.

    Args:
        weights: the mapper's tensors (``mapper.*``, ``inner_lrs.*``).
        meta: their checkpoint record (``Checkpoint.meta``).
        out_dir: the folder (created; an earlier export there is replaced, anything else refused).
        results: evaluation rows of these weights for the card (``results_for``).
        repo_id: the Hub id the card's usage snippet loads (default ``OWNER/NAME``).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: weights that are not a mapper's, a record that cannot be exported.
        ValueError: ``out_dir`` holds something other than an earlier export.
        RunWriteError: a file could not be written.
    """
    from metamapper.model_card import model_card

    out = Path(out_dir)
    check_weights(weights, "the weights to export")
    if out.exists() and (not out.is_dir() or any(
            f.name not in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) and not f.name.startswith(".")
            for f in out.iterdir())):
        raise ValueError(f"{out} exists and is not an exported metamapper folder; export into a new folder")
    blob = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in weights.items()})
    record = pretrained_record(meta, sha256=hashlib.sha256(blob).hexdigest())
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WEIGHTS_NAME, blob)
    write_atomic(out / CONFIG_NAME, json.dumps(record, indent=2) + "\n")
    n_params = sum(v.numel() for k, v in weights.items() if k.startswith("mapper."))
    write_atomic(out / CARD_NAME, model_card(record, results or [], n_params=n_params, repo_id=repo_id,
                                             title=out.resolve().name))
    return out


def results_for(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation rows of these exact weights in the run folder's ``results.json`` (a list of
    rows, ``make demo``; or one row, ``evaluate --out``): rows whose ``checkpoint.sha256`` is the
    checkpoint's. ``path``, ``meta``: the checkpoint's folder and record. None for an exported
    folder, or when there is no readable file."""
    run = path.parent.parent if path.parent.name == CKPT_DIR else path
    f = run / "results.json"
    sha = meta.get("sha256")
    if not f.is_file() or meta.get("format") == PRETRAINED_FORMAT or not sha:
        return []
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError, RecursionError):
        return []
    rows = data if isinstance(data, list) else [data]
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("checkpoint"), dict)
            and r["checkpoint"].get("sha256") == sha]


def export_checkpoint(ckpt: Checkpoint, out_dir: str | os.PathLike[str], *,
                      repo_id: str | None = None) -> Path:
    """Export a checkpoint (``resolve_checkpoint``) without building its backbones: what
    ``metamapper export`` does."""
    return write_pretrained(ckpt.weights, ckpt.meta, out_dir, results=results_for(ckpt.path, ckpt.meta), repo_id=repo_id)


# --------------------------------------------------------------------------- pushing


def push_folder(folder: str | os.PathLike[str], repo_id: str, *, revision: str | None = None,
                private: bool | None = None, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload an exported folder to the Hub model ``repo_id`` (created if missing; ``revision``:
    a branch, created from ``main`` if missing). Returns the commit's URL.

    Raises:
        HubError: offline (``HF_HUB_OFFLINE=1``, no network), no token, no permission, or any
            other refusal (one line naming the repository and the library's reason).
    """
    from huggingface_hub import HfApi

    if not is_hub_id(repo_id):
        raise ValueError(f"--repo must be a Hub id owner/name, got {repo_id!r}")
    api = HfApi(token=token, library_name="metamapper", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=Path(folder), revision=revision,
                                 allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
                                 commit_message=commit_message or "Upload a metamapper mapper")
    except Exception as e:  # the library's errors: offline, no token, HTTP, validation
        raise HubError(f"cannot push to the Hub model {repo_id}: {_first_line(e)}") from None
    return str(info.commit_url)


def push_checkpoint(ckpt: Checkpoint, repo_id: str, **kw: Any) -> str:
    """Export a checkpoint into a temporary folder and push it (``push_folder``'s keywords)."""
    with tempfile.TemporaryDirectory(prefix="metamapper-push-") as tmp:
        folder = export_checkpoint(ckpt, Path(tmp) / "export", repo_id=repo_id)
        return push_folder(folder, repo_id, **kw)
