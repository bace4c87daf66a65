"""Batched greedy text generation from ``inputs_embeds`` (visual prefix + text).

The frozen LM receives ``[prefix vectors; token embeddings]`` as embeddings. ``generate`` takes a
padded batch of prompt embeddings and decodes all rows together with ``transformers``' own
``model.generate(inputs_embeds=..., attention_mask=...)`` (KV cache, position ids from the
mask, one forward pass per step). Around it:

- rows may be right-padded (how the model builds batches) or left-padded; they are re-aligned to
  left padding, which ``transformers``' decoder-only generation needs, with zeros in the padding
  (so NaN or inf left there by a caller cannot leak into real rows);
- each row stops at its first stop token (EOS, or any token whose text holds a newline or a
  period: the answer ends there when scored), handed to ``transformers`` as ``eos_token_id``, or
  after ``max_new_tokens``; decoding ends as soon as every row is done;
- greedy only (no caller samples);
- rows that open with the same positions (``SharedContext``: in-context evaluation repeats a task's
  whole support set before each of its queries) can share that context: it goes through the LM
  once per group, and its KV cache is copied to the group's rows, which then only prefill their
  own ends. The answers are those of the unshared computation (up to float rounding).

Until issue #22 this module held its own KV-cached loop; ``benchmarks/generation.py`` found it no
faster than ``transformers``' ``generate`` on the same prompts, with the same tokens
(``docs/PERFORMANCE.md``), so the loop was dropped.

Example::

    lm = build_language_model("smollm2-135m")
    ids = torch.tensor([lm.tokenize("This is a")])
    out = generate(lm, lm.embed(ids), torch.ones_like(ids), max_new_tokens=5)
    out.texts  # ["..."], cut before the first newline or period
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metamapper.models.backbones import LanguageModel

__all__ = ["GenerationOutput", "SharedContext", "generate", "stop_token_ids", "cut_answer"]

# tokenizer -> {eos id -> stop ids}; weak so that a dropped tokenizer frees its entry
_STOP_CACHE: weakref.WeakKeyDictionary[Any, dict[int, frozenset[int]]] = (
    weakref.WeakKeyDictionary()
)

# Plain greedy decoding whatever the checkpoint's ``generation_config`` says: ``transformers``
# fills every option left unset from it, and these would change the tokens.
_GREEDY: dict[str, Any] = dict(do_sample=False, num_beams=1, repetition_penalty=1.0,
                               no_repeat_ngram_size=0, min_new_tokens=0)


@dataclass
class GenerationOutput:
    """What ``generate`` returns.

    Attributes:
        token_ids: the new tokens of each row, up to but excluding its stop token.
        texts: each row's decoded answer, cut before the first newline or period, stripped.
    """

    token_ids: list[list[int]]
    texts: list[str]


@dataclass(frozen=True)
class SharedContext:
    """Rows of a batch that open with the same positions.

    Row ``r``'s first ``length[r]`` real positions equal those of row ``leader[r]`` (the first row
    of its group; ``leader[leader[r]] == leader[r]``, and a group's rows have one length), and
    every row has at least one position after them. ``length[r] >= 1``: a row that shares nothing
    is its own leader with its first position (BOS) as its context.
    """

    leader: Sequence[int]
    length: Sequence[int]

    def useful(self) -> bool:
        """Whether any context longer than one position serves several rows."""
        return any(n > 1 and lead != r for r, (lead, n) in enumerate(zip(self.leader, self.length, strict=True)))


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
    shared: SharedContext | None = None,
) -> GenerationOutput:
    """Decode a batch of prompts given as embeddings, greedily.

    Args:
        lm: the frozen language model.
        inputs_embeds: ``(B, T, embed_dim)`` prompt embeddings, e.g. ``[visual prefix; text]``.
        attention_mask: ``(B, T)``, 1 on real positions, which must be contiguous in each row
            (right or left padding, or none).
        max_new_tokens: the most tokens generated per row.
        stop_ids: a row stops at the first of these tokens (not included in the output).
            Default ``stop_token_ids(lm.tokenizer, lm.eos_token_id)``; ``frozenset()`` never
            stops early.
        shared: rows that open with the same context (see ``SharedContext``), computed once.

    Returns:
        A ``GenerationOutput`` with the new token ids and the cut answer text of each row.

    Example::

        ids = torch.tensor([lm.tokenize("This is a")])
        out = generate(lm, lm.embed(ids), torch.ones_like(ids), max_new_tokens=5)
        print(out.texts[0])
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    model = lm.model
    weight = model.get_input_embeddings().weight
    inputs_embeds = inputs_embeds.to(device=weight.device, dtype=weight.dtype)
    mask = _check_inputs(inputs_embeds, attention_mask)
    if stop_ids is None:
        stop_ids = stop_token_ids(lm.tokenizer, lm.eos_token_id)
    batch = inputs_embeds.shape[0]
    if max_new_tokens == 0:
        return GenerationOutput(token_ids=[[] for _ in range(batch)], texts=[""] * batch)

    cache: dict[str, Any] = {}
    if shared is not None and shared.useful():
        embeds, real, cache = _prefill_shared(lm, inputs_embeds, mask, shared)
    else:
        embeds, real = _left_align(inputs_embeds, mask)  # (B, L, d), (B, L)
    # with only inputs_embeds, transformers returns the new tokens alone: (B, steps); a finished
    # row is filled with pad_token_id after its stop token (any id: it is cut below)
    new_tokens = model.generate(
        inputs_embeds=embeds, attention_mask=real.long(), max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stop_ids), pad_token_id=int(lm.eos_token_id), **cache, **_GREEDY,
    )
    token_ids, stops_hit = [], []
    for row in new_tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        token_ids.append(row[:cut])
        stops_hit.append(row[cut] if cut < len(row) else -1)  # -1: ran to max_new_tokens
    texts = [_answer_text(lm, ids, s) for ids, s in zip(token_ids, stops_hit, strict=True)]
    return GenerationOutput(token_ids=token_ids, texts=texts)


def _prefill_shared(lm: LanguageModel, embeds: Tensor, mask: Tensor,
                    shared: SharedContext) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Run each group's context through the LM once; return every row's ``[context; end]`` as
    generation's input (zeros where the cache holds the context), its mask, and the cache (as
    ``generate``'s keyword argument), copied to every row of each group.

    Contexts are left-padded to one width, the rows' ends after them likewise, so a row's mask may
    have a gap between the two; positions follow the mask (its cumulative sum), as in
    ``transformers``' generation, so they are those of the unshared row.
    """
    n_rows = embeds.shape[0]
    if len(shared.leader) != n_rows or len(shared.length) != n_rows:
        raise ValueError(f"shared context given for {len(shared.leader)} rows, the batch has {n_rows}")
    leaders = sorted(set(shared.leader))
    index = {lead: i for i, lead in enumerate(leaders)}
    group = torch.tensor([index[lead] for lead in shared.leader], device=embeds.device)
    length = torch.tensor(list(shared.length), device=embeds.device)
    lengths = mask.sum(1)
    if bool((length < 1).any()) or bool((length >= lengths).any()):
        raise ValueError("a shared context must leave every row at least one position of its own")
    col = torch.arange(embeds.shape[1], device=embeds.device)[None]
    start = mask.float().argmax(1)[:, None]  # first real position per row (any padding side)
    in_context = (col >= start) & (col < start + length[:, None])  # (B, T)
    ctx, ctx_real = _left_align(embeds[leaders], in_context[leaders])  # (groups, width, d)
    width = ctx.shape[1]
    backbone = lm.backbone
    out = backbone(inputs_embeds=ctx, attention_mask=ctx_real.long(),
                   position_ids=(ctx_real.long().cumsum(1) - 1).clamp(min=0), use_cache=True)
    name = _cache_keyword(backbone)
    cache = getattr(out, name)
    cache.batch_select_indices(group)  # each group's context, once per row of the group
    end, end_real = _left_align(embeds, mask & ~in_context)
    full = torch.cat([end.new_zeros(n_rows, width, end.shape[-1]), end], 1)
    return full, torch.cat([ctx_real[group], end_real], 1), {name: cache}


def _cache_keyword(module: torch.nn.Module) -> str:
    """The name under which this ``transformers`` version passes and returns a KV cache
    (``past_key_values``, ``cache`` since 5.x)."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _answer_text(lm: LanguageModel, ids: list[int], stop: int) -> str:
    """Decode a row's answer; a stop token like ``"x."`` keeps its text before the cut."""
    if stop >= 0:
        stop_text = lm.decode([stop])
        if "\n" in stop_text or "." in stop_text:
            # decode together: byte-level tokens may only form characters jointly
            return cut_answer(lm.decode([*ids, stop]))
    return cut_answer(lm.decode(ids))
