"""Bad inputs a long run meets: each ends in one typed error naming the file/key and the problem,
or is handled in a documented way (converted, truncated with a warning, skipped and logged).

Cases already tested elsewhere are listed in docs/RELIABILITY.md, not repeated here."""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import SMOKE

from metamapper.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    save_checkpoint,
)
from metamapper.config import ConfigError, load_config
from metamapper.data.benchmarks import BenchmarkFormatError, load_benchmark
from metamapper.data.images import FolderImageSource, ImageLoadError, load_image
from metamapper.models.mapper import AttentionMapper
from metamapper.models.metamapper import MetaMapper, Text
from metamapper.train.common import MetricsLog

# ------------------------------------------------------------------ images


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that claims ``width x height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
    return path


def test_corrupt_jpeg_scan_data(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    for i in range(400, len(data) - 2, 37):  # valid header, damaged entropy-coded data
        data[i] ^= 0xFF
    (tmp_path / "damaged.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageLoadError, match=r"damaged\.jpg.*(corrupt|truncated)"):
        load_image(tmp_path / "damaged.jpg")


def test_png_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # transparent black: shows as background
    rgba.putpixel((1, 0), (10, 200, 30, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    im = load_image(tmp_path / "a.png")
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (10, 200, 30)
    assert all(120 <= c <= 135 for c in im.getpixel((2, 0)))  # half black over white
    Image.new("LA", (2, 2), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 9, 9, 9])
    pal.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_is_read_as_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    im = load_image(tmp_path / "c.jpg")
    assert im.mode == "RGB"
    r, g, b = im.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    im = load_image(tmp_path / "g16.png")
    assert [im.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (1, 1, 1), (128, 128, 128),
                                                        (255, 255, 255)]


@pytest.mark.parametrize("side", [30_000, 10_000])  # > 2x the limit: PIL raises; 1x-2x: it warns
def test_huge_image_is_refused_before_decoding(tmp_path: Path, side: int) -> None:
    path = png_header_only(tmp_path / f"bomb{side}.png", side, side)
    assert path.stat().st_size < 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageLoadError, match=rf"bomb{side}\.png.*decompression-bomb"):
            load_image(path)


def test_folder_source_refuses_a_symlink_out_of_the_folder_and_odd_keys(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    src = FolderImageSource(root)
    with pytest.raises(ImageLoadError, match="link.png.*escapes"):
        src.load("link.png")
    for key in ("", "a\0b.png", "/etc/passwd"):
        with pytest.raises(ImageLoadError, match="not a relative path"):
            src.load(key)
    with pytest.raises(ImageLoadError, match="cannot be read"):
        load_image("nul\0byte.png")


# ------------------------------------------------------------------ benchmark JSON

FILE = "open_ended_mi_shots_1_ways_2_all_questions.json"


def record(folder: Path, qid: str = "0001", **changes) -> dict:
    rec = {"question_id": qid, "question": "This is a", "question_image": f"{qid}_q.jpg",
           "answer": "blicket", "caption_1": "This is a dax", "image_1": f"{qid}_1.jpg",
           "caption_2": "This is a blicket", "image_2": f"{qid}_2.jpg"}
    for key in ("question_image", "image_1", "image_2"):
        Image.new("RGB", (4, 4)).save(folder / rec[key])
    rec.update(changes)
    return rec


def load(folder: Path, records) -> list:
    text = records if isinstance(records, (str, bytes)) else json.dumps(records, ensure_ascii=False)
    (folder / FILE).write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_benchmark(folder, "open_ended_mi", 2, 1)


@pytest.mark.parametrize(("change", "message"), [
    ({"image_1": "../outside.jpg"}, "image_1 path '../outside.jpg' points outside"),
    ({"question_image": "/etc/passwd"}, "question_image path '/etc/passwd' points outside"),
    ({"question_image": ""}, "empty question_image"),
    ({"question_id": ["0001"]}, "no valid question_id"),
    ({"caption_1": 7}, "'caption_1' must be a string, got int"),
    ({"answer": None}, "'answer' must be a string, got NoneType"),
    ({"caption_01": "This is a dax"}, "unexpected i = 01"),
    ({"caption_" + "9" * 5000: "x"}, "unexpected i = 999999999999"),
])
def test_bad_records_name_the_file_question_and_problem(tmp_path: Path, change: dict,
                                                        message: str) -> None:
    (tmp_path / "outside.jpg").write_bytes(b"")
    with pytest.raises(BenchmarkFormatError) as e:
        load(tmp_path, [record(tmp_path, **change)])
    assert FILE in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def test_symlinked_image_out_of_the_benchmark_folder(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.jpg")
    rec = record(bench)
    (bench / rec["image_1"]).unlink()
    (bench / rec["image_1"]).symlink_to(tmp_path / "secret.jpg")
    with pytest.raises(BenchmarkFormatError, match="image_1 path '0001_1.jpg' points outside"):
        load(bench, [rec])


@pytest.mark.parametrize(("text", "message"), [
    ("[" * 100_000 + "]" * 100_000, "unreadable JSON (RecursionError"),
    ("[" + "1" * 5000 + "]", "unreadable JSON (ValueError"),
    (b"[\xff\xfe]", "not UTF-8"),
    ("", "malformed JSON at line 1 column 1"),
    ("[1]", "record #0 is a int"),
])
def test_unreadable_json(tmp_path: Path, text, message: str) -> None:
    with pytest.raises(BenchmarkFormatError, match="all_questions.json: ") as e:
        load(tmp_path, text)
    assert message in str(e.value)


def test_non_ascii_text_is_read_and_tokenized(tmp_path: Path, tiny_lm) -> None:
    rec = record(tmp_path, "ß-1", question="これは", answer="Zürich 🐕",
                 caption_1="これは café", caption_2="これは Zürich 🐕")
    (task,) = load(tmp_path, [rec])
    assert task.words == ("café", "Zürich 🐕") and task.queries[0].answer == "Zürich 🐕"
    for text in (rec["caption_1"], rec["caption_2"], "\u0301\u200b\ufeff"):
        assert tiny_lm.decode(tiny_lm.tokenize(text)) == text  # byte-level: nothing lost
    mapper = AttentionMapper(visual_dim=16, embed_dim=32, prefix_len=2, num_heads=4, dropout=0.0)
    model = MetaMapper(vision=None, lm=tiny_lm, mapper=mapper)
    loss = model.loss(torch.randn(1, 1, 16), model.pack([[0, Text(" " + rec["caption_2"],
                                                                  target=True)]]))
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ checkpoints

META = {"format": "metamapper-checkpoint-1", "lm_identity": "tiny-lm:llama:seed0",
        "visual_dim": 16, "embed_dim": 32}


def save(run: Path, step: int, keep_last: int = 3) -> Path:
    return save_checkpoint(run, step=step, weights={"mapper.w": torch.full((3,), float(step))},
                           meta=META, trainer_state={"step": step}, keep_last=keep_last)


def test_truncated_or_garbled_checkpoint_files(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    weights = path / "mapper.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="mapper.safetensors.*checksum"):
        read_checkpoint(path)
    for text in ("", "[1, 2]", '{"sha256": "x"}', "\udcff"):
        path = save(tmp_path, 2)
        (path / "meta.json").write_text(text, errors="surrogateescape")
        with pytest.raises(CheckpointError, match="meta.json.*corrupt"):
            read_checkpoint(path)
    with pytest.raises(CheckpointError, match="'.*no-such-step' does not exist"):
        read_checkpoint(tmp_path / "no-such-step")


def test_a_killed_save_leaves_nothing_that_is_read_and_is_cleaned_up(tmp_path: Path) -> None:
    save(tmp_path, 1)
    partial = tmp_path / "checkpoints" / ".tmp-killed"
    partial.mkdir()
    (partial / "mapper.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).step == 1
    save(tmp_path, 2)
    assert not partial.exists()


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path: Path) -> None:
    """Resumed from step 4 past a corrupt step 6, the new step 5 must survive keep_last=1."""
    for s in (4, 6):
        save(tmp_path, s, keep_last=0)
    (tmp_path / "checkpoints" / "step-0000006" / "mapper.safetensors").write_bytes(b"x")
    with pytest.warns(UserWarning, match="step-0000006"):
        assert latest_checkpoint(tmp_path, trainer=True).step == 4
    save(tmp_path, 5, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000005"]
    save(tmp_path, 6, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-0000005", "step-0000006"]
    assert latest_checkpoint(tmp_path).step == 6


def test_resumed_metrics_drop_later_records_and_a_torn_line(tmp_path: Path) -> None:
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    log = MetricsLog(tmp_path, resume_step=2)
    log.write(step=3, loss=0.5)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 1.0), (2, 1.0), (3, 0.5)]


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(("override", "key"), [
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.keep_last=-1", "train.keep_last"),
    ("train.max_bad_updates=0", "train.max_bad_updates"),
    ("train.val_every=-5", "train.val_every"),
    ("train.clip=0", "train.clip"),
    ("train.max_minutes=-1", "train.max_minutes"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("mapper.dropout=1.0", "mapper.dropout"),
    ("train.lr=.inf", "train.lr"),
])
def test_settings_a_long_run_relies_on_are_range_checked(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(SMOKE, [override])
