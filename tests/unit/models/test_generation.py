"""Tests for batched generation from embeddings (tiny random Llama and GPT-2): ``transformers``'
``generate`` behind our padding, stopping and answer rules, against a plain greedy loop."""

from __future__ import annotations

import pytest
import torch

from metamapper.models.backbones import LanguageModel, build_language_model
from metamapper.models.generation import SharedContext, cut_answer, generate, stop_token_ids

ARCHS = ("llama", "gpt2")
NEVER_STOP = frozenset()


def _sharp_tiny_lm(arch: str) -> LanguageModel:
    """A tiny random LM whose greedy output actually depends on the context.

    With small random weights the residual stream is dominated by the input embedding, so a
    tied-embedding model just repeats one token forever; a test on such output would pass even
    with broken positions or masks. Scaling the transformer's matrices (not the embeddings)
    makes the layers matter: rows then produce varied, position-sensitive tokens.
    """
    lm = build_language_model("tiny-lm", seed=0, arch=arch)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if p.ndim == 2 and not any(k in name for k in ("wte", "wpe", "embed_tokens")):
                p.mul_(10.0)
    return lm


@pytest.fixture(scope="module", params=ARCHS)
def lm(request: pytest.FixtureRequest) -> LanguageModel:
    return _sharp_tiny_lm(request.param)


def _batch(
    lm: LanguageModel, lengths: list[int], *, side: str, seed: int = 0, pad: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random prompts scaled like token embeddings, padded on ``side``.

    Returns:
        (inputs_embeds (B, T, d), attention_mask (B, T), the unpadded prompts).
    """
    g = torch.Generator().manual_seed(seed)
    scale = lm.model.get_input_embeddings().weight.std()
    prompts = [torch.randn(n, lm.embed_dim, generator=g) * scale for n in lengths]
    width = max(lengths)
    # padding holds garbage on purpose: only the mask may decide what is real
    embeds = torch.randn(len(lengths), width, lm.embed_dim, generator=g) * 100
    if pad is not None:
        embeds.fill_(pad)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, p in enumerate(prompts):
        sl = slice(0, len(p)) if side == "right" else slice(width - len(p), width)
        embeds[b, sl] = p
        mask[b, sl] = 1
    return embeds, mask, prompts


def _one_at_a_time(lm: LanguageModel, prompts: list[torch.Tensor], **kw) -> list[list[int]]:
    return [
        generate(lm, p[None], torch.ones(1, len(p), dtype=torch.long), **kw).token_ids[0]
        for p in prompts
    ]


@torch.no_grad()
def _greedy_reference(lm: LanguageModel, prompt: torch.Tensor, n: int) -> list[int]:
    """The plainest greedy decoding of one unpadded prompt: no cache, no mask, argmax."""
    seq, ids = prompt[None], []  # (1, T, d)
    for _ in range(n):
        token = int(lm.model(inputs_embeds=seq).logits[0, -1].argmax())
        ids.append(token)
        seq = torch.cat([seq, lm.embed(torch.tensor([[token]]))], 1)
    return ids


class _Script:
    """Forces the LM's next tokens: a forward hook on the LM head adds a large logit to
    ``script[row][step]``, so stops happen at known steps while the real model, masks and
    cache still run."""

    def __init__(self, lm: LanguageModel, script: list[list[int]]) -> None:
        self.script = torch.tensor(script)  # (B, steps)
        self.step = 0
        self.handle = lm.head.register_forward_hook(self._hook)

    def _hook(self, module, args, logits: torch.Tensor) -> torch.Tensor:
        boost = torch.zeros_like(logits[:, -1])
        boost.scatter_(1, self.script[:, self.step, None], 1e4)
        self.step += 1
        return logits + boost[:, None]

    def close(self) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_one_at_a_time(lm: LanguageModel, side: str) -> None:
    embeds, mask, prompts = _batch(lm, [7, 2, 5, 1, 7], side=side)
    out = generate(lm, embeds, mask, max_new_tokens=8, stop_ids=NEVER_STOP)
    assert out.token_ids == _one_at_a_time(lm, prompts, max_new_tokens=8, stop_ids=NEVER_STOP)
    assert all(len(ids) == 8 for ids in out.token_ids)
    # guard against a degenerate model that would make the comparison vacuous
    assert len({t for ids in out.token_ids for t in ids}) > 8


def test_batched_with_stops_equals_one_at_a_time(lm: LanguageModel) -> None:
    embeds, mask, prompts = _batch(lm, [6, 3, 4, 1], side="right", seed=1)
    free = generate(lm, embeds, mask, max_new_tokens=8, stop_ids=NEVER_STOP).token_ids
    # stop on tokens the rows really produce, so that rows end at different steps
    stops = frozenset({free[0][5], free[1][1], free[2][3]})
    out = generate(lm, embeds, mask, max_new_tokens=8, stop_ids=stops)
    assert out.token_ids == _one_at_a_time(lm, prompts, max_new_tokens=8, stop_ids=stops)
    for ids, full in zip(out.token_ids, free, strict=True):
        cut = next((i for i, t in enumerate(full) if t in stops), len(full))
        assert ids == full[:cut]  # a row's tokens do not depend on when the others stop
    assert len({len(ids) for ids in out.token_ids}) > 1


@pytest.mark.parametrize("pad", [0.0, float("nan"), float("inf")])
def test_padding_side_and_content_do_not_matter(lm: LanguageModel, pad: float) -> None:
    kw = dict(max_new_tokens=6, stop_ids=NEVER_STOP)
    right = generate(lm, *_batch(lm, [4, 9, 2], side="right", seed=2)[:2], **kw)
    left = generate(lm, *_batch(lm, [4, 9, 2], side="left", seed=2, pad=pad)[:2], **kw)
    assert right.token_ids == left.token_ids


# --------------------------------------------------------------------------- reference


@pytest.mark.parametrize("side", ["right", "left"])
def test_equals_plain_greedy_loop(lm: LanguageModel, side: str) -> None:
    embeds, mask, prompts = _batch(lm, [5, 1, 8, 3], side=side, seed=3)
    out = generate(lm, embeds, mask, max_new_tokens=8, stop_ids=NEVER_STOP)
    assert out.token_ids == [_greedy_reference(lm, p, 8) for p in prompts]


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_new_tokens(lm: LanguageModel, n: int) -> None:
    embeds, mask, prompts = _batch(lm, [4, 2, 6], side="right", seed=10)
    out = generate(lm, embeds, mask, max_new_tokens=n, stop_ids=NEVER_STOP)
    assert out.token_ids == [_greedy_reference(lm, p, n) for p in prompts]
    assert len(out.texts) == 3
    with pytest.raises(ValueError, match=">= 0"):
        generate(lm, embeds, mask, max_new_tokens=-1)


# --------------------------------------------------------------------------- stopping


def test_rows_stop_at_eos_newline_and_period(lm: LanguageModel) -> None:
    tok = lm.tokenize
    period, newline, eos = tok(".")[0], tok("\n")[0], lm.eos_token_id
    dax, a_blicket, junk = tok(" dax"), tok(" a blicket"), tok(" bag")[0]
    n = 6
    script = [
        dax + [period] + [junk] * (n - len(dax) - 1),
        a_blicket + [newline] + [junk] * (n - len(a_blicket) - 1),
        [eos] + [junk] * (n - 1),
        [junk] * n,  # never stops: runs to max_new_tokens
    ]
    embeds, mask, _ = _batch(lm, [3, 5, 2, 4], side="right", seed=5)
    hook = _Script(lm, script)
    try:
        out = generate(lm, embeds, mask, max_new_tokens=n)
    finally:
        hook.close()
    assert out.token_ids == [dax, a_blicket, [], [junk] * n]
    assert out.texts == ["dax", "a blicket", "", lm.decode([junk] * n).strip()]


def test_generation_ends_when_all_rows_are_done(lm: LanguageModel) -> None:
    period = lm.tokenize(".")[0]
    embeds, mask, _ = _batch(lm, [3, 4], side="left", seed=6)
    hook = _Script(lm, [[period] * 10, [period] * 10])
    try:
        out = generate(lm, embeds, mask, max_new_tokens=10)
        steps = hook.step
    finally:
        hook.close()
    assert out.token_ids == [[], []]
    assert steps == 1  # one forward pass: no decoding past the point where all rows stopped


def test_stop_token_ids() -> None:
    lm = build_language_model("tiny-lm", arch="gpt2")
    stops = stop_token_ids(lm.tokenizer, lm.eos_token_id)
    assert lm.eos_token_id in stops
    assert lm.tokenize(".")[0] in stops and lm.tokenize("\n")[0] in stops
    assert lm.tokenize(" dax")[0] not in stops
    for i in stops - {lm.eos_token_id}:
        text = lm.tokenizer.decode([i])
        assert "." in text or "\n" in text
    assert stop_token_ids(lm.tokenizer, lm.eos_token_id) is stops  # cached per tokenizer


def test_cut_answer() -> None:
    assert cut_answer(" a dax.\nThis is") == "a dax"
    assert cut_answer(" blicket\n. x") == "blicket"
    assert cut_answer("perpo") == "perpo"
    assert cut_answer(".") == ""


# --------------------------------------------------------------------------- padding safety


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_heavy_padding_gives_finite_logits(impl: str, side: str) -> None:
    lm = _sharp_tiny_lm("llama")
    lm.model.set_attn_implementation(impl)
    embeds, mask, prompts = _batch(lm, [1, 40, 2, 1], side=side, seed=9)
    finite: list[bool] = []
    hook = lm.head.register_forward_hook(
        lambda module, args, logits: finite.append(bool(logits.isfinite().all()))
    )
    try:
        out = generate(lm, embeds, mask, max_new_tokens=6, stop_ids=NEVER_STOP)
    finally:
        hook.remove()
    assert finite and all(finite)
    assert out.token_ids == _one_at_a_time(lm, prompts, max_new_tokens=6, stop_ids=NEVER_STOP)


def test_invalid_masks_are_rejected() -> None:
    lm = build_language_model("tiny-lm", arch="llama")
    embeds = torch.zeros(2, 4, lm.embed_dim)
    with pytest.raises(ValueError, match="contiguous"):
        generate(lm, embeds, torch.tensor([[1, 0, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="at least one"):
        generate(lm, embeds, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="does not match"):
        generate(lm, embeds, torch.ones(2, 3))


# --------------------------------------------------------------------------- shared context


def _shared_batch(lm: LanguageModel, side: str) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor],
                                                            SharedContext]:
    """Three groups: rows 0-2 open with the same 6 positions (ends of 3, 1 and 4), row 3 alone,
    rows 4-5 open with the same 2 positions (ends of 5 and 2)."""
    g = torch.Generator().manual_seed(5)
    scale = lm.model.get_input_embeddings().weight.std()
    ctx = {0: torch.randn(6, lm.embed_dim, generator=g) * scale,
           4: torch.randn(2, lm.embed_dim, generator=g) * scale}
    leader, ends = [0, 0, 0, 3, 4, 4], [3, 1, 4, 7, 5, 2]
    prompts = [torch.cat([ctx.get(lead, torch.empty(0, lm.embed_dim)),
                          torch.randn(n, lm.embed_dim, generator=g) * scale])
               for lead, n in zip(leader, ends, strict=True)]
    embeds, mask, _ = _batch(lm, [len(p) for p in prompts], side=side, seed=6)
    for b, p in enumerate(prompts):
        embeds[b, mask[b].bool()] = p
    length = [6, 6, 6, 1, 2, 2]
    return embeds, mask, prompts, SharedContext(leader=leader, length=length)


@pytest.mark.parametrize("side", ["right", "left"])
def test_shared_context_equals_unshared(lm: LanguageModel, side: str) -> None:
    embeds, mask, prompts, shared = _shared_batch(lm, side)
    assert shared.useful()
    kw = dict(max_new_tokens=6, stop_ids=NEVER_STOP)
    out = generate(lm, embeds, mask, shared=shared, **kw)
    assert out.token_ids == generate(lm, embeds, mask, **kw).token_ids
    assert out.token_ids == [_greedy_reference(lm, p, 6) for p in prompts]
    # the rows of a group do not all continue alike (the comparison is not vacuous)
    assert len({tuple(ids) for ids in out.token_ids[:3]}) > 1


def test_shared_context_is_computed_once_per_group(lm: LanguageModel) -> None:
    embeds, mask, _, shared = _shared_batch(lm, "right")
    seen: list[tuple[int, int]] = []
    hook = lm.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        generate(lm, embeds, mask, shared=shared, max_new_tokens=1, stop_ids=NEVER_STOP)
    finally:
        hook.remove()
    # the three contexts (widest 6), then the six rows' ends only (widest 6: row 3's 7 less its
    # first position, its context)
    assert seen[:2] == [(3, 6), (6, 6)]


def test_a_shared_context_must_leave_each_row_a_position() -> None:
    lm = build_language_model("tiny-lm", arch="llama")
    embeds, mask = torch.zeros(2, 4, lm.embed_dim), torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="at least one position of its own"):
        generate(lm, embeds, mask, shared=SharedContext(leader=[0, 0], length=[4, 4]))
    with pytest.raises(ValueError, match="for 3 rows, the batch has 2"):
        generate(lm, embeds, mask, shared=SharedContext(leader=[0, 0, 0], length=[2, 2, 2]))
