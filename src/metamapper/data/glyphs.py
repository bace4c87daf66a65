"""Letters of many scripts drawn by many fonts, an Omniglot-like corpus: task source ``"glyphs"``.

A concept is one letter (``ა``, ``ж``, ``क``, ``A``), named by its Unicode name ("This is a
georgian letter an."); its instances are the installed font families that draw it (one face per
family, ``fonts.font_faces``), each picture the letter's ink scaled to fit and centred. Kept:

- letters only (Unicode categories Lu, Ll, Lo), without a decomposition (``é`` is ``e`` plus an
  accent: a near-duplicate) and never a digit;
- letters drawn by at least ``MIN_FONTS`` families (after identical pictures are merged), by at
  most ``MAX_FONTS`` of them, taken in turn from each font package (``spread``);
- per script (the name's words before ``LETTER``/``SYLLABLE``/...: ``LATIN``, ``HANGUL``),
  the ``MAX_PER_SCRIPT`` letters drawn by the most fonts (ties: the lower code point), so that
  CJK's 28 000 ideographs or Hangul's 11 000 syllables do not drown the alphabets; a script
  needs ``MIN_PER_SCRIPT`` such letters. Names with a digit (``CJK UNIFIED IDEOGRAPH-4E00``)
  are left out: the name is the caption.

The fonts are every TrueType/OpenType file under ``/usr/share/fonts``; installing more Debian
font packages (``fonts-noto-core``, ``fonts-freefont-ttf``, the Lohit, SIL, Thai TLWG, ...
fonts) gives more scripts and more instances.

Example::

    train, val = training_tasks(DataConfig(source="glyphs"), n_tasks=100, seed=0)
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence
from functools import partial

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

MIN_FONTS = 3
MAX_PER_SCRIPT = 50
MIN_PER_SCRIPT = 10
MAX_FONTS = 20  # instances per letter (Omniglot has 20 drawers per character): Latin has ~250 fonts
LETTER_CATEGORIES = ("Lu", "Ll", "Lo")
_SCRIPT_END = {"LETTER", "CAPITAL", "SMALL", "SYLLABLE", "SYLLABICS", "CHARACTER", "IDEOGRAPH",
               "VOWEL", "CONSONANT", "SIGN", "LIGATURE"}

INSTALL = ("fonts-noto-core fonts-dejavu-core fonts-dejavu-extra fonts-freefont-ttf fonts-liberation "
           "fonts-unifont fonts-sil-gentiumplus fonts-sil-charis fonts-sil-andika fonts-linuxlibertine "
           "fonts-urw-base35 fonts-crosextra-carlito fonts-crosextra-caladea fonts-ebgaramond "
           "fonts-open-sans fonts-roboto-unhinted fonts-lato fonts-cantarell fonts-hosny-amiri "
           "fonts-sil-scheherazade fonts-thai-tlwg fonts-sil-abyssinica fonts-sil-padauk fonts-khmeros "
           "fonts-lohit-deva fonts-samyak-deva fonts-gargi fonts-lohit-beng-bengali fonts-lohit-taml "
           "fonts-lohit-knda fonts-lohit-telu fonts-lohit-gujr fonts-lohit-guru fonts-lohit-mlym "
           "fonts-lohit-orya fonts-nanum fonts-unfonts-core fonts-ipafont-gothic fonts-ipafont-mincho "
           "fonts-wqy-microhei fonts-bpg-georgian fonts-tibetan-machine fonts-lao")
"""The Debian font packages the measured corpus was built from (``apt-get install``)."""


def script_of(name: str) -> str:
    """The script part of a Unicode character name.

    Example::

        >>> script_of("LATIN SMALL LETTER A"), script_of("CANADIAN SYLLABICS E")
        ('LATIN', 'CANADIAN')
    """
    words = name.split()
    for i, w in enumerate(words):
        if w in _SCRIPT_END:
            return " ".join(words[:i]) or words[0]
    return words[0]


def eligible(ch: str) -> bool:
    """A letter the corpus may keep: a named, undecomposed letter with no digit in it or its name."""
    name = unicodedata.name(ch, "")
    return (bool(name) and unicodedata.category(ch) in LETTER_CATEGORIES
            and not unicodedata.decomposition(ch) and not has_digit(ch) and not has_digit(name))


def choose_letters(faces: Sequence[FontFace], *, min_fonts: int = MIN_FONTS,
                   max_per_script: int = MAX_PER_SCRIPT,
                   min_per_script: int = MIN_PER_SCRIPT) -> dict[str, list[str]]:
    """Script -> its chosen letters (see the module's docstring)."""
    cover: dict[int, int] = {}
    for f in faces:
        if f.colour:
            continue
        for cp in f.chars:
            cover[cp] = cover.get(cp, 0) + 1
    scripts: dict[str, list[int]] = {}
    for cp, n in cover.items():
        if n >= min_fonts and 0 <= cp < 0x110000 and eligible(ch := chr(cp)):
            scripts.setdefault(script_of(unicodedata.name(ch)), []).append(cp)
    out = {}
    for script, cps in sorted(scripts.items()):
        if len(cps) >= min_per_script:
            best = sorted(cps, key=lambda cp: (-cover[cp], cp))[:max_per_script]
            out[script] = [chr(cp) for cp in sorted(best)]
    return out


def spread(faces: Sequence[FontFace], n: int) -> list[FontFace]:
    """At most ``n`` of ``faces``, taken in turn from each package (sorted), so that a letter's
    instances come from as many font packages (designers) as there are."""
    by_package: dict[str, list[FontFace]] = {}
    for f in sorted(faces, key=lambda f: (f.package, f.family)):
        by_package.setdefault(f.package, []).append(f)
    queues = list(by_package.values())
    out: list[FontFace] = []
    while len(out) < n and queues:
        out += [q.pop(0) for q in queues][: n - len(out)]
        queues = [q for q in queues if q]
    return out


def build_glyphs(out: str | os.PathLike[str], *, font_roots: Sequence[str | os.PathLike[str]] = FONT_ROOTS,
                 faces: Sequence[FontFace] | None = None, min_fonts: int = MIN_FONTS,
                 max_per_script: int = MAX_PER_SCRIPT, min_per_script: int = MIN_PER_SCRIPT,
                 max_fonts: int = MAX_FONTS, size: int = IMAGE_SIZE, progress: bool = False) -> Corpus:
    """Render the glyph corpus into folder ``out`` (see the module's docstring).

    Args:
        out: the corpus folder.
        font_roots: folders of fonts (ignored when ``faces`` is given).
        faces: the fonts to draw with (default: ``font_faces(font_roots)``).
        min_fonts: the fewest distinct drawings a letter keeps.
        max_per_script, min_per_script: letters kept per script, and the fewest a script needs.
        max_fonts: the most fonts a letter is drawn by (``spread``).
        size: the picture side.
        progress: show a progress bar.
    """
    faces = [f for f in (faces if faces is not None else font_faces(font_roots)) if not f.colour]
    letters = choose_letters(faces, min_fonts=min_fonts, max_per_script=max_per_script,
                             min_per_script=min_per_script)
    candidates = []
    for script, chars in letters.items():
        for ch in chars:
            name = unicodedata.name(ch)
            info = {"char": ch, "script": script.lower(), "codepoint": f"U+{ord(ch):04X}"}
            candidates += [Candidate(f"u+{ord(ch):04x}", readable(name), f.package, f.family, f.path,
                                     partial(render_char, f, ch, size), info)
                           for f in spread([f for f in faces if ord(ch) in f.chars], max_fonts)]
    if not candidates:
        raise CorpusBuildError(f"no letter is drawn by {min_fonts} installed fonts; install fonts: "
                               f"apt-get install {INSTALL}")
    return build_corpus("glyphs", out, candidates, min_instances=min_fonts, size=size,
                        progress=progress, stats={"fonts": len(faces), "scripts": len(letters)})


register_corpus_source("glyphs", build_glyphs, INSTALL)  # called as (out, progress=...)
