"""Icon themes as a concept corpus: task source ``"icons"``.

The freedesktop icon naming standard makes every icon theme draw the same concepts under the same
names (``printer``, ``camera-photo``, ``user-trash``, ``weather-storm``, ...), so the installed
Debian icon themes give many concepts, each drawn in several styles: a concept is a class, each
theme package's drawing of it an instance, and its caption the name made readable ("This is a
camera photo.").

What is kept (``scan_themes``):

- every theme folder (with an ``index.theme``) under ``/usr/share/icons`` except the fallback
  and cursor folders (``hicolor``, ``locolor``, ``default``); the Debian package that installed
  a theme is its origin, and variants of one package (``Papirus``, ``Papirus-Dark``,
  ``ePapirus``) give one drawing per concept: the main theme's (the shortest folder name
  first), at its largest size (an SVG at equal size);
- SVG and PNG files; never symbolic variants (``*-symbolic``, ``symbolic/`` folders), mirrored
  ``*-rtl`` / ``*-ltr`` variants, animations, cursors, reverse-DNS application ids
  (``org.gnome.Nautilus``), hashed ids (a word over 16 letters), legacy aliases (``gtk-*``,
  ``gnome-*``, ``stock_*``), names with a digit, nor anything of Debian's ``openclipart*`` packages;
- concepts drawn by at least ``MIN_THEMES`` packages, after identical pictures are merged
  (``corpora.build_corpus``).

SVGs are rendered by ``rsvg-convert`` (Debian ``librsvg2-bin``, the library GTK draws icons
with); PNGs are read by Pillow. Every picture is 128 x 128 RGB on white.

Example::

    from metamapper.data.sources import training_tasks
    train, val = training_tasks(DataConfig(source="icons"), n_tasks=100, seed=0)
    # or build it explicitly: metamapper corpus icons
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image

from metamapper.data.corpora import (
    IMAGE_SIZE,
    Candidate,
    Corpus,
    CorpusBuildError,
    build_corpus,
    fit_square,
    has_digit,
    is_reserved,
    owner_packages,
    readable,
    register_corpus_source,
)
from metamapper.data.images import load_image

ICON_ROOTS: tuple[str, ...] = ("/usr/share/icons",)
SKIP_THEMES = frozenset({"hicolor", "locolor", "default"})  # fallbacks and cursor links, not styles
SKIP_FOLDERS = frozenset({"symbolic", "animations", "cursors", "stock"})
LEGACY_PREFIXES = ("gtk-", "gnome-", "stock_", "stock-", "gnome_", "kde-", "xfce-", "mate-")
EXTENSIONS = (".svg", ".png")
MIN_THEMES = 3
SCALABLE = 10_000  # the size rank of a scalable SVG: it renders crisply at any size
_SIZE = re.compile(r"^(\d+)(?:x\d+)?(?:@(\d+)x?)?$")

INSTALL = ("adwaita-icon-theme breeze-icon-theme papirus-icon-theme oxygen-icon-theme "
           "tango-icon-theme elementary-icon-theme elementary-xfce-icon-theme numix-icon-theme "
           "mate-icon-theme faenza-icon-theme moka-icon-theme suru-icon-theme paper-icon-theme "
           "yaru-theme-icon gnome-icon-theme lxde-icon-theme gnome-icon-theme-nuovo "
           "gnome-icon-theme-gartoon gnome-icon-theme-suede gnome-icon-theme-yasis "
           "sugar-icon-theme librsvg2-bin")
"""The Debian packages the measured corpus was built from (``apt-get install``)."""


@dataclass(frozen=True)
class IconFile:
    """One candidate drawing: a theme's file for a concept."""

    concept: str
    package: str
    theme: str
    path: str
    size: int  # the nominal size rank (SCALABLE for scalable SVGs)


def concept_of(stem: str) -> str | None:
    """The concept an icon file name stands for, or None for the names left out (symbolic,
    mirrored, reverse-DNS ids, legacy aliases, digits).

    Example::

        >>> concept_of("Camera-Photo"), concept_of("go-next-symbolic"), concept_of("battery-level-50")
        ('camera-photo', None, None)
    """
    s = stem.lower()
    if (s.endswith(("-symbolic", "-rtl", "-ltr", "-symbolic-rtl", "-symbolic-ltr"))
            or "." in s or " " in s or has_digit(s) or s.startswith(LEGACY_PREFIXES)
            or not re.fullmatch(r"[a-z][a-z_\-]*[a-z]", s)
            or any(len(w) > 16 for w in re.split(r"[_\-]", s))):  # hashed ids (chrome-<32 letters>)
        return None
    return s


def concept_name(concept: str) -> str:
    """The readable name of an icon concept: ``"camera-photo"`` -> ``"camera photo"``,
    ``"application-x-executable"`` -> ``"application executable"`` (the MIME ``x-`` dropped)."""
    words = [w for w in readable(concept).split() if w != "x"]
    return " ".join(words) or readable(concept)


def _size_rank(parts: Sequence[str], suffix: str) -> int:
    best = 0
    for p in parts:
        m = _SIZE.match(p)
        if m:
            best = max(best, int(m.group(1)) * int(m.group(2) or 1))
        elif p == "scalable":
            best = max(best, SCALABLE)
        elif (u := re.fullmatch(r"scalable-up-to-(\d+)", p)):
            best = max(best, int(u.group(1)))
    return best * 2 + (suffix == ".svg")  # an SVG wins at equal size


def theme_folders(roots: Sequence[str | os.PathLike[str]] = ICON_ROOTS) -> list[Path]:
    """The icon theme folders (those with an ``index.theme``) under ``roots``, sorted."""
    out = []
    for root in roots:
        r = Path(root)
        if not r.is_dir() or is_reserved(r):
            continue
        for d in sorted(r.iterdir()):
            if d.is_dir() and d.name not in SKIP_THEMES and (d / "index.theme").is_file() \
                    and not is_reserved(d):
                out.append(d)
    return out


def scan_themes(roots: Sequence[str | os.PathLike[str]] = ICON_ROOTS, *,
                packages: dict[str, str] | None = None) -> list[IconFile]:
    """One drawing per (package, concept): the candidates of the icon corpus, before rendering.

    Args:
        roots: folders holding theme folders.
        packages: theme folder path -> owning package (default: asked of ``dpkg-query``; a
            theme no package owns is its own package, named after its folder).

    Returns:
        The chosen files, sorted by concept then package.
    """
    themes = theme_folders(roots)
    owners = packages if packages is not None else owner_packages(str(t) for t in themes)
    chosen: dict[tuple[str, str], tuple[tuple[int, int, str], IconFile]] = {}
    for theme in themes:
        package = owners.get(str(theme), theme.name)
        if is_reserved(theme, package):
            continue
        rank = (len(theme.name), theme.name)  # the package's main theme first: Papirus < ePapirus
        for dirpath, dirs, files in os.walk(theme):  # symlinked folders are not followed
            rel = Path(dirpath).relative_to(theme).parts
            dirs[:] = [d for d in dirs if d.lower() not in SKIP_FOLDERS]
            for f in files:
                stem, suffix = os.path.splitext(f)
                suffix = suffix.lower()
                if suffix not in EXTENSIONS or (concept := concept_of(stem)) is None:
                    continue
                path = os.path.join(dirpath, f)
                if not os.path.exists(path) or is_reserved(path):  # a broken link
                    continue
                size = _size_rank(rel, suffix)
                key = (rank[0], -size, rank[1])
                old = chosen.get((package, concept))
                if old is None or key < old[0]:
                    chosen[package, concept] = (key, IconFile(concept, package, theme.name, path, size))
    return sorted((v[1] for v in chosen.values()), key=lambda i: (i.concept, i.package))


def render_icon(path: str, size: int = IMAGE_SIZE) -> Image.Image:
    """An icon file as a ``size`` x ``size`` RGB picture on white (SVG by ``rsvg-convert``,
    PNG by Pillow, transparency over white)."""
    if path.lower().endswith(".svg"):
        exe = shutil.which("rsvg-convert")
        if exe is None:
            raise CorpusBuildError("rsvg-convert is missing: apt-get install librsvg2-bin")
        res = subprocess.run([exe, "-w", str(size), "-h", str(size), "-a", "-f", "png", path],
                             capture_output=True, timeout=60, check=False)
        if res.returncode != 0 or not res.stdout:
            raise ValueError(f"rsvg-convert failed: {res.stderr.decode(errors='replace').strip()[:200]}")
        im = load_image(res.stdout, name=f"rendering of {path}")
    else:
        im = load_image(path)
    return fit_square(im, size)


def build_icons(out: str | os.PathLike[str], *, roots: Sequence[str | os.PathLike[str]] = ICON_ROOTS,
                packages: dict[str, str] | None = None, min_themes: int = MIN_THEMES,
                size: int = IMAGE_SIZE, progress: bool = False) -> Corpus:
    """Render the icon corpus into folder ``out`` (see the module's docstring).

    Args:
        out: the corpus folder.
        roots: folders of icon themes.
        packages: theme folder -> package (default: ``dpkg-query``).
        min_themes: the fewest distinct drawings a concept keeps.
        size: the picture side.
        progress: show a progress bar.

    Raises:
        CorpusBuildError: no theme holds an icon, or SVGs need ``rsvg-convert`` and it is missing.
    """
    files = scan_themes(roots, packages=packages)
    by_concept: dict[str, set[str]] = {}
    for f in files:
        by_concept.setdefault(f.concept, set()).add(f.package)
    keep = {c for c, p in by_concept.items() if len(p) >= min_themes}
    files = [f for f in files if f.concept in keep]
    if not files:
        raise CorpusBuildError(f"no icon concept is drawn by {min_themes} themes under "
                               f"{', '.join(map(str, roots))}; install icon themes: apt-get install {INSTALL}")
    if any(f.path.lower().endswith(".svg") for f in files) and shutil.which("rsvg-convert") is None:
        raise CorpusBuildError("icon themes hold SVG files; rendering them needs rsvg-convert: "
                               "apt-get install librsvg2-bin")
    candidates = [Candidate(f.concept, concept_name(f.concept), f.package, f.theme, f.path,
                            partial(render_icon, f.path, size), {"icon_name": f.concept})
                  for f in files]
    return build_corpus("icons", out, candidates, min_instances=min_themes, size=size,
                        progress=progress, stats={"themes": len(theme_folders(roots)),
                                                  "packages": len({f.package for f in files}),
                                                  "concepts_before_render": len(keep)})


register_corpus_source("icons", build_icons, INSTALL)  # called as (out, progress=...)

