"""Checkpoints: atomic write, checksums, fallback to the last good one, pruning, compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamapper.checkpoint import (
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    read_checkpoint,
    save_checkpoint,
)

META = {"format": "metamapper-checkpoint-1", "method": "maml", "vision_identity": "tiny-clip:seed0",
        "lm_identity": "tiny-lm:llama:seed0", "visual_dim": 16, "embed_dim": 32, "prefix_len": 2}


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"mapper.prefix": torch.randn(2, 32, generator=g),
            "mapper.visual_proj.weight": torch.randn(32, 16, generator=g),
            "inner_lrs.lrs.prefix": torch.full((1, 2, 32), 0.01)}


def save(run: Path, step: int, **kw) -> Path:
    kw.setdefault("trainer_state", {"optimizer": {"lr": 0.1 * step}, "rng": [1, 2, 3]})
    return save_checkpoint(run, step=step, weights=weights(step), meta=META, **kw)


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_round_trip(tmp_path: Path) -> None:
    path = save(tmp_path, 7)
    assert path == tmp_path / "checkpoints" / "step-0000007"
    assert sorted(p.name for p in path.iterdir()) == ["mapper.safetensors", "meta.json", "trainer.pt"]
    ck = read_checkpoint(path, trainer=True)
    assert ck.step == 7 and ck.path == path
    assert ck.weights.keys() == weights(7).keys()
    for k, v in weights(7).items():
        assert torch.equal(ck.weights[k], v)
    for k, v in META.items():
        assert ck.meta[k] == v
    assert len(ck.meta["sha256"]) == 64
    assert load_trainer_state(ck) == {"optimizer": {"lr": 0.1 * 7}, "rng": [1, 2, 3]}
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_weights_of_non_contiguous_and_grad_tensors_are_saved(tmp_path: Path) -> None:
    w = {"a": torch.randn(4, 3).t(), "b": torch.randn(3, requires_grad=True)}
    ck = read_checkpoint(save_checkpoint(tmp_path, step=1, weights=w, meta=META))
    assert torch.equal(ck.weights["a"], w["a"]) and torch.equal(ck.weights["b"], w["b"].detach())


def test_corrupt_weights_fail_the_checksum(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    flip_byte(path / "mapper.safetensors")
    with pytest.raises(CheckpointError, match="checksum") as e:
        read_checkpoint(path)
    assert "mapper.safetensors" in str(e.value)


def test_corrupt_or_missing_files(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(path)
    path = save(tmp_path, 2)
    (path / "mapper.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        read_checkpoint(path)
    path = save(tmp_path, 3)
    flip_byte(path / "trainer.pt", 40)
    read_checkpoint(path)  # inference needs only the weights
    with pytest.raises(CheckpointError, match="trainer state"):
        read_checkpoint(path, trainer=True)
    nt = save(tmp_path, 4, trainer_state=None)
    with pytest.raises(CheckpointError, match="trainer state"):
        read_checkpoint(nt, trainer=True)


def test_latest_falls_back_to_the_previous_good_checkpoint_with_a_warning(tmp_path: Path) -> None:
    for s in (2, 4, 6):
        save(tmp_path, s)
    assert latest_checkpoint(tmp_path).step == 6
    flip_byte(tmp_path / "checkpoints" / "step-0000006" / "mapper.safetensors")
    with pytest.warns(UserWarning, match="checksum"):
        ck = latest_checkpoint(tmp_path)
    assert ck.step == 4 and torch.equal(ck.weights["mapper.prefix"], weights(4)["mapper.prefix"])
    # a bad trainer state is only skipped when resuming
    flip_byte(tmp_path / "checkpoints" / "step-0000004" / "trainer.pt", 40)
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path, trainer=True).step == 2
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path).step == 4


def test_no_valid_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        latest_checkpoint(tmp_path)
    save(tmp_path, 1)
    flip_byte(tmp_path / "checkpoints" / "step-0000001" / "mapper.safetensors")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="no valid checkpoint.*checksum"):
        latest_checkpoint(tmp_path)


def test_keep_last_prunes_the_oldest(tmp_path: Path) -> None:
    for s in range(1, 6):
        save(tmp_path, s, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]
    save(tmp_path, 6, keep_last=0)  # 0 keeps everything
    assert len(list_checkpoints(tmp_path)) == 3


def test_list_orders_by_step_and_ignores_temporary_folders(tmp_path: Path) -> None:
    for s in (10, 9, 100):
        save(tmp_path, s, keep_last=10)
    (tmp_path / "checkpoints" / ".tmp-abc").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000009", "step-0000010", "step-0000100"]
    assert latest_checkpoint(tmp_path).step == 100


def test_overwriting_a_step_replaces_it(tmp_path: Path) -> None:
    save(tmp_path, 3)
    save_checkpoint(tmp_path, step=3, weights=weights(99), meta=META)
    assert torch.equal(read_checkpoint(list_checkpoints(tmp_path)[0]).weights["mapper.prefix"],
                       weights(99)["mapper.prefix"])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float) -> None:
    w = weights()
    w["mapper.visual_proj.weight"][3, 4] = bad
    with pytest.raises(CheckpointError, match="non-finite.*visual_proj"):
        save_checkpoint(tmp_path, step=1, weights=w, meta=META)
    assert list_checkpoints(tmp_path) == []


def test_meta_json_records_step_and_checksum(tmp_path: Path) -> None:
    path = save(tmp_path, 5)
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 5 and meta["lm_identity"] == META["lm_identity"]
    assert "trainer_sha256" in meta


def _check(**kw) -> None:
    args = dict(vision="tiny-clip:seed0", lm="tiny-lm:llama:seed0", visual_dim=16, embed_dim=32,
                where="run/x")
    args.update(kw)
    check_compatible(META, **args)


def test_check_compatible_accepts_the_same_backbones() -> None:
    """Same identities and sizes pass, and so do the cases where the vision encoder cannot be
    compared: a model built without it (cached features) or a checkpoint that names none."""
    meta = json.loads(json.dumps(META))
    same = dict(lm="tiny-lm:llama:seed0", visual_dim=16, embed_dim=32, where="run/x")
    assert check_compatible(META, vision="tiny-clip:seed0", **same) is None
    assert check_compatible(META, vision=None, **same) is None  # e.g. features only
    assert check_compatible({**META, "vision_identity": None}, vision="efficientnet-lite0",
                            **same) is None
    assert META == meta  # nothing written into the checkpoint's record


@pytest.mark.parametrize(
    ("kw", "what"),
    [
        ({"lm": "tiny-lm:llama:seed1"}, "language model"),
        ({"vision": "efficientnet-lite0"}, "vision encoder"),
        ({"visual_dim": 1280}, "dimensions"),
        ({"embed_dim": 576}, "dimensions"),
    ],
)
def test_check_compatible_refuses_other_backbones(kw: dict, what: str) -> None:
    with pytest.raises(CheckpointError, match="other backbones") as e:
        _check(**kw)
    assert what in str(e.value) and "run/x" in str(e.value)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)  # the CLI reports it in one line
