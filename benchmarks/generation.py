"""Benchmark: the library's batched greedy decoding (``models.generation.generate``, i.e.
``transformers``' ``model.generate(inputs_embeds=...)`` behind our padding and stopping rules)
against the reference implementation's decoding loop, tokens checked.

Random-weight GPT-2 124M (the paper's LM compute, real GPT-2 vocabulary; ``--lm smollm2-135m``:
the offline default LM), 10 prompts of 20-40 embedding positions (varied lengths, right-padded as
the model builds batches), exactly 10 new tokens each (no stop token), greedy. The reference
pattern decodes one query at a time, recomputes the whole sequence at every step (no KV cache,
no mask, no padding), and sorts the full vocabulary for a nucleus filter whose result it then
ignores (argmax): its tokens are the plain greedy ones. Also checks that with our stopping rule
(EOS, or any token holding a newline or a period) each row is the reference's tokens up to its
first stop token. Prints one JSON line.

Run::

    python benchmarks/generation.py [--lm smollm2-135m] [--device cuda] [--precision float32] [--compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from _hardware import add_device_args, hardware, reset_peak_memory, setup
from torch.utils.flop_counter import FlopCounterMode

from metamapper.device import lm_dtype, synchronize
from metamapper.models.backbones import LanguageModel, build_language_model
from metamapper.models.generation import generate, stop_token_ids

BATCH = 10
NEW_TOKENS = 10
MIN_LEN, MAX_LEN = 20, 40


@torch.no_grad()
def reference_decode(
    lm: LanguageModel, prompt: torch.Tensor, n: int, top_p: float = 0.9
) -> list[int]:
    """One query, the authors' way: full recompute per step, a wasted nucleus sort, argmax."""
    seq = prompt[None]  # (1, T, d)
    out: list[int] = []
    for _ in range(n):
        logits = lm.model(inputs_embeds=seq).logits[:, -1]  # all positions' logits computed
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(sorted_logits.softmax(-1), -1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        filtered = logits.clone()
        filtered[:, sorted_idx[remove]] = float("-inf")  # computed, then ignored below
        token = int(logits.argmax(-1))
        out.append(token)
        seq = torch.cat([seq, lm.embed(torch.tensor([[token]], device=seq.device))], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser, repeats=1)
    parser.add_argument("--lm", default="gpt2-random", choices=["gpt2-random", "smollm2-135m"],
                        help="the language model (default: random-weight GPT-2 124M)")
    args = parser.parse_args()
    device = setup(args)
    dtype = getattr(torch, lm_dtype(args.precision, device))  # runtime.precision's LM dtype
    lm = build_language_model(args.lm, **({"seed": 0} if args.lm == "gpt2-random" else {}))
    scale = float(lm.model.get_input_embeddings().weight.std())  # before any cast
    lm.to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (BATCH,), generator=g).tolist()
    prompts = [torch.randn(n, lm.embed_dim, generator=g) * scale for n in lengths]
    embeds = torch.zeros(BATCH, max(lengths), lm.embed_dim)
    mask = torch.zeros(BATCH, max(lengths), dtype=torch.long)
    for b, p in enumerate(prompts):  # right padding
        embeds[b, : len(p)] = p
        mask[b, : len(p)] = 1
    embeds, mask = embeds.to(device=device, dtype=dtype), mask.to(device)
    prompts = [p.to(device=device, dtype=dtype) for p in prompts]
    never_stop: frozenset[int] = frozenset()

    # warm-up: one full run of each (allocator, oneDNN kernels for these shapes); the reference
    # sees every length from min(lengths) to max(lengths) + 9 over two queries
    generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
    for p in (min(prompts, key=len), max(prompts, key=len)):
        reference_decode(lm, p, NEW_TOKENS)

    with FlopCounterMode(display=False) as fc:  # counted eagerly: compiling changes no FLOP
        generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
    if args.compile:
        lm.backbone.compile()
        generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)  # compiles
    reset_peak_memory(device)
    t_batched = float("inf")
    for _ in range(max(1, args.repeats)):
        synchronize(device)
        t0 = time.perf_counter()
        batched = generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS, stop_ids=never_stop)
        synchronize(device)
        t_batched = min(t_batched, time.perf_counter() - t0)
    stops = stop_token_ids(lm.tokenizer, lm.eos_token_id)  # the rule answers are generated with
    stopped = generate(lm, embeds, mask, max_new_tokens=NEW_TOKENS).token_ids

    t0 = time.perf_counter()
    reference = [reference_decode(lm, p, NEW_TOKENS) for p in prompts]
    synchronize(device)
    t_reference = time.perf_counter() - t0
    reference_stopped = [ids[: next((i for i, t in enumerate(ids) if t in stops), len(ids))]
                         for ids in reference]

    n_tokens = sum(len(ids) for ids in batched.token_ids)
    assert n_tokens == BATCH * NEW_TOKENS
    print(json.dumps({
        "benchmark": "generation",
        "lm": {"gpt2-random": "gpt2-random (124M)", "smollm2-135m": "smollm2-135m"}[args.lm],
        "batch": BATCH,
        "new_tokens_per_row": NEW_TOKENS,
        "prompt_lengths": lengths,
        "batched_kv_tok_s": round(n_tokens / t_batched, 1),
        "reference_tok_s": round(n_tokens / t_reference, 1),
        "speedup": round(t_reference / t_batched, 1),
        "same_tokens": batched.token_ids == reference,
        "same_tokens_with_stop_rule": stopped == reference_stopped,
        "rows_stopped_by_rule": sum(len(ids) < NEW_TOKENS for ids in stopped),  # 0: check vacuous
        "s_per_batch": round(t_batched, 4),
        **hardware(device, flops=fc.get_total_flops(), seconds=t_batched, precision=args.precision,
                   compiled=args.compile),
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
