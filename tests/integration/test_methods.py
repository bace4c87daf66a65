"""A method is one file plus its registration: a toy method registered here (as a user's file
would) trains, evaluates, answers through the Python API and is served by the web page, with no
edit to the library; old spellings still resolve, unknown names are refused with the list."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from metamapper.checkpoint import list_checkpoints, read_checkpoint
from metamapper.config import load_config
from metamapper.data.sources import evaluation_tasks
from metamapper.data.synthetic import draw
from metamapper.eval.run import evaluate_run
from metamapper.loading import LoadedRun, load_run
from metamapper.meta.episode import Episode, in_context_rows
from metamapper.methods import get_method, method_names, train
from metamapper.models.metamapper import Item
from metamapper.pretrained import adapt_to_support
from metamapper.registry import METHODS, Method, UnknownNameError
from metamapper.train import episodic

ROOT = Path(__file__).resolve().parents[2]


# --- the toy method: what a user's one file holds -------------------------------------------
@dataclass
class Calls:
    rows: int = 0
    seen: list[bool] = field(default_factory=list)  # with_answer of each call: training / answering


CALLS = Calls()


def last_support_first(ep: Episode, offset: int = 0, *, with_answer: bool = True,
                       queries_per_row: int = 1) -> list[list[Item]]:
    """The support pairs in context, last pair first (a variant of the default's rows; tasks
    without an instruction)."""
    CALLS.rows += 1
    CALLS.seen.append(with_answer)
    s = ep.n_support
    rows = in_context_rows(ep, offset, with_answer=with_answer, queries_per_row=queries_per_row)
    return [[it for i in reversed(range(s)) for it in row[2 * i:2 * i + 2]] + row[2 * s:] for row in rows]


TOY = Method(name="toy-reversed", description="the support in context, last pair first",
             recipe=episodic.train, query_rows=last_support_first, queries_per_row=True)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered() -> Iterator[Method]:
    with pytest.MonkeyPatch.context() as mp:  # the registry as it was after the module
        mp.setattr(METHODS, "_builders", dict(METHODS._builders))
        METHODS.register(TOY.name)(TOY)
        yield TOY


@pytest.fixture(scope="module")
def toy_run(registered: Method, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedRun]:
    tmp = tmp_path_factory.mktemp("toy")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(tmp / "cache"))
        cfg = load_config(ROOT / "configs" / "smoke.yaml",
                          [f"train.method={TOY.name}", "train.updates=2", "train.val_every=0",
                           f"data.feature_cache={tmp / 'f'}"])
        before = CALLS.rows
        run_dir = train(cfg, tmp / "run", progress=False)  # the recipe the toy names
        assert CALLS.rows > before and True in CALLS.seen  # its rows made training's query loss
        yield load_run(run_dir)


def test_a_registered_method_trains_and_records_its_name(toy_run: LoadedRun) -> None:
    assert TOY.name in method_names() and get_method(TOY.name) is TOY
    assert toy_run.method == TOY.name
    assert read_checkpoint(list_checkpoints(toy_run.path.parent.parent)[-1]).meta["method"] == TOY.name


def test_a_registered_method_evaluates_and_answers(toy_run: LoadedRun, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAMAPPER_CACHE", str(tmp_path))
    ts = evaluation_tasks("synthetic", data=None, ways=2, shots=1, n_tasks=4)
    CALLS.seen.clear()
    res = evaluate_run(toy_run, ts, progress=False, feature_cache=tmp_path / "f")  # the run's own method
    assert res["method"] == TOY.name and res["n_tasks"] == 4 and res["steps"] == 0
    assert CALLS.seen and not any(CALLS.seen)  # its rows put the queries, without answers
    adapted = adapt_to_support(toy_run, [draw(6, 0), draw(7, 0)], ["This is a dax.", "This is a blicket."])
    assert adapted.method is TOY and len(adapted.answer([draw(7, 1)], question="This is a")) == 1


def test_a_registered_method_is_served(toy_run: LoadedRun) -> None:
    pytest.importorskip("fastapi", reason="the web extra is not installed: pip install -e '.[web]'")
    from test_web_security import post_answer, serving, valid

    from metamapper.web.server import create_app

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    with serving(create_app(toy_run)) as port:
        from test_web_security import send

        status, _, info = send(port, "GET", "/api/info")
        assert status == 200 and info["method"] == TOY.name
        assert info["methods"][TOY.name] == TOY.description  # the page's choice, with its description
        status, _, body = post_answer(port, *valid(buf.getvalue(), method=TOY.name))
        assert status == 200 and body["method"] == TOY.name, body


def test_old_spellings_resolve_with_a_note_and_unknown_names_are_refused() -> None:
    with pytest.warns(FutureWarning, match="now spelled in_context"):
        assert get_method("in-context") is get_method("in_context")
    with pytest.warns(FutureWarning, match="standard"):
        assert get_method("no-adapt") is get_method("standard")
    with pytest.raises(UnknownNameError, match="registered: in_context, maml, standard"):
        get_method("zero-shot")


def test_the_cli_trains_with_the_registry_and_refuses_an_unknown_method(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from metamapper import cli

    code = cli.main(["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "--out", str(tmp_path / "r"),
                     "train.method=zero-shot"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown method 'zero-shot'" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
