"""The rendered concept corpora (icons, emoji, glyphs) and the mixture of task sources, on tiny
fake inputs: fake icon themes written here, DejaVu fonts with their character maps cut down."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from tiny_data import draw_icon as _icon
from tiny_data import write_corpus, write_theme

from metamapper import cli
from metamapper.config import Config, ConfigError, DataConfig, config_from_dict
from metamapper.data.corpora import has_digit, load_corpus
from metamapper.data.emoji import build_emoji, list_emoji
from metamapper.data.fonts import font_faces, render_char
from metamapper.data.glyphs import build_glyphs, spread
from metamapper.data.icons import build_icons, concept_name, concept_of, render_icon, scan_themes
from metamapper.data.mixture import draw_sources
from metamapper.data.sources import evaluation_tasks, training_tasks

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
THEMES = ("Alpha", "Beta", "Gamma", "Delta")
CONCEPTS = ("printer", "camera-photo", "user-trash", "weather-storm", "edit-copy")


@pytest.fixture
def themes(tmp_path: Path) -> Path:
    """Four fake themes: five concepts drawn by 3-4 of them, plus names the corpus must drop."""
    root = tmp_path / "icons"
    for t, theme in enumerate(THEMES):
        icons: dict[str, Image.Image | bytes] = {
            c: _icon(t, i) for i, c in enumerate(CONCEPTS) if not (t == 3 and c != "printer")}
        icons.update({"printer-symbolic": _icon(t, 9), "battery-level-50": _icon(t, 8),
                      "org.gnome.Calculator": _icon(t, 7), "go-next-rtl": _icon(t, 6),
                      "gtk-print": _icon(t, 5)})
        if t == 2:  # Gamma copies Beta's camera: two themes, one drawing
            icons["camera-photo"] = _icon(1, 1)
            icons["edit-copy"] = b"not a png"  # a bad file: skipped, never fatal
        if t < 2:
            icons["lonely"] = _icon(t, 4)  # drawn by two themes only
        write_theme(root, theme, icons)
    # Epsilon: Alpha's printer with one pixel changed (a near-duplicate), a white-on-transparent
    # trash can (drawn for dark panels: invisible on white)
    near = _icon(0, 0)
    near.putpixel((12, 12), (0, 0, 0, 255))
    white = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    ImageDraw.Draw(white).rectangle((4, 4, 20, 20), fill=(250, 250, 250, 255))
    write_theme(root, "Epsilon", {"printer": near, "user-trash": white})
    (root / "hicolor").mkdir()  # the fallback theme: never a style
    (root / "hicolor" / "index.theme").write_text("[Icon Theme]\n")
    # a theme inside an openclipart folder, and a link into one: never read
    clip = tmp_path / "openclipart" / "share"
    write_theme(clip, "Clip", {c: _icon(5, i) for i, c in enumerate(CONCEPTS)})
    (root / "Alpha" / "48x48" / "apps" / "folder.png").symlink_to(clip / "Clip" / "48x48" / "apps" / "printer.png")
    return root


@pytest.fixture
def icons(themes: Path, tmp_path: Path) -> Path:
    out = tmp_path / "corpus"
    with pytest.warns(UserWarning, match="edit-copy"):
        build_icons(out, roots=[themes, themes.parent / "openclipart" / "share"], packages={}, size=32)
    return out


@pytest.fixture
def many(tmp_path: Path) -> Path:
    """An icon corpus of ten concepts drawn by three themes each: a 6 / 2 / 2 split."""
    return write_corpus(tmp_path / "many-corpus", tmp_path / "many")


def test_icon_names_become_concepts_and_captions() -> None:
    assert concept_of("Camera-Photo") == "camera-photo"
    for dropped in ("go-next-symbolic", "battery-level-50", "org.gnome.Nautilus", "go-next-rtl",
                    "gtk-print", "stock_print", "chrome-abcdefghijklmnopqrstuvwxyz-default"):
        assert concept_of(dropped) is None, dropped
    assert concept_name("camera-photo") == "camera photo"
    assert concept_name("application-x-executable") == "application executable"


@pytest.mark.skipif(shutil.which("rsvg-convert") is None, reason="needs librsvg2-bin")
def test_svg_icons_render_on_white_at_the_corpus_size(tmp_path: Path) -> None:
    svg = tmp_path / "printer.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="16" height="8">'
                   '<rect x="0" y="0" width="16" height="8" fill="#ff0000"/></svg>')
    im = render_icon(str(svg), 32)
    assert im.size == (32, 32) and im.mode == "RGB"
    assert im.getpixel((16, 16)) == (255, 0, 0) and im.getpixel((16, 2)) == (255, 255, 255)  # letterboxed
    (tmp_path / "bad.svg").write_text("<svg")
    with pytest.raises(ValueError, match="rsvg-convert failed"):
        render_icon(str(tmp_path / "bad.svg"), 32)


def test_the_scan_takes_one_drawing_per_theme_at_its_largest_size(themes: Path) -> None:
    files = scan_themes([themes], packages={})
    assert {f.concept for f in files} == {*CONCEPTS, "lonely"}  # no symbolic/digit/id/rtl/legacy/link
    printers = [f for f in files if f.concept == "printer"]
    assert [f.package for f in printers] == sorted([*THEMES, "Epsilon"])
    assert all("/48x48/" in f.path for f in printers)
    # a package with several themes gives one drawing: its main (shortest-named) theme's
    by_package = {str(themes / t): "pkg" for t in ("Alpha", "Beta")}
    merged = [f for f in scan_themes([themes], packages=by_package) if f.concept == "printer"]
    assert sorted((f.package, f.theme) for f in merged) == [
        ("Delta", "Delta"), ("Epsilon", "Epsilon"), ("Gamma", "Gamma"), ("pkg", "Beta")]


def test_the_icon_corpus_keeps_concepts_of_three_distinct_drawings(icons: Path) -> None:
    corpus = load_corpus(icons)
    # camera-photo: Gamma's copy of Beta's drawing counts once (2 left); edit-copy: Gamma's file
    # is broken (2 left); lonely: two themes
    assert sorted(corpus.classes) == ["printer", "user-trash", "weather-storm"]
    assert corpus.classes["weather-storm"].name == "weather storm"
    printer = corpus.classes["printer"].instances
    assert [i.package for i in printer] == sorted(THEMES)
    assert all("openclipart" not in i.path for c in corpus.classes.values() for i in c.instances)
    assert [Path(p).name for p, _ in corpus.skipped] == ["edit-copy.png"]
    assert corpus.stats["near_duplicates"] == 1 and corpus.stats["faint"] == 1  # Epsilon's two
    for i in printer:
        im = Image.open(icons / i.file)
        assert im.size == (32, 32) and im.mode == "RGB"
        assert im.getpixel((0, 0)) == (255, 255, 255)  # transparency over white
    record = json.loads((icons / "index.json").read_text())
    assert record["classes"]["printer"]["instances"][0]["package"] == "Alpha"
    assert sorted(sum(corpus.split.values(), [])) == sorted(corpus.classes)  # every concept, once
    assert len({c for p in corpus.split.values() for c in p}) == len(corpus.classes)


def test_a_built_corpus_is_reused_not_rebuilt(many: Path) -> None:
    index = many / "index.json"
    before = index.stat().st_mtime_ns
    train, _ = training_tasks(DataConfig(source="icons", root=str(many)), n_tasks=5, seed=0)
    assert index.stat().st_mtime_ns == before
    assert train.images.identity == f"corpus:icons:{load_corpus(many).digest}"
    assert train.images.load(train.tasks[0].support[0].image).size == (16, 16)


def test_the_corpus_folder_is_never_an_input_folder(themes: Path) -> None:
    with pytest.raises(ValueError, match="not a corpus folder of icons"):  # never renders into themes
        training_tasks(DataConfig(source="icons", root=str(themes)), n_tasks=1, seed=0)
    assert not (themes / "images").exists()


def test_tasks_use_each_splits_concepts_only(many: Path) -> None:
    out = many
    corpus = load_corpus(many)
    assert {p: len(v) for p, v in corpus.split.items()} == {"train": 6, "val": 2, "test": 2}
    assert not set(corpus.split["train"]) & set(corpus.split["test"])
    assert not set(corpus.split["val"]) & set(corpus.split["train"] + corpus.split["test"])

    def concepts(ts: object) -> set[str]:
        return {k.split("/")[1] for t in ts.tasks for k in t.image_keys()}  # type: ignore[attr-defined]

    train, val = training_tasks(DataConfig(source="icons", root=str(out)), n_tasks=40, seed=0)
    test = evaluation_tasks("icons-real-name", data=str(out), ways=2, shots=1, n_tasks=20)
    held = evaluation_tasks("icons-open-ended", data=str(out), ways=2, shots=1, n_tasks=20, split="val")
    assert concepts(train) == set(corpus.split["train"])
    assert concepts(val) == concepts(held) == set(corpus.split["val"])
    assert concepts(test) == set(corpus.split["test"])
    assert {q.answer for t in test.tasks for q in t.queries} <= set(corpus.split["test"])  # real names
    assert {q.answer for t in held.tasks for q in t.queries} <= {"dax", "blicket", "shously", "slation", "perpo"}
    with pytest.raises(ValueError, match="3-way tasks need 3"):  # 2 test concepts: no 3-way task
        evaluation_tasks("icons-real-name", data=str(out), ways=3, shots=1, n_tasks=1)


def test_no_source_keeps_a_digit() -> None:
    for text in ("0", "7", "５", "⑤", "²", "x9", "0\ufe0f\u20e3"):
        assert has_digit(text), text
    for text in ("printer", "dax", "ж", "क", "Ⅻ"):  # a Roman numeral is a letter-like symbol
        assert not has_digit(text), text


def test_emoji_list_drops_sequences_and_digit_pictures(tmp_path: Path) -> None:
    test_file = tmp_path / "emoji-test.txt"
    test_file.write_text(
        "# group: Travel & Places\n# subgroup: sky & weather\n"
        "2602 FE0F ; fully-qualified # ☂️ E0.7 umbrella\n"
        "2602 ; unqualified # ☂ E0.7 umbrella\n"
        "2600 FE0F ; fully-qualified # ☀️ E0.7 sun\n"
        "# subgroup: keycap\n"
        "0030 FE0F 20E3 ; fully-qualified # 0️⃣ E0.6 keycap: 0\n"
        "1F522 ; fully-qualified # 🔢 E0.6 input numbers\n"
        "1F4AF ; fully-qualified # 💯 E0.6 hundred points\n"
        "1F947 ; fully-qualified # 🥇 E3.0 1st place medal\n"
        "1F468 200D 1F373 ; fully-qualified # 👨‍🍳 E4.0 man cook\n", encoding="utf-8")
    emoji = list_emoji(test_file)
    assert [(e.char, e.name) for e in emoji] == [("☂", "umbrella"), ("☀", "sun")]
    assert emoji[0].group == "Travel & Places / sky & weather"


@pytest.fixture(scope="module")
def dejavu() -> list:
    if not DEJAVU.is_dir():
        pytest.skip("DejaVu fonts are not installed (apt-get install fonts-dejavu-core)")
    faces = font_faces([DEJAVU], packages={})
    if len(faces) < 3:
        pytest.skip("fewer than three DejaVu families installed")
    return faces


def test_fonts_are_one_regular_face_per_family(dejavu: list) -> None:
    families = [f.family for f in dejavu]
    assert len(families) == len(set(families)) and "DejaVu Sans" in families
    sans = next(f for f in dejavu if f.family == "DejaVu Sans")
    assert sans.style in ("Book", "Regular") and ord("a") in sans.chars
    im = render_char(sans, "a", 32)
    assert im.size == (32, 32) and np.asarray(im).min() < 100  # ink, centred on white


def test_glyphs_are_letters_drawn_by_several_fonts(dejavu: list, tmp_path: Path) -> None:
    chars = frozenset(map(ord, "abcAB0159²ⅫжЖ"))
    faces = [dataclasses.replace(f, chars=f.chars & chars) for f in dejavu]
    corpus = build_glyphs(tmp_path / "glyphs", faces=faces, min_per_script=2, max_fonts=3, size=24)
    names = {c.name for c in corpus.classes.values()}
    assert {"latin small letter a", "latin capital letter b", "cyrillic small letter zhe"} <= names
    assert not any(has_digit(c.info["char"]) or has_digit(c.name) for c in corpus.classes.values())
    assert all(3 == len(c.instances) for c in corpus.classes.values())  # max_fonts
    assert all(c.info["char"] in "abcABжЖ" for c in corpus.classes.values())


def test_spread_takes_fonts_from_every_package_in_turn(dejavu: list) -> None:
    faces = [dataclasses.replace(f, package=f"p{i % 2}") for i, f in enumerate(dejavu[:4])]
    assert [f.package for f in spread(faces, 3)] == ["p0", "p1", "p0"]


def test_emoji_corpus_from_text_fonts(dejavu: list, tmp_path: Path) -> None:
    test_file = tmp_path / "emoji-test.txt"
    test_file.write_text("2602 FE0F ; fully-qualified # ☂️ E0.7 umbrella\n"
                         "2600 FE0F ; fully-qualified # ☀️ E0.7 sun\n"
                         "2601 FE0F ; fully-qualified # ☁️ E0.6 cloud\n", encoding="utf-8")
    if sum(0x2602 in f.chars for f in dejavu) < 2:
        pytest.skip("DejaVu draws no umbrella here")
    corpus = build_emoji(tmp_path / "emoji", emoji_test=test_file, faces=dejavu, min_fonts=2, size=24)
    assert corpus.classes["u+2602"].name == "umbrella"
    assert corpus.classes["u+2602"].info["char"] == "☂"


# --------------------------------------------------------------------------- mixtures


def test_mixture_config_is_typed_and_checked() -> None:
    cfg = config_from_dict({}, ["data.source=mixture", "data.mixture={icons: 3, synthetic: 1}",
                                "data.mixture_roots.icons=/data/icons"])
    assert cfg.data.mixture == {"icons": 3.0, "synthetic": 1.0}
    assert cfg.data.mixture_roots == {"icons": "/data/icons"}
    # the default's mixture belongs to source=mixture: another source has none unless it is set
    assert config_from_dict({}, ["data.source=icons"]).data.mixture == {}
    assert config_from_dict({}, ["data.source=mixture"]).data.mixture == Config().data.mixture
    for bad in (["data.source=mixture", "data.mixture={}"], ["data.source=icons", "data.mixture={icons: 1}"],
                ["data.source=mixture", "data.mixture={icons: 0}"],
                ["data.source=mixture", "data.mixture={icons: many}"],
                ["data.source=mixture", "data.mixture={icons: 1}", "data.mixture_roots.coco=/x"]):
        with pytest.raises(ConfigError):
            config_from_dict({}, bad)


def test_draw_sources_follows_the_shares() -> None:
    order = draw_sources({"icons": 3.0, "synthetic": 1.0}, 4000, np.random.default_rng(0))
    assert abs(order.count("icons") / 4000 - 0.75) < 0.03
    assert order == draw_sources({"synthetic": 1.0, "icons": 3.0}, 4000, np.random.default_rng(0))


def test_mixture_tasks_come_from_each_source_by_share(many: Path) -> None:
    icons = many
    d = DataConfig(source="mixture", mixture={"icons": 1.0, "synthetic": 3.0},
                   mixture_roots={"icons": str(icons)}, queries_per_class=1)
    train, val = training_tasks(d, n_tasks=400, seed=0)
    counts = Counter(t.task_id.split(":")[0] for t in train.tasks)
    assert len(train.tasks) == 400 and abs(counts["icons"] / 400 - 0.25) < 0.06
    again, _ = training_tasks(d, n_tasks=400, seed=0)
    assert [t.task_id for t in again.tasks] == [t.task_id for t in train.tasks]  # seeded
    # every image resolves through the one image source, and icons tasks use icons concepts
    corpus = load_corpus(icons)
    for ts in (train, val):
        for t in ts.tasks[:20]:
            for k in t.image_keys():
                assert ts.images.load(k).mode == "RGB"
    val_icons = {k.split("/")[1] for t in val.tasks for k in t.image_keys() if k.startswith("icons:")}
    assert val_icons <= set(corpus.split["val"])
    assert {t.task_id.split(":")[0] for t in val.tasks} == {"icons", "synthetic"}


# --------------------------------------------------------------------------- CLI


def test_cli_lists_the_sources_and_builds_nothing(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path / "cache"))
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "icons: not built yet" in out and "--dataset icons-open-ended, icons-real-name" in out
    assert "fashion-mnist: 10 classes" in out
    assert not (tmp_path / "cache" / "corpora").exists()


def test_cli_corpus_reports_a_built_corpus(icons: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["corpus", "icons", "--root", str(icons)]) == 0
    out = capsys.readouterr().out
    assert "icons: 3 concepts (1 meta-training, 1 validation, 1 test), 10 images" in out
