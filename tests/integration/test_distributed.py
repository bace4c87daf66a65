"""Two-process Gloo runs under torchrun on tiny backbones: identical to one process, update by
update and example by example.

The runs use a tiny LM whose answers depend on its input (``tiny_data.write_lively_lm``): with the
smoke config's own tiny LM every answer is "a a a a", and equal answers would prove nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dist_eval
import pytest
import torch

from metamapper.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from metamapper.data.synthetic import build_synthetic_tasks

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
CLI = ["-m", "metamapper.cli"]
# float32 and no regularisers: the penalties see each rank's share of the meta-batch (like
# unsynchronised batch norm), so only the plain meta-loss is identical across layouts
TRAIN = ["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "train.updates=3",
         "train.meta_batch=4", "train.val_every=0", "train.checkpoint_every=1", "mapper.dropout=0.0",
         "train.keep_last=0", "backbones.lm=hf", "runtime.precision=float32", "train.spread_weight=0",
         "train.geometry_weight=0"]
EVAL_SCRIPT = Path(__file__).with_name("dist_eval.py")


def _run(cmd: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "METAMAPPER_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(in_process: Path, cli, lively_dirs: dict[str, Path]) -> dict[str, Path]:
    """The same 3 updates in this process and under torchrun with 2 processes."""
    tmp = in_process
    train = [*TRAIN, f"backbones.lm_path={lively_dirs['lm']}", f"data.feature_cache={tmp / 'features'}"]
    cli(*train, "--out", str(tmp / "single"))
    double = _run([*TORCHRUN, *CLI, *train, "--out", str(tmp / "double")], tmp)
    assert double.returncode == 0, double.stderr[-2000:]
    return {"tmp": tmp, "single": tmp / "single", "double": tmp / "double", "lm": lively_dirs["lm"]}


def comparable(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights, less the key third of ``mapper.qkv.bias``: the key bias shifts every score of
    a query equally, so softmax ignores it and its gradient is pure rounding noise, which AdamW
    turns into lr-sized steps: it is not reproducible across batch layouts and has no effect on
    the output. The query and value biases are kept."""
    out = dict(weights)
    x = out["mapper.qkv.bias"]
    d = x.numel() // 3
    out["mapper.qkv.bias"] = torch.cat([x[:d], x[2 * d :]])
    return out


def test_two_ranks_equal_one_process(runs: dict[str, Path]) -> None:
    steps = [read_checkpoint(p).step for p in list_checkpoints(runs["single"])]
    assert steps == [read_checkpoint(p).step for p in list_checkpoints(runs["double"])] == [1, 2, 3]
    previous = None
    for step in steps:  # after every update, not only at the end
        a = comparable(read_checkpoint(runs["single"] / "checkpoints" / f"step-{step:07d}").weights)
        b = comparable(read_checkpoint(runs["double"] / "checkpoints" / f"step-{step:07d}").weights)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=f"step {step}: {k}")
        if previous is not None:  # each update moved the mapper (unchanged ones would be equal)
            moved = [k for k in a if (a[k] - previous[k]).abs().max() > 1e-4]
            assert "mapper.prefix" in moved and len(moved) > len(a) // 2, (step, moved)
        previous = a
    logs = [[json.loads(line) for line in (runs[r] / "metrics.jsonl").read_text().splitlines()]
            for r in ("single", "double")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]  # rank 0 alone logs
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def test_sharded_evaluation_equals_single_process(runs: dict[str, Path], cli) -> None:
    """The CLI under torchrun writes the one-process results: the same examples and per-query
    samples in the same order (ranks hold tasks r, r + 2, ...), and the 0-step accuracy of an
    adapting method."""
    tmp = runs["tmp"]
    ev = ["evaluate", "--checkpoint", str(runs["single"]), "--dataset", "synthetic", "--ways", "2",
          "--shots", "1", "--tasks", "9", "--feature-cache", str(tmp / "features"),
          "--method", "maml", "--steps", "1"]
    cli(*ev, "--out", str(tmp / "one.json"), "--log-samples", str(tmp / "one.jsonl"))
    two = _run([*TORCHRUN, *CLI, *ev, "--out", str(tmp / "two.json"), "--log-samples",
                str(tmp / "two.jsonl")], tmp)
    assert two.returncode == 0, two.stderr[-2000:]
    r1 = json.loads((tmp / "one.json").read_text())
    r2 = json.loads((tmp / "two.json").read_text())
    assert r1["n_tasks"] == 9 and r1["accuracy_0_steps"] is not None
    assert len({e["answer"] for e in r1["examples"]}) > 1  # the order of examples shows
    assert r1.pop("date") <= r2.pop("date")  # when each ran; all else is the same
    assert r2 == r1
    samples = (tmp / "one.jsonl").read_text()
    assert [json.loads(x)["task_index"] for x in samples.splitlines()] == [t for t in range(9) for _ in (0, 1)]
    assert (tmp / "two.jsonl").read_text() == samples


def test_sharded_evaluation_equals_single_process_example_by_example(runs: dict[str, Path]) -> None:
    """Every task's example (answer and prediction, in task order), the accuracy and the MAML
    support fit, for each method: what each rank answers is gathered back in the tasks' order."""
    tmp = runs["tmp"]
    dist_eval.main(str(runs["single"]), str(tmp / "script-one.json"))
    two = _run([*TORCHRUN, str(EVAL_SCRIPT), str(runs["single"]), str(tmp / "script-two.json")], tmp)
    assert two.returncode == 0, two.stderr[-2000:]
    r1 = json.loads((tmp / "script-one.json").read_text())
    r2 = json.loads((tmp / "script-two.json").read_text())
    assert set(r1) == set(dist_eval.SETTINGS)
    for name, res in r1.items():
        assert res["n_tasks"] == len(res["examples"]) == 9, name
        assert (res["support_fit"] is not None) == (name != "in_context")
        assert r2[name] == res, name
    for name in ("in_context", "maml", "standard"):
        assert len({e["prediction"] for e in r1[name]["examples"]}) > 2, name  # answers differ
    # known values: every answer is "dax"
    tasks = build_synthetic_tasks(**dist_eval.TASKS).tasks
    dax = r1["always-dax"]
    assert dax["accuracy"] == pytest.approx(
        sum(sum(q.answer == "dax" for q in t.queries) / len(t.queries) for t in tasks) / len(tasks))
    fits = [ex.caption == "This is a dax." for t in tasks for ex in t.support]
    assert dax["support_fit"] == pytest.approx(sum(fits) / len(fits))
    assert 0 < dax["accuracy"] < 1 and 0 < dax["support_fit"] < 1


def test_dead_rank_fails_job_and_keeps_checkpoint(runs: dict[str, Path]) -> None:
    tmp = runs["tmp"]
    out = tmp / "killed"
    res = _run([*TORCHRUN, *CLI, *TRAIN, f"backbones.lm_path={runs['lm']}", "--out", str(out),
                f"data.feature_cache={tmp / 'features'}"],
               tmp, METAMAPPER_TEST_KILL="1:2", METAMAPPER_DIST_TIMEOUT="60")
    assert res.returncode != 0
    assert "exitcode" in res.stderr or "failed" in res.stderr.lower()
    ckpt = latest_checkpoint(out)  # the last complete checkpoint is readable
    assert ckpt.step in (1, 2)
