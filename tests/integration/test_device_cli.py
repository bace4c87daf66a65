"""``--device`` on the real command: an explicit CPU run end to end, a missing GPU as one line,
and (where a GPU is) a GPU-trained run evaluated and resumed on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from metamapper.checkpoint import latest_checkpoint
from metamapper.data.synthetic import draw

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
CLI = [sys.executable, "-m", "metamapper.cli"]
TRAIN = ["train.updates=2", "train.meta_batch=2", "train.val_every=0", "train.checkpoint_every=1"]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def one_line_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    assert lines[0].startswith("metamapper: error: ")
    for w in words:
        assert w in lines[0], lines[0]


def train(out: Path, env: dict[str, str], device: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(["train", "--config", str(SMOKE), "--out", str(out), "--device", device, *TRAIN,
                f"data.feature_cache={env['FEATURES']}", *extra], env)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    paths = {"a": d / "a.png", "b": d / "b.png", "q": d / "q.png"}
    for path, (c, i) in zip(paths.values(), [(6, 0), (7, 0), (7, 1)], strict=True):
        draw(c, i).save(path)
    return paths


@pytest.fixture(scope="module")
def cpu_run(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpu") / "run"
    ok(train(out, env, "cpu"))
    return out


def test_explicit_cpu_run_trains_evaluates_and_predicts(cpu_run: Path, env: dict[str, str],
                                                        images: dict[str, Path]) -> None:
    assert yaml.safe_load((cpu_run / "config.yaml").read_text())["runtime"]["device"] == "cpu"
    assert latest_checkpoint(cpu_run).step == 2
    ok(run(["evaluate", "--checkpoint", str(cpu_run), "--dataset", "synthetic", "--tasks", "4",
            "--device", "cpu", "--feature-cache", env["FEATURES"]], env))
    p = ok(run(["predict", "--checkpoint", str(cpu_run), "--device", "cpu", "--support",
                f"{images['a']}=This is a dax.", f"{images['b']}=This is a blicket.",
                "--query", str(images["q"])], env))
    assert len(p.stdout.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(cpu_run: Path, env: dict[str, str],
                                                           images: dict[str, Path], tmp_path: Path) -> None:
    one_line_error(train(tmp_path / "run", env, "cuda"), "'cuda'", "available here: cpu")
    assert not (tmp_path / "run").exists()
    one_line_error(run(["evaluate", "--checkpoint", str(cpu_run), "--dataset", "synthetic",
                        "--tasks", "2", "--device", "cuda:1"], env), "'cuda:1'", "available here: cpu")
    one_line_error(run(["predict", "--checkpoint", str(cpu_run), "--device", "gpu", "--support",
                        f"{images['a']}=This is a dax.", "--query", str(images["q"])], env),
                   "device must be auto, cpu, cuda, cuda:N or mps")
    one_line_error(train(tmp_path / "bad", env, "gpu"), "runtime.device must be auto, cpu, cuda")
    assert not (tmp_path / "bad").exists()


@pytest.mark.cuda
def test_gpu_trained_run_evaluates_and_resumes_on_cpu(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "run"
    ok(train(out, env, "cuda"))
    ok(run(["evaluate", "--checkpoint", str(out), "--dataset", "synthetic", "--tasks", "4",
            "--device", "cpu", "--feature-cache", env["FEATURES"]], env))
    # the optimizer state written on the GPU resumes on the CPU (and the device may change)
    ok(run(["train", "--out", str(out), "--resume", "--device", "cpu", "train.updates=3"], env))
    assert latest_checkpoint(out).step == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["runtime"]["device"] == "cpu"
