"""``mapper.kind: paper``: the authors' mapper (``PaperMapper``), its size at CLIP 512 / GPT-2
768 against the formula written out from their code, and its forward pass against a literal
transcription of theirs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metamapper.config import load_config
from metamapper.models.factory import build_model
from metamapper.models.mapper import (
    AttentionMapper,
    PaperMapper,
    build_mapper,
    paper_mapper_param_count,
)

SMOKE = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_parameter_count_at_clip_512_gpt2_768() -> None:
    mapper = PaperMapper(visual_dim=512, embed_dim=768, prefix_len=4, num_heads=8)
    counted = sum(p.numel() for p in mapper.parameters() if p.requires_grad)
    # the authors' AttentionMapper.config, entry by entry ([out, in] weights + biases):
    v, d, n_prefix = 512, 768, 4
    by_hand = (
        n_prefix * v            # ('parameter', [prefix_length, dim_clip])
        + 3 * (d * v + d)       # fc_q, fc_k, fc_v: [dim_gpt_embedding, dim_clip]
        + (d * d + d)           # fc_o: [dim_gpt_embedding, dim_gpt_embedding]
        + 2 * (d + d)           # layer_norm_1, layer_norm_2: weight and bias
    )
    assert by_hand == 1_777_664  # the paper's "~1.8M"
    assert counted == by_hand == paper_mapper_param_count(512, 768, 4)
    ours = AttentionMapper(visual_dim=512, embed_dim=768, prefix_len=4, num_heads=8)
    assert sum(p.numel() for p in ours.parameters()) > 2 * counted  # the default mapper is not it


def authors_forward(m: PaperMapper, clip_x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The released ``AttentionMapper.forward`` transcribed literally, dropout off."""
    b = clip_x.shape[0]
    x_prefix = torch.cat((m.prefix.unsqueeze(0).expand(b, *m.prefix.shape), clip_x), dim=1)
    Q, K, V = m.q(x_prefix), m.k(x_prefix), m.v(x_prefix)
    dim_v = m.visual_dim
    dim_split = dim_v // num_heads
    Q_ = torch.cat(Q.split(dim_split, 2), 0)
    K_ = torch.cat(K.split(dim_split, 2), 0)
    V_ = torch.cat(V.split(dim_split, 2), 0)
    A = F.softmax(Q_.bmm(K_.transpose(1, 2)) / math.sqrt(dim_v), 2)
    out = torch.cat((Q_ + A.bmm(V_)).split(Q.size(0), 0), 2)  # their O
    out = F.layer_norm(out, [out.shape[-1]], m.norm1.weight, m.norm1.bias)
    out = out + F.leaky_relu(m.ff(out))
    out = F.layer_norm(out, [out.shape[-1]], m.norm2.weight, m.norm2.bias)
    return out[:, : m.prefix_len]


@pytest.mark.parametrize(("v", "d", "heads", "n_tokens"), [(512, 768, 8, 1), (16, 32, 4, 3)])
def test_forward_equals_the_authors(v: int, d: int, heads: int, n_tokens: int) -> None:
    torch.manual_seed(0)
    m = PaperMapper(visual_dim=v, embed_dim=d, prefix_len=4, num_heads=heads).eval()
    with torch.no_grad():  # non-trivial LayerNorms, so a swapped norm would show
        for norm in (m.norm1, m.norm2):
            norm.weight.normal_(1.0, 0.1)
            norm.bias.normal_(0.0, 0.1)
    x = torch.randn(3, n_tokens, v)
    with torch.no_grad():
        torch.testing.assert_close(m(x), authors_forward(m, x, heads), rtol=1e-4, atol=1e-5)
    assert m(x).shape == (3, 4, d)
    assert m.num_heads == d // (v // heads)  # 512 / 768 with 8 "heads": 12 slices of 64


def test_dropout_only_in_train_mode_and_functional_parameters() -> None:
    torch.manual_seed(0)
    m = PaperMapper(visual_dim=16, embed_dim=32, prefix_len=2, num_heads=4)
    x = torch.randn(5, 1, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))  # dropout 0.5 while training
    m.eval()
    params = {k: p.detach() + 0.01 for k, p in m.named_parameters()}
    assert "prefix" in params and params["prefix"].shape == (2, 16)  # the visual-space prefix
    assert not torch.allclose(functional_call(m, params, (x,)), m(x))
    with pytest.raises(ValueError, match="embed_dim"):
        PaperMapper(visual_dim=16, embed_dim=30, num_heads=4)


def test_kind_paper_builds_the_paper_mapper_and_the_paper_configs_use_it() -> None:
    assert isinstance(build_mapper("paper", visual_dim=8, embed_dim=16, num_heads=2), PaperMapper)
    cfg = load_config(SMOKE, ["mapper.kind=paper", "mapper.dropout=0.5"])
    torch.manual_seed(0)
    model = build_model(cfg.backbones, cfg.mapper, with_vision=False, visual_dim=16)
    assert isinstance(model.mapper, PaperMapper) and model.mapper.dropout.p == 0.5
    model.eval()
    with torch.no_grad():
        assert model.mapper(torch.randn(2, 1, 16)).shape == (2, cfg.mapper.prefix_len, model.lm.embed_dim)
    # (the Fashion recipes keep the paper's block: the paper mapper's head widths do not divide the
    # embedded backbones' 1280 / 576, see tests/integration/test_configs.py)
    for name in ("paper_coco", "paper_frozen_indomain"):
        m = load_config(CONFIGS / f"{name}.yaml").mapper
        assert (m.kind, m.prefix_len, m.num_heads, m.dropout) == ("paper", 4, 8, 0.5), name
        assert not m.standardize and not m.output_norm, name
