"""Fuzzing the benchmark-JSON and image readers (hypothesis, derandomized so the run is
repeatable): whatever the input, the only failures are our own typed errors."""

from __future__ import annotations

import io
import json
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



@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark folder with the images the fuzzed records may name (and a link out of it)."""
    folder = tmp_path_factory.mktemp("fuzz-bench")
    (folder / "images").mkdir()
    for name in ("q.jpg", "1.jpg", "2.jpg", "images/3.jpg"):
        Image.new("RGB", (4, 4), (200, 10, 10)).save(folder / name)
    (folder / "link.jpg").symlink_to("/etc/hostname")
    return folder


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
@given(doc=documents())
def test_benchmark_reader_raises_only_benchmark_format_error(bench_folder: Path, doc: bytes) -> None:
    (bench_folder / FILE).write_bytes(doc)
    try:
        tasks = load_benchmark(bench_folder, "open_ended_mi", 2, 1)
    except BenchmarkFormatError as e:
        assert FILE in str(e)
        return
    for task in tasks:  # what loads is well-formed
        assert len(task.support) == 2 and len(task.queries) == 1 and len(task.words) == 2
        assert all((bench_folder / ex.image).is_file() for ex in task.support)
        assert all(ex.caption.strip() for ex in task.support)


def test_the_json_fuzzer_reaches_valid_documents(bench_folder: Path) -> None:
    """Guards the fuzzer itself: the unmutated record loads."""
    (bench_folder / FILE).write_bytes(json.dumps([VALID]).encode())
    assert len(load_benchmark(bench_folder, "open_ended_mi", 2, 1)) == 1


# ------------------------------------------------------------------ images


def _source(mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).convert(mode)


def _encode(mode: str, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    _source(mode).save(buf, fmt, **kw)
    return buf.getvalue()


# (mode, format, save options), all 10x12
FORMATS = [("RGB", "PNG", {}), ("RGBA", "PNG", {}), ("P", "PNG", {}), ("I;16", "PNG", {}),
           ("RGB", "JPEG", {}), ("CMYK", "JPEG", {}), ("L", "JPEG", {"progressive": True}),
           ("P", "GIF", {}), ("RGB", "BMP", {}), ("RGB", "TIFF", {}),
           ("RGB", "TIFF", {"compression": "tiff_lzw"}), ("RGBA", "WEBP", {}), ("RGB", "ICO", {})]
SEEDS = [_encode(mode, fmt, **kw) for mode, fmt, kw in FORMATS]


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


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-img") / "fuzzed.img"


@FUZZ
@given(data=image_bytes() | st.binary(max_size=64))
def test_image_reader_raises_only_image_load_error(image_file: Path, data: bytes) -> None:
    image_file.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about odd files it still reads
            im = load_image(image_file)
    except ImageLoadError as e:
        assert "fuzzed.img" in str(e)
        return
    assert im.mode == "RGB" and im.width > 0 and im.height > 0
    im.tobytes()  # fully decoded


@pytest.mark.parametrize(("seed", "fmt"), [(i, f"{m}-{f}") for i, (m, f, _) in enumerate(FORMATS)])
def test_the_image_fuzzer_seeds_are_readable(seed: int, fmt: str, tmp_path: Path) -> None:
    """Each seed loads at its size; the lossless RGB ones (PNG, BMP, TIFF, ICO) pixel for pixel."""
    (tmp_path / "x").write_bytes(SEEDS[seed])
    im = load_image(tmp_path / "x")
    assert im.mode == "RGB" and im.size == (10, 12)
    mode, file_format, _ = FORMATS[seed]
    if mode == "RGB" and file_format != "JPEG":
        assert np.array_equal(np.asarray(im), np.asarray(_source("RGB")))
