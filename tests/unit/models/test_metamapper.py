"""MetaMapper on tiny backbones: packing, the masked loss, functional parameters, interleaving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metamapper.models.mapper import AttentionMapper, MLPMapper
from metamapper.models.metamapper import IGNORE, MetaMapper, Text

L = 3  # prefix length used throughout


@pytest.fixture
def model(tiny_vision, tiny_lm) -> MetaMapper:
    """Tiny Llama (EOS = BOS = pad = 0) + pooled tiny CLIP (16-d) + a 3-vector attention mapper."""
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=L, num_heads=4, dropout=0.0)
    return MetaMapper(vision=tiny_vision, lm=tiny_lm, mapper=mapper).eval()


@pytest.fixture
def model_gpt2(tiny_lm_gpt2) -> MetaMapper:
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=L, num_heads=4, dropout=0.0)
    return MetaMapper(vision=None, lm=tiny_lm_gpt2, mapper=mapper).eval()


@pytest.fixture
def feats() -> torch.Tensor:
    return torch.randn(3, 1, 16)


ROWS = [
    [0, Text(" This is a"), Text(" dax.", target=True)],
    [1, Text(" blicket", target=True)],
    [2, Text(" A photo of a cat on a red mat."), Text(" Two dogs.", target=True)],
]


def reference_loss(model: MetaMapper, feats, batch, params=None):
    """Token losses from the full HF forward (all logits), masked by the labels."""
    emb = model.embed(feats, batch, params)
    logits = model.lm.model(inputs_embeds=emb, attention_mask=batch.attention_mask).logits
    logits, labels = logits[:, :-1], batch.labels[:, 1:]
    tok = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    sel = labels != IGNORE
    return tok[sel].mean(), tok.sum(1) / sel.sum(1), sel.sum(1)


# ------------------------------------------------------------------ pack


def test_pack_layout(model):
    lm = model.lm
    q, dax, blicket = lm.tokenize(" This is a"), lm.tokenize(" dax."), lm.tokenize(" blicket")
    batch = model.pack(ROWS[:2])
    eos, bos = lm.eos_token_id, lm.bos_token_id
    len0 = 1 + L + len(q) + len(dax) + 1
    len1 = 1 + L + len(blicket) + 1
    assert batch.input_ids.shape == (2, max(len0, len1)) == batch.labels.shape
    assert batch.n_rows == 2

    # row 0: BOS, L prefix slots, question, target, EOS
    assert batch.input_ids[0, 0] == bos
    assert batch.input_ids[0, 1 + L : 1 + L + len(q)].tolist() == q
    assert batch.input_ids[0, 1 + L + len(q) : len0].tolist() == dax + [eos]
    assert batch.labels[0, : 1 + L + len(q)].tolist() == [IGNORE] * (1 + L + len(q))
    assert batch.labels[0, 1 + L + len(q) : len0].tolist() == dax + [eos]
    # row 1: BOS, prefix, target, EOS, then right padding
    assert batch.input_ids[1, 0] == bos
    assert batch.labels[1, : 1 + L].tolist() == [IGNORE] * (1 + L)
    assert batch.labels[1, 1 + L : len1].tolist() == blicket + [eos]
    assert (batch.labels[1, len1:] == IGNORE).all()

    # attention mask: 1 on BOS, prefix, text and EOS; 0 on (right) padding only
    assert batch.attention_mask[0].tolist() == [1] * len0 + [0] * (batch.input_ids.shape[1] - len0)
    assert batch.attention_mask[1].tolist() == [1] * len1 + [0] * (batch.input_ids.shape[1] - len1)

    # prefix slots: columns 1..L of each row, images in row order
    assert batch.prefix_rows.tolist() == [0] * L + [1] * L
    assert batch.prefix_cols.tolist() == list(range(1, 1 + L)) * 2
    assert batch.image_index.tolist() == [0, 1]


def test_padding_is_tracked_by_the_mask_not_by_token_ids(model):
    """Tiny Llama: EOS = BOS = pad = 0 = the input_ids fill value; mask and labels ignore ids."""
    lm = model.lm
    assert lm.eos_token_id == lm.bos_token_id == 0 == lm.model.config.pad_token_id
    short, long = [0, Text(" dax", target=True)], [1, Text(" This is a shirt.", target=True)]
    batch = model.pack([short, long])
    n_short = 1 + L + len(lm.tokenize(" dax")) + 1
    width = batch.input_ids.shape[1]
    assert n_short < width
    # the EOS of the short row and its padding share the id 0 ...
    assert batch.input_ids[0, n_short - 1] == 0 and (batch.input_ids[0, n_short:] == 0).all()
    # ... yet the EOS is real and trained, the padding is neither
    assert (
        batch.attention_mask[0, n_short - 1] == 1 and (batch.attention_mask[0, n_short:] == 0).all()
    )
    assert batch.labels[0, n_short - 1] == 0 and (batch.labels[0, n_short:] == IGNORE).all()
    # BOS (id 0) and prefix slots (id 0) are real positions too
    assert batch.attention_mask[:, : 1 + L].eq(1).all()
    assert batch.attention_mask.sum(1).tolist() == [n_short, width]


def test_pack_without_images(model):
    batch = model.pack([[Text("What is this?"), Text(" dax", target=True)]])
    assert batch.prefix_rows.numel() == batch.prefix_cols.numel() == batch.image_index.numel() == 0
    emb = model.embed(torch.zeros(0, 1, 16), batch)
    torch.testing.assert_close(emb, model.lm.embed(batch.input_ids))
    assert torch.isfinite(model.loss(torch.zeros(0, 1, 16), batch))


def test_long_text_is_truncated_with_a_warning(tiny_vision, tiny_lm):
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=L, num_heads=4)
    model = MetaMapper(vision=tiny_vision, lm=tiny_lm, mapper=mapper, max_text_tokens=4)
    caption = " Two dogs play with a ball in the park. The man holds an umbrella near the bus."
    full = tiny_lm.tokenize(caption)
    assert len(full) > 4
    with pytest.warns(UserWarning, match="truncated to 4"):
        batch = model.pack([[0, Text(caption, target=True)]])
    assert batch.input_ids.shape == (1, 1 + L + 4 + 1)
    assert batch.labels[0, 1 + L :].tolist() == full[:4] + [tiny_lm.eos_token_id]


# ------------------------------------------------------------------ loss


@pytest.mark.parametrize("which", ["model", "model_gpt2"])
def test_loss_equals_full_hf_forward_reference(request, which, feats):
    model = request.getfixturevalue(which)
    batch = model.pack(ROWS)
    with torch.no_grad():
        loss = model.loss(feats, batch)
        per_row = model.loss(feats, batch, per_row=True)
        ref, ref_rows, counts = reference_loss(model, feats, batch)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_row, ref_rows, rtol=1e-5, atol=1e-5)
    # per-row losses are means over each row's targets: their token-weighted mean is the loss
    torch.testing.assert_close((per_row * counts).sum() / counts.sum(), loss, rtol=1e-5, atol=1e-5)
    assert loss.item() > 0 and per_row.shape == (3,)


def test_loss_counts_only_target_tokens_and_eos(model, feats):
    lm = model.lm
    batch = model.pack(ROWS)
    sel = batch.labels != IGNORE
    expected = [
        len(lm.tokenize(" dax.")) + 1,
        len(lm.tokenize(" blicket")) + 1,
        len(lm.tokenize(" Two dogs.")) + 1,
    ]
    assert sel.sum(1).tolist() == expected
    # the EOS id is among the labels of every row, as the last target
    for r in range(3):
        assert batch.labels[r][sel[r]][-1] == lm.eos_token_id


def test_eos_is_trained(model, feats):
    """The loss includes -log p(EOS) after the target: the model learns to stop."""
    batch = model.pack([[0, Text(" dax", target=True)]])
    emb = model.embed(feats, batch)
    hidden = model.lm.backbone(inputs_embeds=emb, attention_mask=batch.attention_mask)
    logits = model.lm.head(hidden.last_hidden_state)
    eos_pos = int(batch.attention_mask.sum()) - 2  # the position that predicts EOS
    with torch.no_grad():
        loss = model.loss(feats, batch)
        logp = logits.log_softmax(-1)
        dax = model.lm.tokenize(" dax")
        manual = -(
            sum(logp[0, 1 + L + i - 1, t] for i, t in enumerate(dax))
            + logp[0, eos_pos, model.lm.eos_token_id]
        ) / (len(dax) + 1)
    torch.testing.assert_close(loss, manual, rtol=1e-5, atol=1e-5)


def test_row_loss_does_not_depend_on_batch_padding_or_other_rows(model, feats):
    short = [0, Text(" This is a"), Text(" dax.", target=True)]
    long = [1, Text(" Two dogs play with a ball in the park."), Text(" blicket", target=True)]
    with torch.no_grad():
        alone = model.loss(feats, model.pack([short]), per_row=True)
        batch = model.pack([short, long])
        assert batch.attention_mask[0].sum() < batch.input_ids.shape[1]  # short row is padded
        batched = model.loss(feats, batch, per_row=True)
        # garbage ids in the padding change nothing
        batch.input_ids[batch.attention_mask == 0] = 7
        garbage = model.loss(feats, batch, per_row=True)
        # a different second row changes nothing for the first
        other = model.loss(feats, model.pack([short, [2, Text(" cat", target=True)]]), per_row=True)
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(garbage, batched, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other[0], alone[0], rtol=1e-5, atol=1e-5)


def test_loss_depends_on_the_image_and_the_context(model, feats):
    """The checks above can fail: the loss does react to the prefix and to non-target text."""
    row = [0, Text(" This is a"), Text(" dax.", target=True)]
    with torch.no_grad():
        base = model.loss(feats, model.pack([row]))
        other_image = model.loss(feats, model.pack([[1, *row[1:]]]))
        other_context = model.loss(feats, model.pack([[0, Text(" A cat"), row[2]]]))
    assert not torch.allclose(base, other_image)
    assert not torch.allclose(base, other_context)


def test_params_dict_path_equals_module_path(model, feats):
    batch = model.pack(ROWS)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.mapper_params().items()}
    assert set(params) == {n for n, _ in model.mapper.named_parameters()}
    module_loss = model.loss(feats, batch)
    module_loss.backward()
    func_loss = model.loss(feats, batch, params)
    torch.testing.assert_close(func_loss, module_loss, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad(func_loss, list(params.values()))
    for (name, p), g in zip(model.mapper.named_parameters(), grads, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6, msg=name)
    changed = {n: p + 0.05 * torch.randn_like(p) for n, p in params.items()}
    with torch.no_grad():
        assert not torch.allclose(model.loss(feats, batch, changed), module_loss)
        # precomputed prefixes are the same as computing them from features
        pre = model.prefixes(feats[batch.image_index], changed)
        torch.testing.assert_close(
            model.loss(feats, batch, prefixes=pre), model.loss(feats, batch, changed)
        )


def test_mismatched_dims_are_rejected_at_construction(tiny_vision, tiny_lm):
    with pytest.raises(ValueError, match="16"):
        MetaMapper(
            vision=tiny_vision,
            lm=tiny_lm,
            mapper=AttentionMapper(visual_dim=32, embed_dim=32, num_heads=4),
        )
    with pytest.raises(ValueError, match="embedding size"):
        MetaMapper(
            vision=tiny_vision,
            lm=tiny_lm,
            mapper=AttentionMapper(visual_dim=16, embed_dim=64, num_heads=4),
        )
    # without an encoder (cached features) only the LM side is checked
    MetaMapper(vision=None, lm=tiny_lm, mapper=MLPMapper(visual_dim=32, embed_dim=32))


def test_encode_images_then_loss(model, images):
    feats = model.encode_images(images)
    assert feats.shape == (3, 1, 16)
    assert torch.isfinite(model.loss(feats, model.pack(ROWS)))
    with pytest.raises(RuntimeError, match="without an image encoder"):
        MetaMapper(vision=None, lm=model.lm, mapper=model.mapper).encode_images(images)


# ------------------------------------------------------------------ interleaved rows


def test_interleaved_rows_put_each_prefix_at_its_slot(model, feats):
    lm = model.lm
    rows = [
        [
            2,
            Text(" This is a dax."),
            0,
            Text(" This is a blicket."),
            1,
            Text(" This is a"),
            Text(" dax", target=True),
        ],
        [Text(" What is this?"), 1, Text(" cat", target=True)],
    ]
    batch = model.pack(rows)
    assert batch.image_index.tolist() == [2, 0, 1, 1]
    a, b = len(lm.tokenize(" This is a dax.")), len(lm.tokenize(" This is a blicket."))
    q = len(lm.tokenize(" What is this?"))
    starts = [(0, 1), (0, 1 + L + a), (0, 1 + 2 * L + a + b), (1, 1 + q)]
    expected_cols = [c + i for _, c in starts for i in range(L)]
    assert batch.prefix_rows.tolist() == [r for r, _ in starts for _ in range(L)]
    assert batch.prefix_cols.tolist() == expected_cols

    with torch.no_grad():
        emb = model.embed(feats, batch)
        prefixes = model.mapper(feats)  # (3, L, D)
    token_emb = lm.embed(batch.input_ids)
    is_prefix = torch.zeros_like(batch.input_ids, dtype=torch.bool)
    for slot, (r, c) in enumerate(starts):
        image = batch.image_index[slot]
        torch.testing.assert_close(emb[r, c : c + L], prefixes[image], rtol=1e-6, atol=1e-6)
        is_prefix[r, c : c + L] = True
    # every other position holds its token embedding
    torch.testing.assert_close(emb[~is_prefix], token_emb[~is_prefix])
    # and the prefixes of different images are different
    assert not torch.allclose(emb[0, 1 : 1 + L], emb[0, starts[1][1] : starts[1][1] + L])

    with torch.no_grad():
        loss = model.loss(feats, batch, per_row=True)
        ref, ref_rows, _ = reference_loss(model, feats, batch)
    torch.testing.assert_close(loss, ref_rows, rtol=1e-5, atol=1e-5)


def test_patch_features_through_the_model(tiny_vision_patch, tiny_lm, images):
    mapper = AttentionMapper(visual_dim=32, embed_dim=32, prefix_len=L, num_heads=4)
    model = MetaMapper(vision=tiny_vision_patch, lm=tiny_lm, mapper=mapper).eval()
    feats = model.encode_images(images[:2])
    assert feats.shape == (2, 17, 32)
    batch = model.pack([[0, Text(" dax", target=True)], [1, Text(" blicket", target=True)]])
    with torch.no_grad():
        _, ref_rows, _ = reference_loss(model, feats, batch)
        torch.testing.assert_close(
            model.loss(feats, batch, per_row=True), ref_rows, rtol=1e-5, atol=1e-5
        )


# ------------------------------------------------------------------ shared context


def test_shared_context_is_the_items_a_groups_rows_open_with(model):
    ctx = [Text(" Answer."), 0, Text(" This is a dax."), 1, Text(" This is a wug.")]
    n_ctx = 1 + len(model.lm.tokenize(" Answer.")) + 2 * L + len(model.lm.tokenize(" This is a dax.")) \
        + len(model.lm.tokenize(" This is a wug."))
    rows = [[*ctx, 2, Text(" Q:")], [*ctx, 3, Text(" Q: what?")],  # task 0: its context
            [4, Text(" Q:")],  # task 1: one row, nothing shared
            [Text(" Answer."), 5, Text(" Q:")], [Text(" Answer."), 6]]  # task 2: the instruction
    shared = model.shared_context(rows, [0, 0, 1, 2, 2])
    assert list(shared.leader) == [0, 0, 2, 3, 3]
    assert list(shared.length) == [n_ctx, n_ctx, 1, 1 + len(model.lm.tokenize(" Answer.")),
                                   1 + len(model.lm.tokenize(" Answer."))]
    # a row that is all context keeps its last item for itself
    whole = model.shared_context([ctx, [*ctx, 2]], [0, 0])
    assert whole.length[0] == whole.length[1] == n_ctx - len(model.lm.tokenize(" This is a wug."))


def test_grouped_generation_equals_ungrouped(model):
    torch.manual_seed(3)
    with torch.no_grad():  # a mapper whose prefixes matter against the tiny LM's embeddings
        for p in model.mapper.parameters():
            p.mul_(5.0)
    feats = torch.randn(7, 1, 16)
    ctx = [0, Text(" This is a dax."), 1, Text(" This is a wug.")]
    rows = [[*ctx, 2, Text(" Q: What is this? A:")], [*ctx, 3, Text(" Q: What is this? A:")],
            [*ctx, 4, Text(" Q: And this?")], [5, Text(" Q: What is this? A:")],
            [6, Text(" This is a blicket."), 0, Text(" Q:")]]
    groups = [0, 0, 0, 1, 2]
    assert model.shared_context(rows, groups).useful()
    grouped = model.generate(feats, rows, max_new_tokens=6, groups=groups, stop_ids=frozenset())
    assert grouped == model.generate(feats, rows, max_new_tokens=6, stop_ids=frozenset())
    assert len(set(grouped[:3])) > 1  # the queries of the group get different answers
