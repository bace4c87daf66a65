"""Loading images safely, and an image source over a folder of files.

``load_image`` returns a fully decoded RGB image with its EXIF orientation applied, and turns every
failure (missing, empty, corrupt or truncated file, decompression bomb) into an ``ImageLoadError``
whose message names the file and the problem. PIL's decompression-bomb limit stays on, and an
image over ``Image.MAX_IMAGE_PIXELS`` is refused (PIL itself only warns up to twice the limit).
Transparent images are composited on white (the transparent pixels' hidden colours are often
black or garbage); 16-bit greyscale is scaled to 8 bits (PIL's own conversion clips it to 255).

Example::

    from metamapper.data.images import FolderImageSource, load_image
    image = load_image("photos/cat.jpg")                  # PIL.Image, mode "RGB"
    source = FolderImageSource("photos")
    source.load("cat.jpg").size, source.identity          # ((w, h), 'folder:/abs/photos')
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageLoadError(ValueError):
    """An image that cannot be loaded; the message names the file or key and the problem."""


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (and 32-bit int) greyscale


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB without silent damage: alpha over white, 16-bit greyscale scaled, not clipped."""
    if im.mode in _WIDE_GREY:
        # read as 16-bit: 0..65535 -> 0..255 (PIL's convert("RGB") would clip at 255)
        grey = np.asarray(im, dtype=np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")  # (h, w) uint8: "L"
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(source: str | os.PathLike[str] | bytes, *, name: str | None = None,
               formats: Sequence[str] | None = None, max_pixels: int | None = None) -> Image.Image:
    """Load an image file (or the bytes of one) as RGB, EXIF orientation applied, fully decoded.

    The one decoder of the project: the CLI reads files with it, the web demo its uploads, so an
    image gives the same pixels either way.

    Args:
        source: the image file, or its bytes (an upload).
        name: what to call it in error messages (default: ``image file 'PATH'``; for bytes
            ``image``), e.g. ``"support image 2 (cat.png)"``.
        formats: PIL formats allowed (default: every format PIL reads).
        max_pixels: refuse an image with more pixels, from its header, before decoding
            (default: PIL's decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``).

    Returns:
        A ``PIL.Image.Image`` in mode ``"RGB"`` whose pixels are already read (the file is
        closed).

    Transparent pixels are composited on white; 16-bit greyscale is scaled to 8 bits; CMYK,
    palette and other modes go through PIL's conversion.

    Raises:
        ImageLoadError: the file is missing, empty, not an image (of ``formats``), corrupt or
            truncated, or larger than ``max_pixels``. Any error the decoder raises on a
            malformed file becomes an ``ImageLoadError`` too.

    Example::

        >>> load_image("cat.jpg").mode
        'RGB'
        >>> load_image(Path("cat.png").read_bytes(), name="upload cat.png").mode
        'RGB'
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = name or "image"
        if not data:
            raise ImageLoadError(f"{what} is empty (0 bytes)")
        fp: Path | io.BytesIO = io.BytesIO(data)
    else:
        p = Path(source)
        what = name or f"image file {str(p)!r}"
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise ImageLoadError(f"{what} does not exist") from None
        except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
            raise ImageLoadError(f"{what} cannot be read: {e}") from None
        if not p.is_file():
            raise ImageLoadError(f"{what} is not a file")
        if size == 0:
            raise ImageLoadError(f"{what} is empty (0 bytes)")
        fp = p
    try:
        with Image.open(fp, formats=None if formats is None else tuple(formats)) as im:
            limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
            if limit and im.width * im.height > limit:  # before decoding a single pixel
                if max_pixels is None:
                    raise ImageLoadError(
                        f"{what} has {im.width}x{im.height} pixels, over the decompression-bomb "
                        f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)")
                raise ImageLoadError(f"{what} is {im.width}x{im.height} pixels; the limit is "
                                     f"{limit / 1e6:g} megapixels per image")
            im.load()  # decode now: truncation and corruption surface here, not later
            out = _to_rgb(ImageOps.exif_transpose(im))
            out.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{what} exceeds PIL's decompression-bomb limit: {e}") from None
    except UnidentifiedImageError:
        if formats:
            raise ImageLoadError(f"{what} is not an image (allowed: {', '.join(formats)})") from None
        raise ImageLoadError(f"{what} is not a readable image (corrupt or unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(f"{what} is corrupt or truncated: {e}") from None
    except MemoryError:
        raise ImageLoadError(f"{what} is too large to decode in memory") from None
    except Exception as e:  # decoders raise odd types on crafted files (struct.error, ...)
        raise ImageLoadError(f"{what} is corrupt ({type(e).__name__}: {e})") from None
    return out


class FolderImageSource:
    """An ``ImageSource`` over a folder: keys are file paths relative to ``root`` (with ``/``).

    A key that escapes the folder (``../x.jpg``, an absolute path, a symlink pointing outside)
    is refused with an ``ImageLoadError`` naming it.

    Args:
        root: the folder.
        extensions: file name endings that ``keys()`` lists (case-insensitive).

    Example::

        >>> src = FolderImageSource("data/open_ended_mi")
        >>> src.load("open_ended_mi_shots_1_ways_2_id_0001_question.jpg").mode
        'RGB'
    """

    def __init__(
        self, root: str | os.PathLike[str], *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    ) -> None:
        self.root = Path(root).resolve()
        self.extensions = tuple(e.lower() for e in extensions)
        self.identity = f"folder:{self.root}"

    def __repr__(self) -> str:
        return f"FolderImageSource({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file of ``key``; raises ``ImageLoadError`` if the key escapes the folder."""
        if not isinstance(key, str) or not key or "\0" in key or os.path.isabs(key):
            raise ImageLoadError(f"image key {key!r} is not a relative path inside {self.root}")
        try:
            p = (self.root / key).resolve()
        except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a bad name
            raise ImageLoadError(f"image key {key!r} cannot be resolved: {e}") from None
        if not p.is_relative_to(self.root):
            raise ImageLoadError(f"image key {key!r} escapes the image folder {self.root}")
        return p

    def load(self, key: str) -> Image.Image:
        """The RGB image of ``key`` (see ``load_image``)."""
        return load_image(self.path(key))

    def keys(self) -> list[str]:
        """All image files under the folder (recursively), as sorted relative keys."""
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if f.lower().endswith(self.extensions):
                    out.append(Path(dirpath, f).relative_to(self.root).as_posix())
        return sorted(out)
