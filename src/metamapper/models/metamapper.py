"""The whole model: frozen image encoder -> meta-mapper -> frozen language model.

The LM input is a sequence of *items*: an ``int`` is an image (an index into the batch's visual
features, replaced by its ``l`` prefix vectors) and a ``Text`` is text (its token embeddings).
One row can hold a single image and its caption (``[p(x); caption]``, the paper's input) or an
interleaved sequence for in-context use (``[p(x_1); text_1; ...; p(x_q); question]``).
The loss is next-token cross-entropy on target text only; EOS is appended to every target so the
model learns to stop. Rows are right-padded and padding is tracked by the attention mask only.

Example::

    model = MetaMapper(vision=vision, lm=lm, mapper=mapper)
    rows = [[0, Text(" This is a"), Text(" dax.", target=True)]]
    batch = model.pack(rows)
    loss = model.loss(features, batch)             # features: (n_images, n_tokens, dim)
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metamapper.models.backbones import LanguageModel, VisionEncoder
from metamapper.models.generation import SharedContext, generate
from metamapper.models.mapper import Mapper

IGNORE = -100


@dataclass(frozen=True)
class Text:
    """A piece of text in an LM input row; ``target=True`` puts it (and an EOS) in the loss."""

    text: str
    target: bool = False


Item = int | Text


@dataclass
class PackedBatch:
    """Right-padded rows ready for the LM.

    Attributes:
        input_ids: ``(B, T)`` token ids; 0 at prefix and padding positions (overwritten/masked).
        attention_mask: ``(B, T)`` 1 at real positions (tokens and prefix vectors), 0 at padding.
        labels: ``(B, T)`` the token at each target position, ``-100`` elsewhere.
        prefix_rows, prefix_cols: ``(S * l,)`` where the ``l`` prefix vectors of each image slot go.
        image_index: ``(S,)`` for each image slot (in row order), its row in the features tensor.
        target_rows, target_cols: ``(n_targets,)`` the positions whose next token is a target, in
            row-major order (the hidden states that go through the LM head).
        target_ids: ``(n_targets,)`` the target token at each of those positions plus one.
        target_counts: ``(B,)`` targets per row.
        slot_rows: the row of each image slot, on the host (grouping slots without a device sync).

    All tensors are on the device the batch was packed for (the model's): indices computed on
    the host once, so the hot path never synchronises to turn a boolean mask into indices.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prefix_rows: torch.Tensor
    prefix_cols: torch.Tensor
    image_index: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_ids: torch.Tensor
    target_counts: torch.Tensor
    slot_rows: list[int]

    @property
    def n_rows(self) -> int:
        return self.input_ids.shape[0]


class MetaMapper(nn.Module):
    """Frozen encoder + trainable mapper + frozen LM.

    Args:
        vision: the frozen image encoder (may be None when only cached features are used).
        lm: the frozen language model.
        mapper: the trainable mapper (``AttentionMapper`` or ``MLPMapper``).
        max_text_tokens: longest text piece; longer ones are truncated with a warning.
    """

    def __init__(
        self,
        *,
        vision: VisionEncoder | None,
        lm: LanguageModel,
        mapper: Mapper,
        max_text_tokens: int = 64,
    ) -> None:
        super().__init__()
        if getattr(mapper, "embed_dim", lm.embed_dim) != lm.embed_dim:
            raise ValueError(
                f"mapper output size {mapper.embed_dim} does not match the LM embedding "
                f"size {lm.embed_dim}"
            )
        if vision is not None and getattr(mapper, "visual_dim", vision.dim) != vision.dim:
            raise ValueError(
                f"mapper expects visual features of size {mapper.visual_dim}, the encoder "
                f"{vision.identity!r} gives {vision.dim}"
            )
        self.vision = vision
        self.lm = lm
        self.mapper = mapper
        self.max_text_tokens = max_text_tokens
        self.prefix_len: int = mapper.prefix_len
        self._tokenize = lru_cache(maxsize=65536)(self._tokenize_uncached)

    # ------------------------------------------------------------------ parameters

    def mapper_params(self) -> dict[str, torch.Tensor]:
        """The mapper's parameters as a dict (the starting point of functional adaptation)."""
        return dict(self.mapper.named_parameters())

    def train(self, mode: bool = True) -> MetaMapper:
        super().train(mode)
        self.lm.eval()  # frozen backbones never leave eval mode
        if self.vision is not None:
            self.vision.eval()
        return self

    # ------------------------------------------------------------------ inputs

    def _tokenize_uncached(self, text: str) -> tuple[int, ...]:
        ids = self.lm.tokenize(text)
        if len(ids) > self.max_text_tokens:
            warnings.warn(
                f"text of {len(ids)} tokens truncated to {self.max_text_tokens}: {text[:60]!r}...",
                stacklevel=3,
            )
            ids = ids[: self.max_text_tokens]
        return tuple(ids)

    def pack(self, rows: Sequence[Sequence[Item]], *, device: torch.device | None = None) -> PackedBatch:
        """Turn rows of items into one right-padded batch (a BOS token starts every row), on
        ``device`` (default: the model's)."""
        ids_rows: list[list[int]] = []
        lab_rows: list[list[int]] = []
        slots: list[tuple[int, int, int]] = []  # (row, start column, image index)
        for r, row in enumerate(rows):
            ids, labels = [self.lm.bos_token_id], [IGNORE]
            for item in row:
                if isinstance(item, Text):
                    toks = list(self._tokenize(item.text))
                    if item.target:
                        toks.append(self.lm.eos_token_id)
                        labels.extend(toks)
                    else:
                        labels.extend([IGNORE] * len(toks))
                    ids.extend(toks)
                else:
                    slots.append((r, len(ids), int(item)))
                    ids.extend([0] * self.prefix_len)
                    labels.extend([IGNORE] * self.prefix_len)
            ids_rows.append(ids)
            lab_rows.append(labels)
        t = max(len(x) for x in ids_rows)
        # the hidden state at column c predicts the token at c + 1
        targets = [(r, c - 1, tok) for r, lab in enumerate(lab_rows) for c, tok in enumerate(lab)
                   if tok != IGNORE]
        n_pre = self.prefix_len
        dev = self.device if device is None else device

        def tensor(values: list[int] | list[list[int]]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        return PackedBatch(
            input_ids=tensor([x + [0] * (t - len(x)) for x in ids_rows]),
            attention_mask=tensor([[1] * len(x) + [0] * (t - len(x)) for x in ids_rows]),
            labels=tensor([x + [IGNORE] * (t - len(x)) for x in lab_rows]),
            prefix_rows=tensor([s[0] for s in slots for _ in range(n_pre)]),
            prefix_cols=tensor([s[1] + o for s in slots for o in range(n_pre)]),
            image_index=tensor([s[2] for s in slots]),
            target_rows=tensor([x[0] for x in targets]),
            target_cols=tensor([x[1] for x in targets]),
            target_ids=tensor([x[2] for x in targets]),
            target_counts=tensor([sum(tok != IGNORE for tok in lab) for lab in lab_rows]),
            slot_rows=[s[0] for s in slots],
        )

    def prefixes(
        self, features: torch.Tensor, params: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Visual features ``(n, tokens, dim)`` -> prefixes ``(n, l, D)`` (optionally functional)."""
        if params is None:
            return self.mapper(features)
        return functional_call(self.mapper, dict(params), (features,), strict=False)

    def embed(
        self,
        features: torch.Tensor,
        batch: PackedBatch,
        params: Mapping[str, torch.Tensor] | None = None,
        prefixes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each image slot replaced by its prefix: ``(B, T, D)``.

        ``prefixes`` (one per image slot, ``(S, l, D)``) may be given precomputed, e.g. with
        per-task parameters; otherwise they are computed from ``features[batch.image_index]``.
        """
        emb = self.lm.embed(batch.input_ids)  # (B, T, D)
        if not batch.slot_rows:
            return emb
        if prefixes is None:
            prefixes = self.prefixes(features[batch.image_index], params)
        flat = prefixes.reshape(-1, prefixes.shape[-1]).to(emb.dtype)  # (S * l, D)
        return emb.index_put((batch.prefix_rows, batch.prefix_cols), flat)

    @property
    def device(self) -> torch.device:
        """Where the model runs (its backbones and mapper are moved together, ``place_model``)."""
        return self.lm.device

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        features: torch.Tensor,
        batch: PackedBatch,
        params: Mapping[str, torch.Tensor] | None = None,
        *,
        prefixes: torch.Tensor | None = None,
        per_row: bool = False,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over target tokens (per row with ``per_row=True``).

        Only target positions go through the LM head, which saves most of the cost of a
        large vocabulary.
        """
        emb = self.embed(features, batch, params, prefixes)
        hidden = self.lm.backbone(inputs_embeds=emb, attention_mask=batch.attention_mask).last_hidden_state
        logits = self.lm.head(hidden[batch.target_rows, batch.target_cols])  # (n_targets, vocab)
        # at least float32 for the softmax (a float64 model stays float64; bfloat16 is upcast)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        tok_loss = F.cross_entropy(logits, batch.target_ids, reduction="none")  # (n_targets,)
        if not per_row:
            return tok_loss.mean()
        sums = tok_loss.new_zeros(batch.n_rows).index_add(0, batch.target_rows, tok_loss)
        return sums / batch.target_counts.clamp(min=1)  # (B,)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        rows: Sequence[Sequence[Item]],
        params: Mapping[str, torch.Tensor] | None = None,
        *,
        prefixes: torch.Tensor | None = None,
        max_new_tokens: int = 10,
        groups: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Greedy continuation of each prompt row, stopped at EOS, newline or '.' (``kwargs``: see
        ``models.generation.generate``).

        ``groups[r]``: rows of one group (consecutive, e.g. one task's queries, whose image
        prefixes come from the same parameters) that open with the same items share that context's
        LM computation (``SharedContext``); default: every row alone.
        """
        batch = self.pack(rows)
        emb = self.embed(features, batch, params, prefixes)
        shared = self.shared_context(rows, groups) if groups is not None else None
        out = generate(self.lm, emb, batch.attention_mask, max_new_tokens=max_new_tokens, shared=shared,
                       **kwargs)
        return out.texts

    def shared_context(self, rows: Sequence[Sequence[Item]], groups: Sequence[int]) -> SharedContext:
        """The context each row shares with the first row of its group: the items that all the
        group's rows open with, short of each row's last item, in positions (BOS included)."""
        if len(groups) != len(rows):
            raise ValueError(f"{len(groups)} groups for {len(rows)} rows")
        first: dict[int, int] = {}
        common: dict[int, int] = {}  # group -> items its rows all open with
        for r, (row, g) in enumerate(zip(rows, groups, strict=True)):
            lead = first.setdefault(g, r)
            ref = rows[lead]
            n = min(common.get(g, len(row) - 1), len(row) - 1, len(ref) - 1)
            n = next((i for i in range(n) if row[i] != ref[i]), n)
            common[g] = n
        length = {g: 1 + sum(self.prefix_len if not isinstance(item, Text) else len(self._tokenize(item.text))
                             for item in rows[first[g]][:n]) for g, n in common.items()}
        # a group of one row shares nothing: its context is its BOS
        size = Counter(groups)
        return SharedContext(leader=[first[g] for g in groups],
                             length=[length[g] if size[g] > 1 else 1 for g in groups])

    @torch.no_grad()
    def encode_images(self, images: Sequence[object]) -> torch.Tensor:
        """Encode PIL images with the frozen encoder: ``(n, tokens, dim)`` float32 on the model's
        device."""
        if self.vision is None:
            raise RuntimeError("this model was built without an image encoder")
        return self.vision.encode(images).to(self.device)  # type: ignore[arg-type]
