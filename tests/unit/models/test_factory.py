"""The frozen LM's dtype (``runtime.precision``, ``device.lm_dtype``, ``set_lm_dtype``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metamapper.config import ConfigError, config_from_dict, load_config
from metamapper.models.factory import build_model, set_lm_dtype
from metamapper.models.metamapper import Text

SMOKE_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"

ROWS = [
    [0, Text(" This is a"), Text(" dax.", target=True)],
    [1, Text(" This is a"), Text(" blicket.", target=True)],
]


def _model(dtype: str):
    cfg = load_config(SMOKE_CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16).eval()
    set_lm_dtype(model, dtype)
    return model


def test_bfloat16_lm_keeps_a_float32_mapper_and_loss(one_thread):
    ref, low = _model("float32"), _model("bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in low.lm.parameters())
    assert all(p.dtype == torch.float32 for p in low.mapper.parameters())
    feats = torch.randn(2, 1, 16, generator=torch.Generator().manual_seed(1))
    losses, grads = [], []
    for m in (ref, low):
        m.mapper.zero_grad()
        loss = m.loss(feats, m.pack(ROWS))
        loss.backward()
        losses.append(loss)
        grads.append(torch.cat([p.grad.flatten() for p in m.mapper.parameters() if p.grad is not None]))
    assert losses[1].dtype == torch.float32 and torch.isfinite(losses[1])
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)
    assert grads[1].dtype == torch.float32 and torch.isfinite(grads[1]).all()
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.95, f"bfloat16 gradient direction differs from float32 (cos {cos:.3f})"
    with torch.no_grad():
        texts = low.generate(feats, [r[:2] for r in ROWS], max_new_tokens=3)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize(("precision", "lm_dtype", "want"), [
    ("auto", "float32", "float32"),  # the paper's configs: unambiguous, the one knob takes it
    ("auto", "bfloat16", "bfloat16"),
    ("auto", "auto", "auto"),  # auto was always the precision's own rule
    ("float32", "float32", "float32"),
    ("bfloat16", "float32", "bfloat16"),  # two dtypes: the precision stays, lm_dtype is dropped
])
def test_an_older_configs_train_lm_dtype_is_read_onto_runtime_precision_with_a_warning(
        precision: str, lm_dtype: str, want: str) -> None:
    old = {"train": {"lm_dtype": lm_dtype}, "runtime": {"precision": precision}}
    with pytest.warns(UserWarning, match=f"train.lm_dtype={lm_dtype}") as w:
        cfg = config_from_dict(old)
    assert len(w) == 1 and "\n" not in str(w[0].message)  # one line
    assert cfg.runtime.precision == want and not hasattr(cfg.train, "lm_dtype")
    if want != precision:
        assert f"runtime.precision={want}" in str(w[0].message)
    with pytest.warns(UserWarning, match="train.lm_dtype"):  # a command-line override, an empty runtime
        assert load_config(None, [f"train.lm_dtype={lm_dtype}"]).runtime.precision == (
            "auto" if lm_dtype == "auto" else lm_dtype)
    assert old == {"train": {"lm_dtype": lm_dtype}, "runtime": {"precision": precision}}  # not modified


def test_an_unknown_dtype_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="runtime.precision"):
        load_config(SMOKE_CONFIG, ["runtime.precision=float16"])
    with pytest.raises(ConfigError, match="train.lm_dtype"):
        load_config(SMOKE_CONFIG, ["train.lm_dtype=float16"])


def test_auto_lm_dtype_is_bfloat16_only_where_the_hardware_has_it(monkeypatch) -> None:
    import torch

    from metamapper.device import lm_dtype

    assert lm_dtype("float32", torch.device("cuda")) == "float32"  # explicit wins
    assert lm_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    assert lm_dtype("auto", torch.device("cuda")) == "bfloat16"
    for native, want in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda n=native: n)
        assert lm_dtype("auto", torch.device("cpu")) == want
