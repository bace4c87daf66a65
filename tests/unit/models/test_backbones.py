"""Frozen backbones: loading tiny models from disk, registry, identities, freezing, real encoders."""

from __future__ import annotations

import shutil

import pytest
import torch

from metamapper.models.backbones import (
    BackboneError,
    build_language_model,
    build_vision_encoder,
    find_smollm2_gguf,
    make_tiny_backbones,
    tiny_tokenizer,
)
from metamapper.models.mapper import AttentionMapper
from metamapper.models.metamapper import MetaMapper, Text
from metamapper.registry import UnknownNameError, list_language_models, list_vision_encoders

# ------------------------------------------------------------------ loading from a directory


def test_make_tiny_backbones_writes_loadable_folders(tiny_dirs):
    for key in ("vision", "lm"):
        assert (tiny_dirs[key] / "config.json").is_file()
        assert (tiny_dirs[key] / "model.safetensors").is_file()
    assert (tiny_dirs["lm"] / "tokenizer.json").is_file()


def test_clip_pooled_features_shape(tiny_vision, images):
    feats = tiny_vision.encode(images)
    assert feats.shape == (3, 1, 16)
    assert (tiny_vision.dim, tiny_vision.n_tokens) == (16, 1)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])  # different images, different features


def test_clip_patch_features_shape(tiny_vision_patch, images):
    feats = tiny_vision_patch.encode(images)
    assert feats.shape == (3, 17, 32)  # CLS + (32 / 8)^2 patches, hidden 32
    assert (tiny_vision_patch.dim, tiny_vision_patch.n_tokens) == (32, 17)


def test_clip_bad_mode_is_rejected(tiny_dirs):
    with pytest.raises(BackboneError, match="mode"):
        build_vision_encoder("clip", path=str(tiny_dirs["vision"]), mode="grid")


@pytest.mark.parametrize(
    ("lm_fixture", "model_cls"),
    [("tiny_lm", "LlamaForCausalLM"), ("tiny_lm_gpt2", "GPT2LMHeadModel")],
)
def test_hf_lm_loads_tiny_archs(request, lm_fixture, model_cls):
    lm = request.getfixturevalue(lm_fixture)
    assert type(lm.model).__name__ == model_cls
    assert lm.embed_dim == 32
    assert lm.eos_token_id == 0 and lm.bos_token_id == 0  # "<|endoftext|>" is the first token
    ids = lm.tokenize(" This is a dax.")
    assert ids and all(isinstance(i, int) for i in ids)
    assert lm.decode(ids) == " This is a dax."
    emb = lm.embed(torch.tensor([ids]))
    assert emb.shape == (1, len(ids), 32)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(lm.tokenizer))


def test_identities_are_stable_across_loads(tiny_dirs, tiny_vision, tiny_lm):
    vision2 = build_vision_encoder("clip", path=str(tiny_dirs["vision"]), mode="pooled")
    lm2 = build_language_model("hf", path=str(tiny_dirs["lm"]))
    assert vision2.identity == tiny_vision.identity
    assert lm2.identity == tiny_lm.identity
    patch = build_vision_encoder("clip", path=str(tiny_dirs["vision"]), mode="patch")
    assert patch.identity != tiny_vision.identity  # the feature mode is part of the identity


def test_identities_of_a_copied_folder_are_equal(tiny_dirs, tiny_lm, tmp_path):
    copy = shutil.copytree(tiny_dirs["lm"], tmp_path / "elsewhere")
    assert build_language_model("hf", path=str(copy)).identity == tiny_lm.identity


def test_identities_differ_for_different_weights(tiny_dirs, tiny_vision, tiny_lm, tmp_path):
    other = make_tiny_backbones(tmp_path, seed=1)
    v1 = build_vision_encoder("clip", path=str(other["vision"]), mode="pooled")
    lm1 = build_language_model("hf", path=str(other["lm"]))
    # the weights do differ ...
    assert not torch.equal(
        v1.model.visual_projection.weight, tiny_vision.model.visual_projection.weight
    )
    # ... so the identities (the feature-cache key) must differ too
    assert v1.identity != tiny_vision.identity
    assert lm1.identity != tiny_lm.identity


def test_registered_tiny_builders():
    assert {"tiny-clip", "clip", "efficientnet-lite0"} <= set(list_vision_encoders())
    assert {"tiny-lm", "hf", "gpt2-random", "smollm2-135m"} <= set(list_language_models())
    v0 = build_vision_encoder("tiny-clip", seed=0)
    v0b = build_vision_encoder("tiny-clip", seed=0)
    v1 = build_vision_encoder("tiny-clip", seed=1)
    assert v0.identity == v0b.identity != v1.identity
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert v0(x).shape == (2, 1, 16)
        assert torch.equal(v0(x), v0b(x))
        assert not torch.allclose(v0(x), v1(x))
    for arch, cls in (("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")):
        lm = build_language_model("tiny-lm", arch=arch, seed=0)
        assert type(lm.model).__name__ == cls
        assert lm.identity == f"tiny-lm:{arch}:seed0"
        assert lm.embed_dim == 32
    with pytest.raises(BackboneError, match="architecture"):
        build_language_model("tiny-lm", arch="bert")


def test_registered_tiny_lm_matches_saved_folder(tiny_lm):
    """make_tiny_backbones writes exactly what the tiny-lm builder builds (same seed)."""
    built = build_language_model("tiny-lm", seed=0, arch="llama")
    for (n1, p1), (n2, p2) in zip(
        built.model.state_dict().items(), tiny_lm.model.state_dict().items(), strict=True
    ):
        assert n1 == n2
        assert torch.equal(p1, p2), n1


def test_unknown_backbone_name_lists_registered_names():
    with pytest.raises(UnknownNameError) as err:
        build_language_model("no-such-lm")
    msg = str(err.value)
    assert "no-such-lm" in msg and "tiny-lm" in msg and "gpt2-random" in msg
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownNameError, match="tiny-clip"):
        build_vision_encoder("no-such-encoder")


def test_directory_without_weights_names_the_directory(tiny_dirs, tmp_path):
    no_weights = tmp_path / "lm-no-weights"
    shutil.copytree(tiny_dirs["lm"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(BackboneError, match="no weights") as err:
        build_language_model("hf", path=str(no_weights))
    assert str(no_weights) in str(err.value)

    no_config = tmp_path / "vision-no-config"
    shutil.copytree(tiny_dirs["vision"], no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(BackboneError, match="config.json") as err:
        build_vision_encoder("clip", path=str(no_config))
    assert str(no_config) in str(err.value)


def test_nonexistent_local_path_is_a_backbone_error(tmp_path):
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(BackboneError, match="does not exist") as err:
        build_language_model("hf", path=str(missing))
    assert str(missing) in str(err.value)
    with pytest.raises(BackboneError, match="does not exist"):
        build_vision_encoder("clip", path=str(missing))


def test_file_instead_of_directory_is_a_backbone_error(tiny_dirs):
    with pytest.raises(BackboneError, match="is a file"):
        build_language_model("hf", path=str(tiny_dirs["lm"] / "config.json"))


# ------------------------------------------------------------------ frozen


def test_backbones_are_frozen(tiny_vision, tiny_lm):
    for backbone in (tiny_vision, tiny_lm):
        params = list(backbone.parameters())
        assert params and not any(p.requires_grad for p in params)
        assert not any(m.training for m in backbone.model.modules())


def test_backbone_wrappers_report_eval_mode_on_build():
    for backbone in (build_vision_encoder("tiny-clip"), build_language_model("tiny-lm")):
        assert not any(m.training for m in backbone.modules())


def test_train_mode_leaves_backbones_in_eval(tiny_vision, tiny_lm):
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=2, num_heads=4)
    model = MetaMapper(vision=tiny_vision, lm=tiny_lm, mapper=mapper)
    try:
        model.train()
        assert model.training and all(m.training for m in model.mapper.modules())
        assert not any(m.training for m in tiny_lm.modules())
        assert not any(m.training for m in tiny_vision.modules())
        tiny_lm.train()  # even a direct call keeps a frozen backbone in eval mode
        tiny_vision.train(True)
        assert not any(m.training for m in tiny_lm.modules())
        assert not any(m.training for m in tiny_vision.modules())
        model.eval()
        assert not any(m.training for m in model.modules())
    finally:
        model.eval()


def test_backward_reaches_only_the_mapper(tiny_vision, tiny_lm, images):
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=2, num_heads=4)
    model = MetaMapper(vision=tiny_vision, lm=tiny_lm, mapper=mapper).train()
    feats = model.encode_images(images[:2])
    batch = model.pack(
        [[0, Text(" This is a dax.", target=True)], [1, Text(" a cat", target=True)]]
    )
    model.loss(feats, batch).backward()
    assert all(p.grad is None for p in tiny_lm.parameters())
    assert all(p.grad is None for p in tiny_vision.parameters())
    for name, p in mapper.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ real encoders / vocabularies


def test_efficientnet_lite0_grid_and_pooled(images):
    grid_enc = build_vision_encoder("efficientnet-lite0", mode="grid")
    grid = grid_enc.encode(images[:2])
    assert grid.shape == (2, 49, 1280)
    pooled_enc = build_vision_encoder("efficientnet-lite0", mode="pooled")
    pooled = pooled_enc.encode(images[:2])
    assert pooled.shape == (2, 1, 1280)
    torch.testing.assert_close(pooled, grid.mean(1, keepdim=True), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pooled[0], pooled[1])
    assert grid_enc.identity != pooled_enc.identity
    grid2_enc = build_vision_encoder("efficientnet-lite0", mode="grid2")
    grid2 = grid2_enc.encode(images[:2])
    assert grid2.shape == (2, 4, 1280)
    fmap = grid.transpose(1, 2).reshape(2, 1280, 7, 7)
    # adaptive pooling of 7 into 2 bins: rows/columns 0-3 and 3-6
    torch.testing.assert_close(grid2[:, 0], fmap[:, :, :4, :4].mean((2, 3)), rtol=1e-5, atol=1e-5)
    assert len({grid_enc.identity, grid2_enc.identity, pooled_enc.identity}) == 3
    assert not any(p.requires_grad for p in grid_enc.parameters())
    # BatchNorm uses its running statistics
    assert not any(m.training for m in grid_enc.model.modules())


def test_gpt2_random_has_the_real_gpt2_vocabulary():
    lm = build_language_model("gpt2-random")
    assert len(lm.tokenizer) == 50257
    assert lm.tokenize(" This is a") == [770, 318, 257]
    assert lm.tokenize("Hello world") == [15496, 995]
    assert lm.eos_token_id == 50256
    assert lm.embed_dim == 768
    assert lm.decode([770, 318, 257]) == " This is a"


def test_tiny_tokenizer_is_deterministic(tiny_lm):
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == 300
    text = " This is a blicket. What is this? A photo of a cat."
    ids = a(text, add_special_tokens=False)["input_ids"]
    assert ids == b(text, add_special_tokens=False)["input_ids"]
    assert ids == tiny_lm.tokenize(text)  # the saved tokenizer loads back identically
    assert len(ids) < len(text)  # BPE merges happened


@pytest.mark.skipif(find_smollm2_gguf() is None,
                    reason="SmolLM2's GGUF is not here (metamapper download smollm2)")
def test_smollm2_loads_from_the_default_cache():
    lm = build_language_model("smollm2-135m")
    assert lm.embed_dim == 576
    assert len(lm.tokenizer) == 49152
    assert lm.identity == "smollm2-135m-instruct:q4_1-f32"
    assert lm.eos_token_id == lm.tokenizer.pad_token_id  # padding must be tracked by the mask
    assert not any(p.requires_grad for p in lm.parameters())
    ids = lm.tokenize(" This is a")
    assert lm.decode(ids) == " This is a"


def test_lm_head_gets_a_contiguous_input(tiny_lm):
    # generation's prefill hands the head hidden[:, -1:, :], a strided view; matmul would copy the
    # (vocab, dim) weight per row for it (backbones._contiguous_input)
    seen = []
    handle = tiny_lm.head.register_forward_hook(lambda m, args, out: seen.append(args[0].is_contiguous()))
    try:
        hidden = torch.randn(3, 5, tiny_lm.embed_dim)
        view = hidden[:, -1:, :]
        assert not view.is_contiguous()
        out = tiny_lm.head(view)
    finally:
        handle.remove()
    assert seen == [True]
    torch.testing.assert_close(out, tiny_lm.head(view.contiguous()))
