"""Tiny generated data in the real on-disk formats, and a tiny LM that does not collapse.

Imported by name from any test (pytest puts ``tests/`` on ``sys.path`` for its conftest). Every
writer takes a folder (a ``tmp_path``) and is deterministic. The pictures are the generated
coloured shapes of ``metamapper.data.synthetic`` (32x32 JPEG): class ``c`` is a colour and a
shape, so a benchmark's attribute questions have true answers.

* ``write_benchmark``: a Frozen benchmark file (``{name}_shots_{k}_ways_{N}_all_questions.json``)
  and its images, for all four benchmarks (the VQA ones with real questions and colour answers);
* ``write_coco``: COCO 2017 ``annotations/{captions,instances}_{split}2017.json`` + images;
* ``write_fashion``: the four Fashion-MNIST IDX files (a few 28x28 pictures per class);
* ``write_theme`` / ``draw_icon``: a freedesktop icon theme of drawn shapes, and
  ``write_corpus``: a rendered concept corpus built from three of them (the icons / emoji /
  glyphs sources all read this format);
* ``write_lively_lm``: the tiny backbones of ``make_tiny_backbones`` with the LM's weights drawn
  wider, so that its greedy answers depend on its input (the default initialisation answers
  "a a a a" to everything, which makes any comparison of answers vacuous).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from metamapper.data.synthetic import CLASSES, class_name, draw

MADE_UP = ("dax", "blicket", "shously", "slation", "perpo")
BENCHMARKS = ("open_ended_mi", "real_name_mi", "fast_vqa", "guided_vqa")


def _save(path: Path, c: int, i: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw(c, i).save(path, quality=95)
    return path.name


def benchmark_record(name: str, qid: str, classes: list[int], query_class: int, *, shots: int,
                     words: list[str]) -> dict[str, str]:
    """One task record of benchmark ``name`` (image names only; see ``write_benchmark``).

    ``words[w]`` names class ``classes[w]`` in the captions. The query is of class
    ``classes[query_class]``; its question and answer follow the benchmark:

    * ``open_ended_mi`` / ``real_name_mi``: "This is a" -> the class's word;
    * ``fast_vqa`` / ``guided_vqa``: "What colour is the {word}?" -> the colour of the shape.
    """
    ways = len(classes)
    stem = f"{name}_shots_{shots}_ways_{ways}_id_{qid}"
    word = words[query_class]
    colour = CLASSES[classes[query_class]][0]
    if name in ("fast_vqa", "guided_vqa"):
        question, answer = f"What colour is the {word}?", colour
    else:
        question, answer = "This is a", word
    rec = {"question_id": qid, "question": question, "question_image": f"{stem}_question.jpg",
           "answer": answer}
    i = 0
    for _ in range(shots):
        for w in range(ways):
            i += 1
            rec[f"caption_{i}"] = f"This is a {words[w]}"
            rec[f"image_{i}"] = f"{stem}_image_{i}.jpg"
    return rec


def write_benchmark(folder: Path, name: str, *, ways: int = 2, shots: int = 1, n_tasks: int = 10,
                    seed: int = 0) -> list[dict[str, str]]:
    """Write ``folder/{name}_shots_{shots}_ways_{ways}_all_questions.json`` and its images.

    Words: the made-up test words (``open_ended_mi``, ``fast_vqa``), the class names
    (``real_name_mi``, e.g. "red circle") or the shape names (``guided_vqa``, e.g. "the
    circle", its classes chosen with distinct shapes). Every image is a fresh picture of its
    class (no image is shared between tasks).

    Returns:
        The records as written.
    """
    if name not in BENCHMARKS:
        raise ValueError(name)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for t in range(n_tasks):
        while True:
            classes = [int(c) for c in rng.choice(len(CLASSES), size=ways, replace=False)]
            if name != "guided_vqa" or len({CLASSES[c][1] for c in classes}) == ways:
                break
        if name in ("open_ended_mi", "fast_vqa"):
            words = [MADE_UP[int(i)] for i in rng.choice(len(MADE_UP), size=ways, replace=False)]
        elif name == "real_name_mi":
            words = [class_name(c) for c in classes]
        else:
            words = [CLASSES[c][1] for c in classes]
        q = int(rng.integers(ways))
        rec = benchmark_record(name, f"{t:04d}", classes, q, shots=shots, words=words)
        for i in range(1, ways * shots + 1):
            _save(folder / rec[f"image_{i}"], classes[(i - 1) % ways], 1000 * t + i)
        _save(folder / rec["question_image"], classes[q], 1000 * t)
        records.append(rec)
    path = folder / f"{name}_shots_{shots}_ways_{ways}_all_questions.json"
    path.write_text(json.dumps(records, indent=1))
    return records


def write_coco(root: Path, *, splits: tuple[str, ...] = ("train", "val"), n_categories: int = 6,
               images_per_category: int = 4) -> dict[str, dict[str, set[int]]]:
    """A COCO 2017 layout: ``root/annotations/{captions,instances}_{split}2017.json`` and
    ``root/{split}2017/*.jpg``.

    Category ``c`` (ids 1..n) is synthetic class ``c - 1`` (name e.g. "red circle"); each image
    shows one category and has two captions naming its colour and shape. One more image per split
    carries the first two categories at once (a task with both may not use it).

    Returns:
        ``{split: {image key: category ids}}``.
    """
    truth: dict[str, dict[str, set[int]]] = {}
    categories = [{"id": c + 1, "name": class_name(c), "supercategory": "shape"}
                  for c in range(n_categories)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for s, split in enumerate(splits):
        images, captions, instances = [], [], []
        truth[split] = {}
        members = [[c] for c in range(n_categories) for _ in range(images_per_category)] + [[0, 1]]
        for n, cats in enumerate(members, start=1):
            file_name = f"{n:012d}.jpg"
            _save(root / f"{split}2017" / file_name, cats[0], 100 * s + n)
            images.append({"id": n, "file_name": file_name, "width": 32, "height": 32})
            truth[split][f"{split}2017/{file_name}"] = {c + 1 for c in cats}
            for c in cats:
                instances.append({"id": len(instances) + 1, "image_id": n, "category_id": c + 1,
                                  "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0})
            colour, shape = CLASSES[cats[0]]
            for text in (f"A {colour} {shape} on a dark background.",
                         f"A picture of a {shape} that is {colour}."):
                captions.append({"id": len(captions) + 1, "image_id": n, "caption": text})
        (root / "annotations" / f"captions_{split}2017.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": captions}))
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"info": {}, "images": images, "annotations": instances,
                        "categories": categories}))
    return truth


def write_fashion(root: Path, *, per_class: int = 6, seed: int = 0) -> Path:
    """The four Fashion-MNIST IDX files (uncompressed) with ``per_class`` 28x28 pictures of each
    of the 10 classes in each split: a class-dependent stripe pattern plus noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
        for n, c in enumerate(labels):
            images[n, :, int(c) * 2 : int(c) * 2 + 6] = 200
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            b"\x00\x00\x08\x03" + struct.pack(">III", len(labels), 28, 28) + images.tobytes())
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(
            b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + labels.tobytes())
    return root


def write_lively_lm(directory: Path, *, arch: str = "llama", std: float = 0.3,
                    seed: int = 0) -> dict[str, Path]:
    """``make_tiny_backbones(directory)`` with every weight matrix of the LM redrawn from
    ``N(0, std^2)`` (norms and biases kept); loads with ``build_language_model("hf", path=...)``.

    Returns:
        ``{"vision": ..., "lm": ...}`` as ``make_tiny_backbones``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from metamapper import make_tiny_backbones

    dirs = make_tiny_backbones(directory, seed=seed, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(dirs["lm"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.save_pretrained(dirs["lm"])
    return dirs


def draw_icon(theme: int, concept: int, size: int = 24) -> Image.Image:
    """A distinct RGBA drawing per (theme, concept): a shape in a colour on transparency."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    colour = (40 + 50 * theme, 200 - 15 * concept, 60 + 12 * concept, 255)
    draw = d.ellipse if theme % 2 else d.rectangle
    draw((2 + concept % 5, 2 + theme, size - 3, size - 3), fill=colour)
    return im


def write_theme(root: Path, theme: str, icons: dict[str, Image.Image | bytes]) -> Path:
    """An icon theme folder ``root/theme`` (48x48 and 16x16 ``apps`` icons; bytes: written as is)."""
    folder = root / theme
    (folder / "48x48" / "apps").mkdir(parents=True)
    (folder / "16x16" / "apps").mkdir(parents=True)
    (folder / "index.theme").write_text(f"[Icon Theme]\nName={theme}\n")
    for name, im in icons.items():
        path = folder / "48x48" / "apps" / f"{name}.png"
        if isinstance(im, bytes):
            path.write_bytes(im)
        else:
            im.save(path)
            im.resize((16, 16)).save(folder / "16x16" / "apps" / f"{name}.png")  # a smaller size
    return folder


CORPUS_CONCEPTS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def write_corpus(out: Path, themes_root: Path) -> Path:
    """A rendered corpus in ``out``: ten concepts drawn by three themes (written in
    ``themes_root``), split 6 / 2 / 2 into train / val / test concepts."""
    from metamapper.data.icons import build_icons

    for t, theme in enumerate(("Alpha", "Beta", "Gamma")):
        write_theme(themes_root, theme, {n: draw_icon(t, i) for i, n in enumerate(CORPUS_CONCEPTS)})
    build_icons(out, roots=[themes_root], packages={}, size=16)
    return out
