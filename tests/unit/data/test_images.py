import io

import pytest
from PIL import Image

from metamapper.data.images import FolderImageSource, ImageLoadError, load_image


def test_load_jpeg_and_png_as_rgb(tmp_path, write_image):
    jpg = write_image(tmp_path / "a.jpg", (0, 255, 0))
    png = tmp_path / "b.png"
    Image.new("L", (5, 7), 128).save(png)
    a, b = load_image(jpg), load_image(png)
    assert a.mode == b.mode == "RGB"
    assert a.size == (8, 6) and b.size == (5, 7)
    assert b.getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (10, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (4, 10)


@pytest.mark.parametrize("problem", ["missing", "empty", "corrupt", "truncated"])
def test_bad_files_raise_image_load_error_naming_the_file(tmp_path, problem):
    path = tmp_path / f"{problem}.jpg"
    if problem == "empty":
        path.write_bytes(b"")
    elif problem == "corrupt":
        path.write_bytes(b"this is not an image at all")
    elif problem == "truncated":
        buf = io.BytesIO()
        Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=f"{problem}.jpg"):
        load_image(path)


def test_decompression_bomb_limit_stays_on(tmp_path, monkeypatch, write_image):
    write_image(tmp_path / "big.png", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2x the limit: PIL raises
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(tmp_path / "big.png")


def test_folder_source_keys_load_and_escape(tmp_path, write_image):
    root = tmp_path / "imgs"
    write_image(root / "a.jpg")
    write_image(root / "sub" / "b.png")
    (root / "notes.txt").write_text("x")
    write_image(tmp_path / "outside.jpg")
    src = FolderImageSource(root)
    assert src.keys() == ["a.jpg", "sub/b.png"]
    assert src.identity == f"folder:{root.resolve()}"
    assert src.load("sub/b.png").mode == "RGB"
    for key in ("../outside.jpg", str(tmp_path / "outside.jpg"), "sub/../../outside.jpg"):
        with pytest.raises(ImageLoadError, match="outside.jpg"):
            src.load(key)
    with pytest.raises(ImageLoadError, match="nope.jpg"):
        src.load("nope.jpg")
