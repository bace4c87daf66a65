"""Device selection, the frozen backbones' precision, and no tensor on a hard-coded device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from metamapper import device as devmod
from metamapper import distributed
from metamapper.config import RESUMABLE_CHANGES, ConfigError, config_changes, load_config
from metamapper.data.feature_table import FeatureTable
from metamapper.device import DeviceError, backbone_dtype, resolve_device
from metamapper.eval.fewshot import answer_episodes
from metamapper.meta.episode import Episode, in_context_rows, query_rows
from metamapper.meta.maml import InnerLearningRates, InnerLoop, adapt, meta_loss
from metamapper.methods import get_method
from metamapper.models.factory import build_model
from metamapper.models.metamapper import MetaMapper, Text

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def _machine(monkeypatch: pytest.MonkeyPatch, *, gpus: int = 0, mps: bool = False,
             local_rank: int | None = None) -> None:
    """Pretend this machine has ``gpus`` CUDA GPUs and (or not) Apple's MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(devmod, "_mps_available", lambda: mps)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))


def test_auto_prefers_this_ranks_gpu_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpus=4, mps=True, local_rank=2)
    assert resolve_device("auto") == torch.device("cuda", 2)  # each torchrun rank on its own GPU
    _machine(monkeypatch, gpus=1, mps=True)
    assert resolve_device(None) == torch.device("cuda", 0)
    _machine(monkeypatch, gpus=0, mps=True)
    assert resolve_device("auto") == torch.device("mps")
    _machine(monkeypatch, gpus=0, mps=False)
    assert resolve_device("auto") == torch.device("cpu")


def test_explicit_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpus=2, mps=False, local_rank=1)
    assert resolve_device("cpu") == torch.device("cpu")  # even where GPUs are
    assert resolve_device(" CUDA:0 ") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 1)  # cuda: this rank's GPU
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)


@pytest.mark.parametrize("spec, gpus, local_rank, words", [
    ("cuda", 0, None, ["'cuda'", "CUDA", "available here: cpu"]),
    ("cuda:3", 2, None, ["'cuda:3'", "2 CUDA GPUs", "available here: cpu, cuda:0, cuda:1"]),
    ("auto", 2, 2, ["LOCAL_RANK 2", "has 2"]),  # more ranks on a machine than GPUs
    ("mps", 0, None, ["'mps'", "available here: cpu"]),
    ("gpu", 0, None, ["auto, cpu, cuda, cuda:N or mps", "'gpu'"]),
])
def test_a_device_that_is_not_here_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, spec: str,
                                                      gpus: int, local_rank: int | None,
                                                      words: list[str]) -> None:
    _machine(monkeypatch, gpus=gpus, local_rank=local_rank)
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    assert isinstance(e.value, ValueError)  # the CLI prints ValueErrors as one line
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_precision_is_bfloat16_on_cuda_only_by_default() -> None:
    assert backbone_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert backbone_dtype("auto", torch.device("cpu")) == torch.float32
    assert backbone_dtype("auto", torch.device("mps")) == torch.float32
    assert backbone_dtype("float32", torch.device("cuda", 0)) == torch.float32
    assert backbone_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        backbone_dtype("float16", torch.device("cpu"))


def test_runtime_config() -> None:
    cfg = load_config(SMOKE)
    assert (cfg.runtime.device, cfg.runtime.precision) == ("auto", "auto")
    # only the syntax is checked when loading: a GPU machine's config loads anywhere
    assert load_config(SMOKE, ["runtime.device=cuda:1"]).runtime.device == "cuda:1"
    with pytest.raises(ConfigError, match="runtime.device"):
        load_config(SMOKE, ["runtime.device=gpu"])
    with pytest.raises(ConfigError, match="runtime.precision"):
        load_config(SMOKE, ["runtime.precision=float16"])
    # where a run computes may change when it is resumed
    moved = load_config(SMOKE, ["runtime.device=cpu", "runtime.precision=float32"])
    changes = config_changes(cfg, moved)
    assert len(changes) == 2 and all(c.startswith(RESUMABLE_CHANGES) for c in changes)


def _episodes(n: int, dim: int = 16) -> list[Episode]:
    g = torch.Generator().manual_seed(3)
    return [Episode(features=torch.randn(4, 1, dim, generator=g),
                    captions=["This is a dax.", "This is a blicket."],
                    questions=["This is a", "This is a"], answers=["dax", "blicket"]) for _ in range(n)]


def test_hot_path_makes_its_tensors_on_the_models_device(smoke_model: MetaMapper, one_thread: None) -> None:
    """A meta-update (inner loop, Meta-SGD rates, query loss, backward), scoring
    and a batched generation with the default device set to ``meta`` and the model and its
    features on the CPU: a ``torch.zeros(n)`` without ``device=`` anywhere on the way fails."""
    model = smoke_model
    eps = _episodes(2)
    table = FeatureTable([f"k{i}" for i in range(3)], torch.randn(3, 1, 16))
    model.pack([[0, Text(" This is a dax.")]])  # the tokenizer's caches, outside the meta region
    names = list(model.mapper_params())
    loop = InnerLoop(steps=2, lr=0.01)
    try:
        torch.set_default_device("meta")
        lrs = InnerLearningRates({k: model.mapper_params()[k] for k in names}, init=0.01, steps=2,
                                 per_step=True)
        traj = adapt(model, eps, loop=loop, lrs=lrs)
        loss = meta_loss(model, eps, traj, query_rows)
        loss.backward()
        batch = model.pack(in_context_rows(eps[0]))
        per_row = model.loss(eps[0].features, batch, per_row=True)
        answers, params = answer_episodes(model, eps, method=get_method("maml"), loop=InnerLoop(steps=1),
                                          max_new_tokens=3)
        looked_up = table(["k2", "k0"])
    finally:
        torch.set_default_device(None)
    cpu = torch.device("cpu")
    assert loss.device == cpu and torch.isfinite(loss)
    assert all(p.grad.device == cpu for p in model.mapper.parameters() if p.grad is not None)
    assert all(p.grad is not None and p.grad.device == cpu for p in lrs.parameters())
    assert per_row.device == cpu and per_row.shape == (2,)
    assert all(v.device == cpu for p in params for v in p.values())
    assert [len(a) for a in answers] == [2, 2] and all(isinstance(t, str) for a in answers for t in a)
    assert looked_up.device == cpu and torch.equal(looked_up, table.features[[2, 0]])
    model.mapper.zero_grad(set_to_none=True)


def test_feature_table_moves_once_and_looks_up_there() -> None:
    table = FeatureTable(["a", "b"], torch.arange(4.0).reshape(2, 1, 2))
    moved = table.to("meta")
    assert moved.device.type == "meta" and table.device.type == "cpu"
    assert moved(["b", "a"]).device.type == "meta" and "a" in moved


def test_bfloat16_backbones_keep_a_float32_mapper_loss_and_gradient(one_thread: None, images) -> None:
    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    model = build_model(cfg.backbones, cfg.mapper, device=torch.device("cpu"), precision="bfloat16")
    assert model.device == torch.device("cpu")
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.mapper.parameters()} == {torch.float32}
    feats = model.encode_images(images[:2])
    assert feats.dtype == torch.float32 and feats.device == model.device
    loss = model.loss(feats, model.pack([[0, Text(" This is a dax.", target=True)],
                                         [1, Text(" This is a blicket.", target=True)]]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 for p in model.mapper.parameters() if p.grad is not None)


def test_auto_precision_on_a_native_bfloat16_cpu_is_a_bfloat16_lm_beside_a_float32_encoder(
        one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # runtime.precision=auto on a CPU with AVX512-BF16/AMX: the LM in bfloat16 (cast once from its
    # float32 weights), the vision encoder in float32, as on a CPU without it
    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    ref = build_model(cfg.backbones, cfg.mapper)
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        torch.manual_seed(0)
        model = build_model(cfg.backbones, cfg.mapper, device=torch.device("cpu"))
        assert {p.dtype for p in model.vision.parameters()} == {torch.float32}
        for (name, p), q in zip(model.lm.named_parameters(), ref.lm.parameters(), strict=True):
            assert p.dtype == want and torch.equal(p, q.to(want)), name


def test_place_model_moves_every_weight_and_buffer(one_thread: None) -> None:
    cfg = load_config(SMOKE)
    model = build_model(cfg.backbones, cfg.mapper, device=torch.device("meta"), precision="float32")
    assert model.device.type == "meta"
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __call__(self, name: str):  # noqa: ANN204 - a recording stand-in
        return lambda *a, **k: self.calls.append((name, a[0] if a else k))


@pytest.mark.parametrize("gpus, spec, backend, current", [
    (0, None, "gloo", None),
    (2, "cpu", "gloo", None),  # cpu asked for where GPUs are: Gloo, tensors stay on the CPU
    (2, None, "nccl", torch.device("cuda", 1)),  # auto: LOCAL_RANK's GPU, NCCL
    (2, "cuda", "nccl", torch.device("cuda", 1)),
])
def test_each_rank_joins_with_the_backend_of_its_device(monkeypatch: pytest.MonkeyPatch, gpus: int,
                                                        spec: str | None, backend: str,
                                                        current: torch.device | None) -> None:
    _machine(monkeypatch, gpus=gpus, local_rank=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    rec = _Recorder()
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: rec("init")(kw["backend"]))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", rec("set_device"))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", rec("matmul_precision"))
    assert distributed.init_from_env(spec) == (1, 2)
    assert ("init", backend) in rec.calls
    if current is None:
        assert not [c for c in rec.calls if c[0] == "set_device"]
    else:  # the GPU is chosen before the process group exists (NCCL binds to it)
        assert rec.calls.index(("set_device", current)) < rec.calls.index(("init", backend))
        assert ("matmul_precision", "high") in rec.calls  # TF32 matmuls on


def test_collectives_use_the_backends_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert distributed._comm_device() == torch.device("cpu")
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed._comm_device() == torch.device("cuda", 3)


@pytest.mark.cuda
def test_meta_update_and_generation_on_cuda(one_thread: None) -> None:
    cfg = load_config(SMOKE)
    torch.manual_seed(0)
    dev = resolve_device("cuda")
    model = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16, device=dev)
    assert {p.dtype for p in model.lm.parameters()} == {torch.bfloat16}
    eps = [Episode(features=e.features.to(dev), captions=e.captions, questions=e.questions,
                   answers=e.answers) for e in _episodes(2)]
    traj = adapt(model, eps, loop=InnerLoop(steps=2, lr=0.01))
    loss = meta_loss(model, eps, traj, query_rows)
    loss.backward()
    assert loss.device == dev and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad.device == dev for p in model.mapper.parameters() if p.grad is not None)
    answers, params = answer_episodes(model, eps, method=get_method("maml"), loop=InnerLoop(steps=1),
                                      max_new_tokens=3)
    assert all(v.device == dev for p in params for v in p.values()) and len(answers) == 2
