"""Installed fonts as renderers of characters: what ``emoji`` and ``glyphs`` draw with.

``font_faces`` finds the font files under ``/usr/share/fonts`` (TrueType, OpenType, and each face
of a collection; not fonts of bitmaps only), reads each face's family, style and character map with
fontTools, and keeps one face per family (the regular one: a bold or italic of the same design
would be a near-duplicate instance). ``render_char`` draws one character of a face as a picture: cropped to its ink,
scaled to fit, centred on white.

Example::

    from metamapper.data.fonts import font_faces, render_char
    faces = [f for f in font_faces() if ord("a") in f.chars]
    render_char(faces[0], "a").size          # (128, 128)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from metamapper.data.corpora import IMAGE_SIZE, crop_to_ink, fit_square, is_reserved, owner_packages

logger = logging.getLogger(__name__)

FONT_ROOTS: tuple[str, ...] = ("/usr/share/fonts",)
FONT_EXTENSIONS = (".ttf", ".otf", ".ttc", ".otc")
_STYLE_RANK = {"regular": 0, "book": 1, "roman": 1, "normal": 1, "text": 2, "medium": 3}
COLOUR_STRIKES = (109, 136, 128, 96, 72, 64, 32)  # bitmap colour fonts render only at their strikes


@dataclass(frozen=True)
class FontFace:
    """One face of an installed font.

    Attributes:
        path: the font file.
        index: the face inside a collection (0 for plain fonts).
        family: the typographic family (``DejaVu Sans``).
        style: the style (``Regular``).
        package: the Debian package that installed it (the file's folder name otherwise).
        colour: a colour font (bitmap or layered glyphs): drawn with its own colours.
        chars: the code points it maps.
    """

    path: str
    index: int
    family: str
    style: str
    package: str
    colour: bool
    chars: frozenset[int]


def _name(font: object, *ids: int) -> str:
    table = font["name"]  # type: ignore[index]
    for i in ids:
        rec = table.getDebugName(i)
        if rec:
            return str(rec).strip()
    return ""


def _faces_of(path: str) -> list[tuple[int, str, str, bool, frozenset[int]]]:
    from fontTools.ttLib import TTCollection, TTFont

    fonts = (list(TTCollection(path, lazy=True).fonts) if path.lower().endswith((".ttc", ".otc"))
             else [TTFont(path, lazy=True)])
    out = []
    for i, font in enumerate(fonts):
        cmap = font.getBestCmap() or {}
        family = _name(font, 16, 1)
        style = _name(font, 17, 2) or "Regular"
        colour = any(t in font for t in ("CBDT", "sbix", "COLR", "SVG "))
        out.append((i, family, style, colour, frozenset(cmap)))
    return out


def _scalable(path: str, index: int) -> bool:
    """Whether FreeType draws the face at any size (not so: fonts of bitmap strikes only, such as
    ``unifont_sample.ttf``, whose outline table is empty)."""
    try:
        ImageFont.truetype(path, 2 * IMAGE_SIZE, index=index)
        return True
    except OSError:
        return False


def font_faces(roots: Sequence[str | os.PathLike[str]] = FONT_ROOTS, *,
               packages: dict[str, str] | None = None) -> list[FontFace]:
    """One face per font family under ``roots`` (the most regular style), sorted by family.

    A file fontTools cannot read is skipped with a warning; files of Debian's ``openclipart*``
    packages are never read.

    Args:
        roots: folders searched recursively.
        packages: font file -> owning package (default: asked of ``dpkg-query``).
    """
    files = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            files += [os.path.join(dirpath, n) for n in names if n.lower().endswith(FONT_EXTENSIONS)]
    files = sorted(f for f in files if not is_reserved(f))
    owners = packages if packages is not None else owner_packages(files)
    best: dict[str, tuple[tuple[int, int, str, int], FontFace]] = {}
    for path in files:
        try:
            faces = _faces_of(path)
        except Exception as e:  # a broken font file must not stop the scan
            logger.warning("skipped font %s: %s: %s", path, type(e).__name__, e)
            continue
        package = owners.get(path, Path(path).parent.name)
        if is_reserved(path, package):
            continue
        for index, family, style, colour, chars in faces:
            if not family or not chars or not (colour or _scalable(path, index)):
                continue
            words = style.lower().split()
            rank = (min((_STYLE_RANK.get(w, 9) for w in words), default=9) + 10 * (len(words) > 1),
                    len(style), path, index)
            face = FontFace(path, index, family, style, package, colour, chars)
            if family not in best or rank < best[family][0]:
                best[family] = (rank, face)
    return [best[f][1] for f in sorted(best)]


def _font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    if not face.colour:
        return ImageFont.truetype(face.path, size, index=face.index)
    for strike in (size, *COLOUR_STRIKES):  # CBDT fonts (Noto Color Emoji) refuse other sizes
        try:
            return ImageFont.truetype(face.path, strike, index=face.index)
        except OSError:
            continue
    raise OSError(f"{face.path}: no usable size for a colour font")


def render_char(face: FontFace, text: str, size: int = IMAGE_SIZE, *, margin: float = 0.1) -> Image.Image:
    """``text`` (a character or a short sequence) drawn by ``face``: black (or the font's own
    colours), cropped to its ink, scaled to fit ``size`` less ``margin``, centred on white.

    Raises:
        ValueError: the font draws nothing for it (an empty glyph).
    """
    em = 2 * size
    font = _font(face, em)
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    w, h = max(1, right - left), max(1, bottom - top)
    canvas = Image.new("RGB", (w + 2 * em // 4, h + 2 * em // 4), (255, 255, 255))
    ImageDraw.Draw(canvas).text((em // 4 - left, em // 4 - top), text, font=font, fill=(0, 0, 0),
                                embedded_color=face.colour)
    ink = crop_to_ink(canvas)
    if ink is None:
        raise ValueError(f"{face.family} draws nothing for {text!r}")
    return fit_square(ink, size, margin=margin)
