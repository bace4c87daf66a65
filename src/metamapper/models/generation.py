"""Batched text generation from ``inputs_embeds`` (visual prefix + text) with a KV cache.

The frozen LM receives ``[prefix vectors; token embeddings]`` as embeddings, so Hugging Face's
token-id based conveniences do not apply directly. ``generate`` takes a padded batch of prompt
embeddings and decodes all rows together:

- rows may be right-padded (how the model builds batches) or left-padded; they are re-aligned to
  left padding and get explicit ``position_ids`` (``cumsum(mask) - 1``), so every row gives the
  same tokens as it would alone;
- the prompt is run once, then each step feeds only the new token's embedding against the KV
  cache (``use_cache=False`` recomputes the whole sequence: the reference for tests);
- each row stops at its first stop token (EOS, or any token whose text holds a newline or a
  period: the answer ends there when scored) or after ``max_new_tokens``; decoding ends as soon
  as every row is done;
- greedy by default; top-k / top-p sampling with temperature, reproducible with ``seed``.

This replaces the reference implementation's unbatched loop that recomputed the whole sequence
per token and sorted the full vocabulary for a nucleus filter it then ignored.

Example::

    lm = build_language_model("smollm2-135m")
    ids = torch.tensor([lm.tokenize("This is a")])
    out = generate(lm, lm.embed(ids), torch.ones_like(ids), max_new_tokens=5)
    out.texts  # ["..."], cut before the first newline or period
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metamapper.models.backbones import LanguageModel

__all__ = ["GenerationOutput", "generate", "stop_token_ids", "cut_answer"]

# tokenizer -> {eos id -> stop ids}; weak so that a dropped tokenizer frees its entry
_STOP_CACHE: weakref.WeakKeyDictionary[Any, dict[int, frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class GenerationOutput:
    """What ``generate`` returns.

    Attributes:
        token_ids: the new tokens of each row, up to but excluding its stop token.
        texts: each row's decoded answer, cut before the first newline or period, stripped.
    """

    token_ids: list[list[int]]
    texts: list[str]


def cut_answer(text: str) -> str:
    """Cut ``text`` before its first newline or period and strip surrounding whitespace.

    Example::

        cut_answer(" a dax.\\nThis")  # "a dax"
    """
    for sep in ("\n", "."):
        text = text.split(sep, 1)[0]
    return text.strip()


def stop_token_ids(tokenizer: Any, eos_token_id: int) -> frozenset[int]:
    """EOS plus every vocabulary id whose decoded text contains a newline or a period.

    The answer is scored up to the first EOS, newline or period, so generating past any such
    token is wasted work. The set is computed once per tokenizer (one batched decode of the
    whole vocabulary) and cached.

    Args:
        tokenizer: a Hugging Face tokenizer (``len(tokenizer)`` ids, ``batch_decode``).
        eos_token_id: the end-of-sequence id, always included.

    Returns:
        A frozenset of token ids.

    Example::

        stops = stop_token_ids(lm.tokenizer, lm.eos_token_id)
        lm.tokenize(".")[0] in stops  # True
    """
    try:
        per_eos = _STOP_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable or unhashable: compute without caching
        per_eos = {}
    if eos_token_id not in per_eos:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        ids = {i for i, t in enumerate(texts) if "\n" in t or "." in t}
        per_eos[eos_token_id] = frozenset(ids | {int(eos_token_id)})
    return per_eos[eos_token_id]


def _left_align(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's real positions to the right end; drop columns that are padding in all rows.

    Args:
        embeds: ``(B, T, d)`` prompt embeddings.
        mask: ``(B, T)`` bool, True on real positions (contiguous in each row).

    Returns:
        ``(embeds, mask)`` of width ``max(lengths)``, left-padded; padded embeddings are zeros,
        whatever the caller left there, so no NaN can come from them.
    """
    lengths = mask.sum(1)  # (B,)
    width = int(lengths.max())
    start = mask.float().argmax(1)  # first real position per row
    col = torch.arange(width, device=mask.device)
    n_pad = width - lengths  # (B,)
    real = col[None] >= n_pad[:, None]  # (B, width)
    src = (start[:, None] + col[None] - n_pad[:, None]).clamp(0, embeds.shape[1] - 1)
    out = embeds.gather(1, src[..., None].expand(-1, -1, embeds.shape[-1]))  # (B, width, d)
    # where, not multiply: padding may hold NaN or inf (0 * NaN = NaN)
    return torch.where(real[..., None], out, out.new_zeros(())), real


def _full_mask(model: torch.nn.Module, real: Tensor, dtype: torch.dtype) -> Tensor:
    """The attention mask for a forward pass over a whole left-padded sequence.

    A padded query is causally before every real key, so with a plain 2D mask its attention
    row is fully masked: softmax over nothing is NaN in older torch SDPA, and a NaN in a padded
    hidden state reaches real rows through the values (0 * NaN = NaN). Here every query may
    also attend to itself, so no row is empty, while real queries still never see padding.
    The 4D mask is built in the format of the model's attention implementation (bool for
    SDPA, additive float for eager); other implementations (flash) unpad by themselves and
    get the 2D mask.

    Args:
        model: the HF causal LM (its ``config._attn_implementation`` picks the format).
        real: ``(B, T)`` bool, True on real positions.
        dtype: the dtype of the embeddings (for the additive mask).

    Returns:
        ``(B, 1, T, T)`` 4D mask, or the ``(B, T)`` 2D mask when no custom mask is needed.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if bool(real.all()) or impl not in ("sdpa", "eager"):
        return real.long()  # no padding: the model may take its is_causal fast path
    t = real.shape[1]
    idx = torch.arange(t, device=real.device)
    causal = idx[None, :] <= idx[:, None]  # (T_q, T_kv)
    allowed = causal[None] & (real[:, None, :] | torch.eye(t, dtype=torch.bool,
                                                           device=real.device)[None])
    allowed = allowed[:, None]  # (B, 1, T_q, T_kv)
    if impl == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=real.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def _positions(real: Tensor) -> Tensor:
    """Position ids ``cumsum(mask) - 1``: each row counts from 0 at its first real position."""
    return (real.long().cumsum(1) - 1).clamp(min=0)


def _pick(
    logits: Tensor, *, do_sample: bool, top_k: int, top_p: float, temperature: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Next token per row from last-position logits ``(B, V)`` -> ``(B,)``."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # the sort is only paid for when nucleus filtering is actually used
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (keeps >= 1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_inputs(inputs_embeds: Tensor, attention_mask: Tensor) -> Tensor:
    if inputs_embeds.ndim != 3:
        raise ValueError(
            f"inputs_embeds must be (batch, length, dim), got {tuple(inputs_embeds.shape)}"
        )
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match inputs_embeds "
            f"{tuple(inputs_embeds.shape[:2])}"
        )
    mask = attention_mask.to(inputs_embeds.device) != 0
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        raise ValueError("every row needs at least one real position (attention_mask all zero)")
    # contiguous real positions: exactly one run of ones, so at most one 0->1 step
    starts = (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()
    if bool((starts != 1).any()):
        raise ValueError("the real positions of each row (attention_mask == 1) must be contiguous")
    return mask


@torch.no_grad()
def generate(
    lm: LanguageModel,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int = 10,
    stop_ids: frozenset[int] | None = None,
    do_sample: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    seed: int | None = None,
    use_cache: bool = True,
) -> GenerationOutput:
    """Decode a batch of prompts given as embeddings, greedily or by sampling.

    Args:
        lm: the frozen language model.
        inputs_embeds: ``(B, T, embed_dim)`` prompt embeddings, e.g. ``[visual prefix; text]``.
        attention_mask: ``(B, T)``, 1 on real positions, which must be contiguous in each row
            (right or left padding, or none).
        max_new_tokens: the most tokens generated per row.
        stop_ids: a row stops at the first of these tokens (not included in the output).
            Default ``stop_token_ids(lm.tokenizer, lm.eos_token_id)``; ``frozenset()`` never
            stops early.
        do_sample: sample instead of taking the argmax.
        top_k: with sampling, keep only the ``top_k`` most likely tokens (0: all).
        top_p: with sampling, keep the smallest set of tokens whose probability reaches
            ``top_p`` (1.0: all).
        temperature: with sampling, divide the logits by this.
        seed: with sampling, seeds a private ``torch.Generator`` (reproducible draws, global
            RNG untouched); None uses the global RNG.
        use_cache: reuse keys/values between steps; False recomputes the whole sequence each
            step (slow, the reference in tests).

    Returns:
        A ``GenerationOutput`` with the new token ids and the cut answer text of each row.

    Example::

        ids = torch.tensor([lm.tokenize("This is a")])
        out = generate(lm, lm.embed(ids), torch.ones_like(ids), max_new_tokens=5)
        print(out.texts[0])
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if do_sample and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    model = lm.model
    weight = model.get_input_embeddings().weight
    inputs_embeds = inputs_embeds.to(device=weight.device, dtype=weight.dtype)
    mask = _check_inputs(inputs_embeds, attention_mask)
    if stop_ids is None:
        stop_ids = stop_token_ids(lm.tokenizer, lm.eos_token_id)
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    pick: dict[str, Any] = dict(do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
                generator=generator)

    embeds, real = _left_align(inputs_embeds, mask)  # (B, L, d), (B, L)
    positions = _positions(real)  # (B, L)
    new_tokens = torch.empty(batch, 0, dtype=torch.long, device=device)  # (B, steps)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    n_new = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    stop_token = torch.full((batch,), -1, dtype=torch.long, device=device)

    cache = None
    cache_kw = _cache_kwarg(model)
    for step in range(max_new_tokens):
        if step == 0 or not use_cache:
            # the whole (prompt + generated) sequence; only the last position's logits are needed
            out = model(inputs_embeds=embeds, attention_mask=_full_mask(model, real, embeds.dtype),
                        position_ids=positions, use_cache=use_cache, logits_to_keep=1)
        else:
            # one new real token per row: its query always sees itself, so the 2D mask is safe
            out = model(inputs_embeds=embeds, attention_mask=real.long(),
                        position_ids=positions[:, -1:], use_cache=True, logits_to_keep=1,
                        **{cache_kw: cache})
        cache = _output_cache(out) if use_cache else None
        token = _pick(out.logits[:, -1], **pick)  # (B,)
        is_stop = torch.isin(token, stops) & ~done
        n_new = torch.where(is_stop, step, n_new)
        stop_token = torch.where(is_stop, token, stop_token)
        done |= is_stop
        new_tokens = torch.cat([new_tokens, token[:, None]], 1)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        # finished rows keep decoding in the batch (cheaper than reshaping the cache); their
        # tokens after the stop are ignored. With the cache only the new embedding is fed.
        new_embed = lm.embed(token)[:, None].to(embeds.dtype)  # (B, 1, d)
        embeds = new_embed if use_cache else torch.cat([embeds, new_embed], 1)
        real = torch.cat([real, real.new_ones(batch, 1)], 1)
        positions = torch.cat([positions, positions[:, -1:] + 1], 1)

    token_ids = [new_tokens[b, : int(n_new[b])].tolist() for b in range(batch)]
    stops_hit = stop_token.tolist()  # -1: no stop token (ran to max_new_tokens)
    texts = [_answer_text(lm, ids, s) for ids, s in zip(token_ids, stops_hit, strict=True)]
    return GenerationOutput(token_ids=token_ids, texts=texts)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older 5.x, deprecated since)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _answer_text(lm: LanguageModel, ids: list[int], stop: int) -> str:
    """Decode a row's answer; a stop token like ``"x."`` keeps its text before the cut."""
    if stop >= 0:
        stop_text = lm.decode([stop])
        if "\n" in stop_text or "." in stop_text:
            # decode together: byte-level tokens may only form characters jointly
            return cut_answer(lm.decode([*ids, stop]))
    return cut_answer(lm.decode(ids))
