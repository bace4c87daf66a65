"""The meta-mapper: shapes, parameter count, multi-head attention semantics, dropout, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metamapper.models.mapper import (
    AttentionMapper,
    MapperShapeError,
    MLPMapper,
    attention_mapper_param_count,
    build_mapper,
    suggested_output_scale,
)

PAPER_PARAMS = 3_943_680  # visual 512, embed 768, l=4, ff 768 (computed by hand, see below)


def small(**kwargs) -> AttentionMapper:
    cfg = dict(visual_dim=12, embed_dim=32, prefix_len=3, num_heads=4, dropout=0.0)
    cfg.update(kwargs)
    return AttentionMapper(**cfg).eval()


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize("n_tokens", [1, 5])
def test_attention_mapper_output_shape(n_tokens):
    mapper = small()
    out = mapper(torch.randn(2, n_tokens, 12))
    assert out.shape == (2, 3, 32)
    assert torch.isfinite(out).all()


def test_attention_mapper_accepts_2d_pooled_features():
    mapper = small()
    x = torch.randn(4, 12)
    out = mapper(x)
    assert out.shape == (4, 3, 32)
    torch.testing.assert_close(out, mapper(x[:, None]))


def test_attention_mapper_rows_are_independent():
    mapper = small()
    x = torch.randn(3, 2, 12)
    torch.testing.assert_close(mapper(x)[1:2], mapper(x[1:2]), rtol=1e-5, atol=1e-6)


def test_attention_mapper_output_depends_on_the_image():
    mapper = small()
    out = mapper(torch.randn(2, 1, 12))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_num_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="divide"):
        AttentionMapper(visual_dim=12, embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="prefix_len"):
        AttentionMapper(visual_dim=12, embed_dim=32, prefix_len=0, num_heads=4)


def test_wrong_visual_dim_is_a_mapper_shape_error():
    with pytest.raises(MapperShapeError, match="13"):
        small()(torch.randn(2, 1, 13))
    with pytest.raises(MapperShapeError):
        small()(torch.randn(2, 13))
    with pytest.raises(MapperShapeError):
        MLPMapper(visual_dim=12, embed_dim=32)(torch.randn(2, 1, 13))
    assert issubclass(MapperShapeError, ValueError)


def test_mlp_mapper_shapes():
    mapper = MLPMapper(visual_dim=12, embed_dim=32, prefix_len=3, dropout=0.0).eval()
    assert mapper(torch.randn(2, 12)).shape == (2, 3, 32)
    x = torch.randn(2, 5, 12)
    out = mapper(x)
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(out, mapper(x.mean(1)))  # multi-token features are mean-pooled
    assert not torch.allclose(out[0], out[1])
    assert mapper.net[0].out_features == 32 * 3 // 2  # default hidden size l*D/2


def test_build_mapper():
    assert isinstance(build_mapper("mlp", visual_dim=4, embed_dim=8), MLPMapper)
    assert isinstance(
        build_mapper("attention", visual_dim=4, embed_dim=8, num_heads=2), AttentionMapper
    )
    with pytest.raises(ValueError, match="attention"):
        build_mapper("transformer", visual_dim=4, embed_dim=8)


# ------------------------------------------------------------------ parameter count


def test_parameter_count_at_the_paper_setting():
    mapper = AttentionMapper(visual_dim=512, embed_dim=768, prefix_len=4, num_heads=8)
    counted = sum(p.numel() for p in mapper.parameters() if p.requires_grad)
    d, v, n_prefix = 768, 512, 4
    by_hand = (
        n_prefix * d + (v + 1) * d + (d + 1) * 3 * d + (d + 1) * d + 2 * 2 * d + 2 * (d + 1) * d
    )
    print(f"AttentionMapper(512 -> 768, l=4, 8 heads): {counted} parameters")
    assert by_hand == PAPER_PARAMS
    assert attention_mapper_param_count(512, 768, 4) == PAPER_PARAMS
    assert counted == PAPER_PARAMS


@pytest.mark.parametrize(("v", "d", "n_prefix", "ff"), [(16, 32, 2, None), (12, 32, 5, 48)])
def test_parameter_count_formula_other_sizes(v, d, n_prefix, ff):
    mapper = AttentionMapper(visual_dim=v, embed_dim=d, prefix_len=n_prefix, num_heads=4, ff_dim=ff)
    expected = attention_mapper_param_count(v, d, n_prefix, ff)
    assert sum(p.numel() for p in mapper.parameters()) == expected


# ------------------------------------------------------------------ attention semantics


def mha_like(mapper: AttentionMapper, num_heads: int) -> nn.MultiheadAttention:
    """torch's MultiheadAttention with the mapper's projection weights copied in."""
    d = mapper.embed_dim
    mha = nn.MultiheadAttention(d, num_heads, dropout=0.0, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(mapper.qkv.weight)
        mha.in_proj_bias.copy_(mapper.qkv.bias)
        mha.out_proj.weight.copy_(mapper.out.weight)
        mha.out_proj.bias.copy_(mapper.out.bias)
    return mha


def reference_forward(mapper: AttentionMapper, mha: nn.MultiheadAttention, x: torch.Tensor):
    """The mapper's forward pass written with nn.MultiheadAttention (eval mode)."""
    h = torch.cat([mapper.prefix.expand(x.shape[0], -1, -1), mapper.visual_proj(x)], dim=1)
    a, _ = mha(h, h, h, need_weights=False)
    h = mapper.norm1(h + a)
    h = mapper.norm2(h + mapper.ff(h))
    return h[:, : mapper.prefix_len]


def _randomise(mapper: nn.Module) -> None:
    """Non-zero biases and LayerNorm affines, so every parameter matters."""
    with torch.no_grad():
        for p in mapper.parameters():
            p.add_(0.3 * torch.randn_like(p))


@pytest.mark.parametrize(("num_heads", "n_tokens"), [(8, 1), (8, 6), (2, 3)])
def test_attention_matches_torch_multihead_attention(num_heads, n_tokens):
    """Same head split (contiguous head_dim chunks of q, k, v) and 1/sqrt(head_dim) scaling."""
    mapper = small(visual_dim=10, embed_dim=48, prefix_len=4, num_heads=num_heads)
    _randomise(mapper)
    x = torch.randn(3, n_tokens, 10)
    with torch.no_grad():
        expected = reference_forward(mapper, mha_like(mapper, num_heads), x)
        # the attention block alone, captured at the output projection
        seen = {}
        hook = mapper.out.register_forward_hook(lambda m, i, o: seen.setdefault("attn", o))
        out = mapper(x)
        hook.remove()
        h = torch.cat([mapper.prefix.expand(3, -1, -1), mapper.visual_proj(x)], dim=1)
        attn_ref, _ = mha_like(mapper, num_heads)(h, h, h, need_weights=False)
    torch.testing.assert_close(seen["attn"], attn_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_head_count_is_observable():
    """The comparison above can fail: a different head split gives a different output."""
    mapper = small(visual_dim=10, embed_dim=48, prefix_len=4, num_heads=8)
    _randomise(mapper)
    x = torch.randn(2, 3, 10)
    with torch.no_grad():
        out = mapper(x)
        wrong_heads = reference_forward(mapper, mha_like(mapper, 1), x)
    assert not torch.allclose(out, wrong_heads, atol=1e-3)


def test_attention_scaling_is_one_over_sqrt_head_dim():
    """Recompute the attention by hand for one head (8 heads of 6 dims)."""
    mapper = small(visual_dim=10, embed_dim=48, prefix_len=4, num_heads=8)
    _randomise(mapper)
    x = torch.randn(1, 2, 10)
    seen = {}
    hook = mapper.out.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    with torch.no_grad():
        mapper(x)
        hook.remove()
        h = torch.cat([mapper.prefix[None], mapper.visual_proj(x)], dim=1)[0]  # (6, 48)
        q, k, v = mapper.qkv(h).split(48, dim=-1)
        head = slice(6 * 5, 6 * 6)  # head 5
        scores = q[:, head] @ k[:, head].T / math.sqrt(6)
        expected = F.softmax(scores, dim=-1) @ v[:, head]
    torch.testing.assert_close(seen["in"][0, :, head], expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ dropout, init, scale


def test_dropout_follows_train_and_eval_modes():
    mapper = small(dropout=0.5)
    x = torch.randn(2, 3, 12)
    mapper.eval()
    with torch.no_grad():
        a, b = mapper(x), mapper(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    no_dropout = small(dropout=0.0)
    no_dropout.load_state_dict(mapper.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a, no_dropout(x))  # eval mode: dropout fully off
    mapper.train()
    with torch.no_grad():
        c, d = mapper(x), mapper(x)
    assert not torch.allclose(c, d)
    assert not torch.allclose(c, a)


def test_mlp_dropout_follows_train_and_eval_modes():
    mapper = MLPMapper(visual_dim=12, embed_dim=32, dropout=0.5)
    x = torch.randn(2, 12)
    with torch.no_grad():
        mapper.eval()
        torch.testing.assert_close(mapper(x), mapper(x), rtol=0, atol=0)
        mapper.train()
        assert not torch.allclose(mapper(x), mapper(x))


def _xavier_bound(w: torch.Tensor) -> float:
    fan_out, fan_in = w.shape
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_xavier_uniform_init_and_zero_biases(kind):
    if kind == "attention":
        mapper = AttentionMapper(visual_dim=24, embed_dim=64, prefix_len=4, num_heads=8)
        weights = [mapper.prefix] + [m.weight for m in mapper.modules() if isinstance(m, nn.Linear)]
    else:
        mapper = MLPMapper(visual_dim=24, embed_dim=64, prefix_len=4)
        weights = [m.weight for m in mapper.modules() if isinstance(m, nn.Linear)]
    for w in weights:
        bound = _xavier_bound(w)
        assert w.abs().max() <= bound + 1e-7
        assert w.abs().max() > 0.9 * bound  # uniform over the whole range, not a smaller init
        torch.testing.assert_close(w.std().item(), bound / math.sqrt(3), rtol=0.15, atol=0)
    for m in mapper.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0


def test_output_scale_sets_the_norm_of_each_prefix_vector():
    mapper = small(output_scale=0.5)
    out = mapper(torch.randn(3, 2, 12))
    torch.testing.assert_close(
        out.norm(dim=-1), torch.full((3, 3), 0.5 * math.sqrt(32)), rtol=1e-3, atol=1e-3
    )
    emb = torch.randn(100, 32) * 2.0
    expected = emb.norm(dim=-1).median().item() / math.sqrt(32)
    assert suggested_output_scale(emb) == pytest.approx(expected)


# ------------------------------------------------------------------ functional parameters


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_functional_call_matches_the_module(kind):
    if kind == "attention":
        mapper = small()
    else:
        mapper = MLPMapper(visual_dim=12, embed_dim=32, prefix_len=3, dropout=0.0).eval()
    x = torch.randn(2, 2, 12)
    params = {n: p.detach().clone() for n, p in mapper.named_parameters()}
    torch.testing.assert_close(functional_call(mapper, params, (x,)), mapper(x), rtol=0, atol=0)
    before = mapper(x).detach()
    changed = {n: p + 0.1 * torch.randn_like(p) for n, p in params.items()}
    out_changed = functional_call(mapper, changed, (x,))
    assert not torch.allclose(out_changed, before, atol=1e-4)
    torch.testing.assert_close(mapper(x), before, rtol=0, atol=0)  # the module is untouched


def test_functional_gradients_flow_to_the_params_dict():
    mapper = small()
    params = {n: p.detach().clone().requires_grad_() for n, p in mapper.named_parameters()}
    out = functional_call(mapper, params, (torch.randn(2, 1, 12),))
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert dict(zip(params, grads, strict=True))["prefix"].abs().sum() > 0
    assert all(p.grad is None for p in mapper.parameters())


def test_standardize_uses_stored_feature_statistics_and_checkpoints_carry_them() -> None:
    torch.manual_seed(0)
    m = AttentionMapper(visual_dim=8, embed_dim=16, prefix_len=2, num_heads=4, dropout=0.0,
                        standardize=True).eval()
    x = torch.randn(3, 1, 8) * 5 + 2
    before = m(x)
    m.set_feature_stats(torch.full((8,), 2.0), torch.full((8,), 5.0))
    after = m(x)
    assert not torch.allclose(before, after)
    clone = AttentionMapper(visual_dim=8, embed_dim=16, prefix_len=2, num_heads=4, dropout=0.0,
                            standardize=True).eval()
    clone.load_state_dict(m.state_dict())
    torch.testing.assert_close(clone(x), after)
    # the statistics are buffers, never trained
    assert "feat_mean" not in dict(m.named_parameters())


def test_pre_ln_block_and_learned_output_scale() -> None:
    torch.manual_seed(0)
    m = AttentionMapper(visual_dim=8, embed_dim=16, prefix_len=2, num_heads=4, dropout=0.0,
                        norm_first=True, output_scale=0.5).eval()
    out = m(torch.randn(3, 4, 8))
    assert out.shape == (3, 2, 16)
    # each prefix vector is layer-normalised, then scaled: norm = 0.5 * sqrt(16)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((3, 2), 2.0), rtol=1e-3, atol=1e-3)
    assert m.out_scale.requires_grad
