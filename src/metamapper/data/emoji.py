"""Emoji drawn by several fonts as a concept corpus: task source ``"emoji"``.

A concept is one emoji (a single code point: ``🐶``), named by its Unicode CLDR short name
("This is a dog face."), and its instances are the drawings of the installed fonts that map it:
colour (Noto Color Emoji, ``fonts-noto-color-emoji``), outline (Symbola, ``fonts-symbola``), pixel
(Unifont Upper, ``fonts-unifont``) and, for the older symbols (``☂``), the text fonts that have
them (DejaVu, FreeSerif, Noto Sans Symbols 2, ...). A concept needs ``MIN_FONTS`` distinct
drawings: with the three emoji fonts most emoji have exactly three, so a task's support and
query show the same concept in different styles. No augmentation is added: shifted or rotated
copies of one drawing would let a task be solved by matching pixels instead of concepts.

The emoji and their names come from ``emoji-test.txt`` (Debian ``unicode-data``:
``/usr/share/unicode/emoji/``), fully-qualified single code points only (sequences, skin tones,
flags and keycaps need text shaping that not every font has); without that file, Python's
``unicodedata`` names the pictographic blocks' characters. Left out: emoji whose name holds a
digit or whose picture is digits (``1st place medal``, ``input numbers``, ``hundred points``,
keycaps, calendars).

Example::

    train, val = training_tasks(DataConfig(source="emoji"), n_tasks=100, seed=0)
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from metamapper.data.corpora import (
    IMAGE_SIZE,
    Candidate,
    Corpus,
    CorpusBuildError,
    build_corpus,
    has_digit,
    readable,
    register_corpus_source,
)
from metamapper.data.fonts import FONT_ROOTS, FontFace, font_faces, render_char

EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
MIN_FONTS = 3
DIGIT_PICTURES = re.compile(r"\b(numbers?|hundred|keycap|calendar)\b")  # pictures made of digits
_BLOCKS = ((0x2600, 0x27BF), (0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1FAFF))

INSTALL = "fonts-noto-color-emoji fonts-symbola fonts-unifont unicode-data"
"""The Debian packages the measured corpus was built from (``apt-get install``)."""


@dataclass(frozen=True)
class Emoji:
    char: str
    name: str  # the CLDR short name, lower case ("dog face")
    group: str  # "Animals & Nature / animal-mammal" ("" without emoji-test.txt)


def list_emoji(path: str | os.PathLike[str] = EMOJI_TEST) -> list[Emoji]:
    """The single-code-point, fully-qualified emoji of ``emoji-test.txt`` (or, without it, the
    named characters of the pictographic blocks), minus those made of digits."""
    out: list[Emoji] = []
    if Path(path).is_file():
        group = subgroup = ""
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif ";" in line and not line.startswith("#") and "fully-qualified" in line:
                cps = [int(x, 16) for x in line.split(";")[0].split() if x != "FE0F"]
                comment = line.split("#", 1)[1].split()
                if len(cps) == 1 and len(comment) >= 3:  # "🐶 E0.6 dog face"
                    out.append(Emoji(chr(cps[0]), " ".join(comment[2:]).lower(), f"{group} / {subgroup}"))
    else:
        for lo, hi in _BLOCKS:
            for cp in range(lo, hi + 1):
                name = unicodedata.name(chr(cp), "")
                if name and unicodedata.category(chr(cp)) == "So":
                    out.append(Emoji(chr(cp), name.lower(), ""))
    return [e for e in out if not has_digit(e.char) and not has_digit(e.name)
            and not DIGIT_PICTURES.search(e.name)]


def concept_key(e: Emoji) -> str:
    """``"U+1F436"``: a concept's folder name."""
    return f"u+{ord(e.char):04x}"


def build_emoji(out: str | os.PathLike[str], *, emoji_test: str | os.PathLike[str] = EMOJI_TEST,
                font_roots: Sequence[str | os.PathLike[str]] = FONT_ROOTS,
                faces: Sequence[FontFace] | None = None, min_fonts: int = MIN_FONTS,
                size: int = IMAGE_SIZE, progress: bool = False) -> Corpus:
    """Render the emoji corpus into folder ``out`` (see the module's docstring).

    Args:
        out: the corpus folder.
        emoji_test: Unicode's ``emoji-test.txt``.
        font_roots: folders of fonts (ignored when ``faces`` is given).
        faces: the fonts to draw with (default: ``font_faces(font_roots)``).
        min_fonts: the fewest distinct drawings an emoji keeps.
        size: the picture side.
        progress: show a progress bar.
    """
    faces = list(faces) if faces is not None else font_faces(font_roots)
    candidates = []
    emoji = list_emoji(emoji_test)
    for e in emoji:
        covering = [f for f in faces if ord(e.char) in f.chars]
        if len(covering) < min_fonts:
            continue
        info = {"char": e.char, "unicode_name": unicodedata.name(e.char, "").lower(), "group": e.group}
        candidates += [Candidate(concept_key(e), readable(e.name), f.package, f.family, f.path,
                                 partial(render_char, f, e.char, size), info) for f in covering]
    if not candidates:
        raise CorpusBuildError(f"no emoji is drawn by {min_fonts} installed fonts; install the "
                               f"emoji fonts: apt-get install {INSTALL}")
    return build_corpus("emoji", out, candidates, min_instances=min_fonts, size=size,
                        progress=progress, stats={"emoji_listed": len(emoji), "fonts": len(faces)})


register_corpus_source("emoji", build_emoji, INSTALL)  # called as (out, progress=...)
