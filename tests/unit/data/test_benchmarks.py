import json

import pytest
from PIL import Image

from metamapper.data.benchmarks import (
    BenchmarkFormatError,
    list_benchmark_files,
    load_benchmark,
    split_tasks,
)
from metamapper.data.images import FolderImageSource
from metamapper.data.sources import evaluation_tasks


def write_image(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


WORDS = ["dax", "blicket", "shously", "slation", "perpo"]


def make_record(folder, qid, ways, shots, *, prefix="open_ended_mi", sub="", write=True):
    stem = f"{prefix}_shots_{shots}_ways_{ways}_id_{qid}"
    rec = {"question_id": qid, "question": "This is a", "question_image": f"{stem}_question.jpg",
           "answer": WORDS[1]}
    i = 0
    for _ in range(shots):
        for w in range(ways):
            i += 1
            rec[f"caption_{i}"] = f"This is a {WORDS[w]}"
            rec[f"image_{i}"] = f"{stem}_image_{i}.jpg"
    if write:
        for key, value in rec.items():
            if "image" in key:
                write_image(folder / sub / value, (i * 10 % 255, 0, 0))
    return rec


def write_benchmark(folder, records, ways=2, shots=1, name="open_ended_mi"):
    path = folder / f"{name}_shots_{shots}_ways_{ways}_all_questions.json"
    path.write_text(json.dumps(records) if not isinstance(records, str) else records)
    return path


@pytest.fixture
def bench(tmp_path):
    records = [make_record(tmp_path, f"{n:04d}", 2, 3) for n in range(1, 11)]
    write_benchmark(tmp_path, records, ways=2, shots=3)
    return tmp_path


def test_list_and_load(bench, tmp_path):
    (tmp_path / "unrelated.json").write_text("[]")
    files = list_benchmark_files(bench)
    assert [(f.name, f.ways, f.shots) for f in files] == [("open_ended_mi", 2, 3)]
    tasks = load_benchmark(bench, "open_ended_mi", 2, 3)
    assert len(tasks) == 10
    t = tasks[0]
    assert t.task_id == "open_ended_mi_shots_3_ways_2:0001"
    assert (t.ways, t.shots, len(t.support), len(t.queries)) == (2, 3, 6, 1)
    assert t.words == ("dax", "blicket")
    assert t.queries[0].answer == "blicket" and t.queries[0].question == "This is a"
    src = FolderImageSource(bench)
    assert src.load(t.support[0].image).mode == "RGB"


def test_images_subfolder_and_multiword_names(tmp_path):
    rec = make_record(tmp_path, "0001", 2, 1, prefix="real_name_mi", sub="images")
    rec["caption_1"], rec["caption_2"] = "This is a ankle boot", "This is a bag."
    write_benchmark(tmp_path, [rec], name="real_name_mi")
    ts = evaluation_tasks("real_name_mi", data=str(tmp_path), ways=2, shots=1, n_tasks=0, split="all")
    t = ts.tasks[0]
    assert t.words == ("ankle boot", "bag")
    assert t.support[0].image.startswith("images/")
    assert ts.images.load(t.queries[0].image).mode == "RGB"


def _broken(tmp_path, mutate):
    recs = [make_record(tmp_path, "0001", 2, 1), make_record(tmp_path, "0002", 2, 1)]
    mutate(recs)
    write_benchmark(tmp_path, recs)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r[1].pop("answer"), "missing key 'answer'"),
    (lambda r: r[1].update(question=3), "'question' must be a string"),
    (lambda r: r[1].pop("caption_2"), "missing key 'caption_2'"),
    (lambda r: [r[1].pop("caption_2"), r[1].pop("image_2")], "exactly 2 support pairs"),
    (lambda r: r[1].update(caption_3="This is a perpo", image_3="x.jpg"), "exactly 2 support"),
    (lambda r: r[1].update(caption_2="  "), "empty caption_2"),
    (lambda r: r[1].update(image_1="gone.jpg"), "gone.jpg"),
    (lambda r: r[1].update(caption_2="This is a dax"), "1 distinct captions"),
])
def test_validation_errors_name_file_and_question(tmp_path, mutate, message):
    _broken(tmp_path, mutate)
    with pytest.raises(BenchmarkFormatError) as e:
        load_benchmark(tmp_path, "open_ended_mi", 2, 1)
    assert "open_ended_mi_shots_1_ways_2_all_questions.json" in str(e.value)
    assert "'0002'" in str(e.value) and message in str(e.value)


def test_malformed_json_and_not_a_list(tmp_path):
    write_benchmark(tmp_path, '[{"question_id": "0001",\n  "question": }]')
    with pytest.raises(BenchmarkFormatError, match=r"all_questions.json: malformed JSON at line 2"):
        load_benchmark(tmp_path, "open_ended_mi", 2, 1)
    write_benchmark(tmp_path, '{"question_id": "0001"}')
    with pytest.raises(BenchmarkFormatError, match="expected a JSON list"):
        load_benchmark(tmp_path, "open_ended_mi", 2, 1)
    write_benchmark(tmp_path, [make_record(tmp_path, "0001", 2, 1)] * 2)
    with pytest.raises(BenchmarkFormatError, match="duplicate question_id '0001'"):
        load_benchmark(tmp_path, "open_ended_mi", 2, 1)
    with pytest.raises(FileNotFoundError, match="shots_5_ways_2"):
        load_benchmark(tmp_path, "open_ended_mi", 2, 5)


def test_split_tasks_seeded_and_disjoint(bench):
    tasks = load_benchmark(bench, "open_ended_mi", 2, 3)
    s = split_tasks(tasks, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [7, 1, 2]
    ids = [t.task_id for k in s for t in s[k]]
    assert sorted(ids) == sorted(t.task_id for t in tasks)
    assert s == split_tasks(tasks, seed=0)
    assert s != split_tasks(tasks, seed=1)
    with pytest.raises(ValueError, match="fractions"):
        split_tasks(tasks, fractions=(0.5, 0.5, 0.5))
