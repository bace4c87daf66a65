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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metamapper.models.backbones import LanguageModel, VisionEncoder
from metamapper.models.generation import generate

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
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prefix_rows: torch.Tensor
    prefix_cols: torch.Tensor
    image_index: torch.Tensor

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
        mapper: nn.Module,
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

    def pack(self, rows: Sequence[Sequence[Item]]) -> PackedBatch:
        """Turn rows of items into one right-padded batch (a BOS token starts every row)."""
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
        b, t = len(ids_rows), max(len(x) for x in ids_rows)
        input_ids = torch.zeros(b, t, dtype=torch.long)
        labels = torch.full((b, t), IGNORE, dtype=torch.long)
        mask = torch.zeros(b, t, dtype=torch.long)
        for r, (ids, lab) in enumerate(zip(ids_rows, lab_rows, strict=True)):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, : len(lab)] = torch.tensor(lab)
            mask[r, : len(ids)] = 1
        offs = torch.arange(self.prefix_len)
        prefix_rows = torch.tensor([s[0] for s in slots], dtype=torch.long)
        prefix_cols = torch.tensor([s[1] for s in slots], dtype=torch.long)
        return PackedBatch(
            input_ids=input_ids,
            attention_mask=mask,
            labels=labels,
            prefix_rows=prefix_rows.repeat_interleave(self.prefix_len),
            prefix_cols=(prefix_cols[:, None] + offs).reshape(-1),
            image_index=torch.tensor([s[2] for s in slots], dtype=torch.long),
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
        emb = self.lm.embed(batch.input_ids.to(self._device))  # (B, T, D)
        if batch.image_index.numel() == 0:
            return emb
        if prefixes is None:
            prefixes = self.prefixes(features[batch.image_index.to(features.device)], params)
        flat = prefixes.reshape(-1, prefixes.shape[-1]).to(emb.dtype)  # (S * l, D)
        return emb.index_put((batch.prefix_rows.to(emb.device), batch.prefix_cols.to(emb.device)), flat)

    @property
    def _device(self) -> torch.device:
        return self.lm.model.get_input_embeddings().weight.device

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
        mask = batch.attention_mask.to(emb.device)
        hidden = self.lm.backbone(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        labels = batch.labels.to(emb.device)[:, 1:]  # the token predicted at position t is t+1
        sel = labels != IGNORE  # (B, T-1)
        logits = self.lm.head(hidden[:, :-1][sel])  # (n_targets, vocab)
        # at least float32 for the softmax (a float64 model stays float64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        tok_loss = F.cross_entropy(logits, labels[sel], reduction="none")
        if not per_row:
            return tok_loss.mean()
        rows = sel.nonzero()[:, 0]
        sums = torch.zeros(batch.n_rows, device=emb.device, dtype=tok_loss.dtype).index_add(0, rows, tok_loss)
        counts = sel.sum(1).clamp(min=1)
        return sums / counts  # (B,)

    def target_logprobs(
        self,
        features: torch.Tensor,
        batch: PackedBatch,
        params: Mapping[str, torch.Tensor] | None = None,
        *,
        prefixes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Summed log-probability of each row's target tokens ``(B,)`` (for ranking answers)."""
        with torch.no_grad():
            emb = self.embed(features, batch, params, prefixes)
            mask = batch.attention_mask.to(emb.device)
            hidden = self.lm.backbone(inputs_embeds=emb, attention_mask=mask).last_hidden_state
            labels = batch.labels.to(emb.device)[:, 1:]
            sel = labels != IGNORE
            logp = -F.cross_entropy(
                self.lm.head(hidden[:, :-1][sel]).float(), labels[sel], reduction="none"
            )
            rows = sel.nonzero()[:, 0]
            return torch.zeros(batch.n_rows, device=emb.device).index_add(0, rows, logp)

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
        **kwargs: object,
    ) -> list[str]:
        """Greedy (or sampled) continuation of each prompt row, stopped at EOS, newline or '.'."""
        batch = self.pack(rows)
        emb = self.embed(features, batch, params, prefixes)
        out = generate(
            self.lm, emb, batch.attention_mask.to(emb.device), max_new_tokens=max_new_tokens,
            **kwargs,
        )
        return out.texts

    @torch.no_grad()
    def encode_images(self, images: Sequence[object]) -> torch.Tensor:
        """Encode PIL images with the frozen encoder: ``(n, tokens, dim)``."""
        if self.vision is None:
            raise RuntimeError("this model was built without an image encoder")
        return self.vision.encode(images)  # type: ignore[arg-type]
