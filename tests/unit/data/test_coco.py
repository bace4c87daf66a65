import json

import numpy as np
import pytest

from metamapper.data.coco import CocoCaptionPairs, CocoFormatError, CocoTasks, build_coco_tasks
from metamapper.data.words import TEST_WORDS

CATS = {1: "person", 2: "dog", 3: "cat", 4: "car"}


def write_coco(root, split="train", n_images=40, seed=0):
    """A small COCO-format dataset: 1-3 categories per image, 2 captions per image."""
    rng = np.random.default_rng(seed)
    images, captions, instances, truth = [], [], [], {}
    for i in range(1, n_images + 1):
        name = f"{i:012d}.jpg"
        images.append({"id": i, "file_name": name, "width": 8, "height": 6})
        cats = sorted(rng.choice(list(CATS), size=int(rng.integers(1, 4)), replace=False).tolist())
        truth[f"{split}2017/{name}"] = set(cats)
        for c in cats:
            instances.append({"id": len(instances) + 1, "image_id": i, "category_id": c,
                              "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0})
        for j in range(2):
            captions.append({"id": len(captions) + 1, "image_id": i,
                             "caption": f"image {i} caption {j} with {CATS[cats[0]]}"})
    categories = [{"id": c, "name": n, "supercategory": "x"} for c, n in CATS.items()]
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / f"captions_{split}2017.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": captions}))
    (ann / f"instances_{split}2017.json").write_text(
        json.dumps({"info": {}, "images": images, "annotations": instances,
                    "categories": categories}))
    img_dir = root / f"{split}2017"
    img_dir.mkdir()
    from PIL import Image
    for im in images:
        Image.new("RGB", (8, 6), (im["id"] * 5, 0, 0)).save(img_dir / im["file_name"])
    return truth


@pytest.fixture
def coco(tmp_path):
    truth = write_coco(tmp_path)
    return CocoTasks(tmp_path, "train"), truth


def test_sampling_rule_holds(coco):
    tasks, truth = coco
    name_to_id = {n: c for c, n in CATS.items()}
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = tasks.sample(2, 2, 1, rng, naming="real")
        chosen = {name_to_id[w] for w in t.words}
        assert len(chosen) == 2
        images = [e.image for e in t.support] + [q.image for q in t.queries]
        assert len(images) == len(set(images)) == 6
        for e in t.support:
            assert e.caption.startswith(f"image {int(e.image[10:22])} caption")
        # Every image contains exactly one of the task's categories.
        for key in images:
            assert len(truth[key] & chosen) == 1
        assert all(q.question == "" for q in t.queries)


def test_binding_tasks_group_images_by_exclusive_category(coco):
    tasks, truth = coco
    for seed in range(20):
        t = tasks.sample(3, 1, 2, np.random.default_rng(seed), naming="made_up", max_tries=500)
        assert not set(t.words) & set(TEST_WORDS)
        assert {e.caption for e in t.support} == {f"This is a {w}." for w in t.words}
        by_word: dict[str, set[str]] = {}
        for e in t.support:
            by_word.setdefault(e.caption[10:-1], set()).add(e.image)
        for q in t.queries:
            by_word[q.answer].add(q.image)
        # The images sharing a word share one category that no other class's images have.
        common = [set.intersection(*(truth[k] for k in keys)) for keys in by_word.values()]
        assert all(common)
        assert len(by_word) == 3 and len(set().union(*by_word.values())) == 9
    assert tasks.sample(2, 1, 1, np.random.default_rng(3), naming="made_up") == tasks.sample(
        2, 1, 1, np.random.default_rng(3), naming="made_up")


def test_impossible_request_is_a_clear_error(coco):
    tasks, _ = coco
    with pytest.raises(ValueError, match="categories"):
        tasks.sample(2, 30, 1, np.random.default_rng(0))


def test_caption_pairs_and_registry(tmp_path):
    write_coco(tmp_path, "val", n_images=10)
    pairs = CocoCaptionPairs(tmp_path, "val")
    assert len(pairs) == 20
    key, caption = pairs[0]
    assert key == "val2017/000000000001.jpg" and caption.startswith("image 1 caption 0")
    assert pairs.images.load(key).size == (8, 6)
    ts = build_coco_tasks(root=str(tmp_path), split="val", n_tasks=3, ways=2,
                          shots=1, naming="made_up", max_tries=500)
    assert len(ts.tasks) == 3 and ts.images.load(ts.tasks[0].support[0].image).mode == "RGB"


def test_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        CocoTasks(tmp_path, "train")
    write_coco(tmp_path)
    (tmp_path / "annotations" / "instances_train2017.json").write_text('{"images": []}')
    with pytest.raises(CocoFormatError, match="instances_train2017.json: missing list"):
        CocoTasks(tmp_path, "train")
    (tmp_path / "annotations" / "instances_train2017.json").write_text('{"images": [}')
    with pytest.raises(CocoFormatError, match="malformed JSON at line 1"):
        CocoTasks(tmp_path, "train")
