"""Checkpoints: atomic write, checksums, fallback to the last good one, pruning, compatibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamapper.checkpoint import (
    CheckpointError,
    RunWriteError,
    best_checkpoint,
    check_compatible,
    checkpoint_config,
    checkpoint_record,
    latest_checkpoint,
    list_checkpoints,
    load_trainer_state,
    read_checkpoint,
    save_checkpoint,
    select_checkpoint,
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


# ------------------------------------------------------------------ round two (issue #21)


class _Payload:
    """A pickle that creates a file when unpickled (what a planted trainer.pt could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def plant(ckpt: Path, marker: Path) -> None:
    """Replace trainer.pt with a malicious pickle and make the checksum in meta.json match."""
    import hashlib

    torch.save({"optimizer": _Payload(marker)}, ckpt / "trainer.pt")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["trainer_sha256"] = hashlib.sha256((ckpt / "trainer.pt").read_bytes()).hexdigest()
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_a_planted_trainer_state_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    ckpt = read_checkpoint(save(tmp_path, 1), trainer=True)
    marker = tmp_path / "pwned"
    plant(ckpt.path, marker)
    ckpt = read_checkpoint(ckpt.path, trainer=True)  # the checksum matches: it proves nothing
    with pytest.raises(CheckpointError, match=r"refusing to load .*trainer\.pt: .*\(it wants exec\)"):
        load_trainer_state(ckpt)
    assert not marker.exists()
    # the test can fail: the old torch.load(weights_only=False) runs the payload
    torch.load(ckpt.path / "trainer.pt", weights_only=False)
    assert marker.read_text() == "pwned"


def test_a_real_trainer_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    """AdamW, the LambdaLR schedule and the Python/NumPy/torch RNG states, as training saves them."""
    from metamapper.config import Config
    from metamapper.train.common import make_optimizer, rng_state

    p = torch.nn.Parameter(torch.randn(3))
    opt, sched = make_optimizer([p], Config())
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
             "skipped": 2}
    ck = read_checkpoint(save(tmp_path, 1, trainer_state=state), trainer=True)
    got = load_trainer_state(ck)
    assert got["skipped"] == 2 and got["rng"]["numpy"][0] == "MT19937"
    assert (got["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert got["scheduler"] == sched.state_dict()


def test_a_failed_save_names_the_path_and_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import metamapper.checkpoint as checkpoint

    save(tmp_path, 1)
    real = checkpoint._write_file

    def disk_full_at_trainer_state(path: Path, data: bytes) -> None:
        if path.name == "trainer.pt":
            real(path, data[: len(data) // 2])  # half of it reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", disk_full_at_trainer_state)
    with pytest.raises(RunWriteError) as e:
        save(tmp_path, 2, keep_last=1)
    msg = str(e.value)
    assert "step-0000002" in msg and "No space left on device" in msg and "\n" not in msg
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000001"]  # no .tmp-*
    assert read_checkpoint(tmp_path / "checkpoints" / "step-0000001", trainer=True).step == 1


def test_a_kill_while_pruning_leaves_no_half_step_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import metamapper.checkpoint as checkpoint

    for s in (1, 2):
        save(tmp_path, s, keep_last=0)
    real_rmtree = shutil.rmtree

    def killed_while_deleting(path: Path, *args, **kwargs) -> None:
        target = Path(path)
        if target.name.startswith((".tmp-pruned-", "step-")):  # a folder being pruned
            (target / "mapper.safetensors").unlink()  # the first file went ...
            raise KeyboardInterrupt  # ... then the process died
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 3, keep_last=1)
    monkeypatch.undo()
    for path in list_checkpoints(tmp_path):  # every step folder is whole
        read_checkpoint(path, trainer=True)
    assert latest_checkpoint(tmp_path, fallback=False).step == 3
    save(tmp_path, 4, keep_last=1)  # the next save clears the leftovers
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004"]


def test_keep_best_keeps_the_best_validated_checkpoint_beside_the_last(tmp_path: Path) -> None:
    accs = {1: 0.2, 2: 0.9, 3: 0.3, 4: None, 5: 0.5}
    for s, acc in accs.items():
        save(tmp_path, s, keep_last=2, keep_best=True, val_accuracy=acc)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000002", "step-0000004", "step-0000005"]
    assert best_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-0000002"
    assert select_checkpoint(tmp_path, "best").meta["val_accuracy"] == 0.9
    save(tmp_path, 6, keep_last=2, keep_best=True, val_accuracy=0.9)  # equal: the newer is the best
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000005", "step-0000006"]
    save(tmp_path, 7, keep_last=2, keep_best=False, val_accuracy=0.1)  # without keep_best: last 2
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000006", "step-0000007"]


def test_select_checkpoint_by_step(tmp_path: Path) -> None:
    for s in (2, 4, 6):
        save(tmp_path, s, val_accuracy=s / 10)
    assert select_checkpoint(tmp_path).step == 6
    assert select_checkpoint(tmp_path, "latest").step == 6
    assert select_checkpoint(tmp_path, "best").step == 6
    assert select_checkpoint(tmp_path, 4).step == 4 and select_checkpoint(tmp_path, " 2 ").step == 2
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 \(it has: 2, 4, 6\)"):
        select_checkpoint(tmp_path, "5")
    with pytest.raises(CheckpointError, match="best, latest or a step number"):
        select_checkpoint(tmp_path, "newest")
    step4 = tmp_path / "checkpoints" / "step-0000004"
    assert select_checkpoint(step4).step == 4
    with pytest.raises(CheckpointError, match="is a checkpoint folder"):
        select_checkpoint(step4, "best")
    other = tmp_path / "unvalidated"
    save(other, 1)
    with pytest.raises(CheckpointError, match="no validated checkpoint"):
        select_checkpoint(other, "best")


def test_a_corrupt_newest_checkpoint_is_an_error_unless_fallback_is_allowed(tmp_path: Path) -> None:
    import warnings

    for s in (2, 4):
        save(tmp_path, s)
    flip_byte(tmp_path / "checkpoints" / "step-0000004" / "mapper.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a warning and an older step: an error
        with pytest.raises(CheckpointError, match=r"newest checkpoint of .* is unusable: .*checksum.*"
                                                  r"--step \(others: 2\).*--allow-fallback"):
            select_checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="checksum"):
        assert select_checkpoint(tmp_path, allow_fallback=True).step == 2
    assert select_checkpoint(tmp_path, 2).step == 2


def test_checkpoint_record_says_which_weights_answered(tmp_path: Path) -> None:
    import metamapper

    ck = read_checkpoint(save_checkpoint(tmp_path / "run", step=3, weights=weights(),
                                         meta={**META, "config": {"train": {"lr": 0.1}},
                                               "arithmetic": {"device": "cpu", "cpu_threads": 2}}))
    rec = checkpoint_record(ck)
    assert rec == {"run": str((tmp_path / "run").resolve()), "checkpoint": str(ck.path.resolve()),
                   "step": 3, "sha256": ck.meta["sha256"], "metamapper_version": metamapper.__version__,
                   "arithmetic": {"device": "cpu", "cpu_threads": 2}, "config": {"train": {"lr": 0.1}}}
    json.dumps(rec)  # JSON-ready


def test_a_meta_json_without_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    ck = read_checkpoint(save(tmp_path, 1))  # META has no config
    with pytest.raises(CheckpointError, match=r"step-0000001/meta\.json has no 'config'"):
        checkpoint_config(ck)
