"""Fuzzing the benchmark-JSON and image readers (hypothesis, derandomized so the run is
repeatable): whatever the input, the only failures are our own typed errors."""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from metamapper.data.benchmarks import BenchmarkFormatError, load_benchmark
from metamapper.data.images import ImageLoadError, load_image

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILE = "open_ended_mi_shots_1_ways_2_all_questions.json"

# ------------------------------------------------------------------ benchmark JSON

_folder = Path(tempfile.mkdtemp(prefix="mm-fuzz-bench-"))
(_folder / "images").mkdir()
for _name in ("q.jpg", "1.jpg", "2.jpg", "images/3.jpg"):
    Image.new("RGB", (4, 4), (200, 10, 10)).save(_folder / _name)
(_folder / "link.jpg").symlink_to("/etc/hostname")

VALID = {"question_id": "0001", "question": "This is a", "question_image": "q.jpg",
         "answer": "blicket", "caption_1": "This is a dax", "image_1": "1.jpg",
         "caption_2": "This is a blicket", "image_2": "2.jpg"}
KEYS = st.sampled_from([*VALID, "caption_3", "image_3", "caption_01", "image_0", "caption_",
                        "caption_" + "9" * 30]) | st.text(max_size=10)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["q.jpg", "3.jpg", "images/3.jpg", "../q.jpg", "/etc/passwd", "", " ",
                       "link.jpg", "images", ".", "q.jpg\0", "This is a dax", "  dax  "]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)


STRINGS = st.sampled_from(["q.jpg", "3.jpg", "images/3.jpg", "../q.jpg", "/etc/passwd", "", " ",
                           "link.jpg", "images", ".", "q.jpg\0", "This is a dax", "This is a",
                           "  dax  ", "dax", "This is a blicket.", "\u00e9\u0301 \U0001f415"]) \
    | st.text(max_size=12)


@st.composite
def records(draw) -> object:
    """Mostly the valid record with a few keys dropped or given other (mostly string) values, so
    that the deeper checks are reached; sometimes any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)
    rec = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=1)):
        rec.pop(key, None)
    n = draw(st.integers(0, 3))
    for key in draw(st.lists(KEYS, min_size=n, max_size=n)):
        rec[key] = draw(STRINGS if draw(st.integers(0, 4)) else VALUES)
    return rec


@st.composite
def documents(draw) -> bytes:
    """A benchmark file: mostly a list of such records, else one record, text or bytes."""
    kind = draw(st.integers(0, 9))
    if kind < 7:
        return json.dumps(draw(st.lists(records(), min_size=1, max_size=3))).encode()
    if kind == 7:
        return json.dumps(draw(records())).encode()
    return draw(st.binary(max_size=60) if kind == 8 else st.text(max_size=60).map(str.encode))


@FUZZ
@given(documents())
def test_benchmark_reader_raises_only_benchmark_format_error(doc: bytes) -> None:
    (_folder / FILE).write_bytes(doc)
    try:
        tasks = load_benchmark(_folder, "open_ended_mi", 2, 1)
    except BenchmarkFormatError as e:
        assert FILE in str(e)
        return
    for task in tasks:  # what loads is well-formed
        assert len(task.support) == 2 and len(task.queries) == 1 and len(task.words) == 2
        assert all((_folder / ex.image).is_file() for ex in task.support)
        assert all(ex.caption.strip() for ex in task.support)


def test_the_json_fuzzer_reaches_valid_documents() -> None:
    """Guards the fuzzer itself: the unmutated record loads."""
    (_folder / FILE).write_bytes(json.dumps([VALID]).encode())
    assert len(load_benchmark(_folder, "open_ended_mi", 2, 1)) == 1


# ------------------------------------------------------------------ images


def _encode(mode: str, fmt: str, **kw) -> bytes:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    im = Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)) if mode == "I;16" \
        else rgb.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


SEEDS = [_encode("RGB", "PNG"), _encode("RGBA", "PNG"), _encode("P", "PNG"), _encode("I;16", "PNG"),
         _encode("RGB", "JPEG"), _encode("CMYK", "JPEG"), _encode("L", "JPEG", progressive=True),
         _encode("P", "GIF"), _encode("RGB", "BMP"), _encode("RGB", "TIFF"),
         _encode("RGB", "TIFF", compression="tiff_lzw"), _encode("RGBA", "WEBP"),
         _encode("RGB", "ICO")]


@st.composite
def image_bytes(draw) -> bytes:
    """A small valid file of some format with bytes flipped, overwritten, cut or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "cut"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[pos:]
            if not data:
                break
    return bytes(data)


_image_file = Path(tempfile.mkdtemp(prefix="mm-fuzz-img-")) / "fuzzed.img"


@FUZZ
@given(image_bytes() | st.binary(max_size=64))
def test_image_reader_raises_only_image_load_error(data: bytes) -> None:
    _image_file.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd files it still reads
            im = load_image(_image_file)
    except ImageLoadError as e:
        assert "fuzzed.img" in str(e)
        return
    assert im.mode == "RGB" and im.width > 0 and im.height > 0
    im.tobytes()  # fully decoded


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_the_image_fuzzer_seeds_are_readable(seed: int, tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(SEEDS[seed])
    assert load_image(tmp_path / "x").size == (10, 12) or seed == len(SEEDS) - 1  # ICO: resized
