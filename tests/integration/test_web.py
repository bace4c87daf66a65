"""The web demo in a real browser: headless Chromium (Debian's) driven by Playwright against
``metamapper.web.server`` on a free localhost port, serving a tiny run trained here.

Set ``METAMAPPER_DOCS_SCREENSHOT=1`` to also refresh docs/web_screenshot.png.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed: pip install -e '.[dev]'")

from metamapper.data.synthetic import draw  # noqa: E402
from metamapper.loading import LoadedRun, load_run  # noqa: E402
from metamapper.methods import get_method, method_names  # noqa: E402
from metamapper.pretrained import adapt_to_support  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# root in a container: no sandbox; offline: no update, sync or first-run traffic
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
CAPTIONS = ["This is a dax.", "This is a blicket."]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} missing: install Debian's chromium + chromium-driver (make setup as root)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2-update smoke run on tiny random backbones (a few seconds)."""
    from metamapper.config import load_config
    from metamapper.methods import train

    tmp = tmp_path_factory.mktemp("web-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(tmp / "cache"))
        cfg = load_config(ROOT / "configs" / "smoke.yaml",
                          ["train.updates=2", "train.val_every=0", f"data.feature_cache={tmp / 'f'}"])
        yield train(cfg, tmp / "run", progress=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two support images of held-out classes, a query of the second, and a fake PNG."""
    d = tmp_path_factory.mktemp("web-images")
    paths = {"a": d / "dax.png", "b": d / "blicket.png", "q": d / "query.png"}
    for path, (c, i) in zip(paths.values(), [(6, 0), (7, 0), (7, 1)], strict=True):
        draw(c, i, size=64).save(path)
    paths["fake"] = d / "notes.png"  # the browser types it image/png; only decoding tells
    paths["fake"].write_text("not an image at all\n")
    return paths


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> Iterator[tuple[str, Any, LoadedRun]]:
    """The app under uvicorn in a thread, on a socket bound here (no port race)."""
    import uvicorn

    from metamapper.web.server import create_app

    run = load_run(tiny_run)
    app = create_app(run)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app, run
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, Any, LoadedRun]) -> Iterator[Any]:
    pg = browser.new_page(viewport={"width": 1000, "height": 1000})
    pg.set_default_timeout(15_000)
    pg.goto(server[0] + "/")
    sync_api.expect(pg.locator("#run-info")).to_contain_text("Run:")
    yield pg
    pg.close()


def fill_form(page: Any, support: list[Path], query: Path) -> None:
    page.set_input_files("#support-input", [str(p) for p in support])
    captions = page.locator("input.caption")
    sync_api.expect(captions).to_have_count(len(support))
    for i, text in enumerate(CAPTIONS[: len(support)]):
        captions.nth(i).fill(text)
    page.set_input_files("#query-input", str(query))
    sync_api.expect(page.locator("#query-preview")).to_be_visible()


def expected_answers(run: LoadedRun, images: dict[str, Path], **kw: Any) -> tuple[str, str]:
    """What the Python API says for the same inputs: the page must show exactly this."""
    from metamapper.data.images import load_image

    support, query = [load_image(images["a"]), load_image(images["b"])], load_image(images["q"])
    answer = adapt_to_support(run, support, CAPTIONS, **kw).answer([query], question="This is a")
    plain = adapt_to_support(run, support, CAPTIONS, method="standard").answer(
        [query], question="This is a")
    return answer[0].strip(), plain[0].strip()


def test_page_adapts_and_answers(page: Any, server: tuple[str, Any, LoadedRun],
                                 images: dict[str, Path], tmp_path: Path) -> None:
    _, _, run = server
    fill_form(page, [images["a"], images["b"]], images["q"])
    page.click("#submit")
    sync_api.expect(page.locator("#results")).to_be_visible()
    answer, plain = expected_answers(run, images)
    assert page.inner_text("#answer") == answer
    assert page.inner_text("#unadapted") == plain
    assert "This is a" in page.inner_text("#answer-question")  # the default question was sent
    # the smoke run is in_context: no gradient steps, so a note instead of a plot
    sync_api.expect(page.locator("#loss")).to_contain_text("read in context; no gradient steps")
    assert page.locator("#loss svg").count() == 0
    sync_api.expect(page.locator("#submit")).to_be_enabled()

    # the same support with MAML: 3 gradient steps, a plot with the 4 losses (steps 0..3)
    page.click("summary")  # open "Options"
    # the method choice: "as trained", then every registered method, described
    options = page.locator("#method option").evaluate_all(
        "os => os.map(o => [o.value, o.textContent, o.title])")
    assert options == [["", "as trained", ""], *(
        [m, f"{m} (as trained)" if m == "in_context" else m, get_method(m).description]
        for m in method_names())]
    page.select_option("#method", "maml")
    page.fill("#steps", "3")
    page.click("#submit")
    sync_api.expect(page.locator("#loss svg circle")).to_have_count(4)
    answer, _ = expected_answers(run, images, method="maml", steps=3)
    assert page.inner_text("#answer") == answer
    assert "maml, 3 adaptation steps" in page.inner_text("#timing")
    assert page.locator("#error").is_hidden()

    shot = tmp_path / "web_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("METAMAPPER_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "web_screenshot.png")


def test_non_image_upload_is_refused_inline(page: Any, images: dict[str, Path]) -> None:
    fill_form(page, [images["a"], images["fake"]], images["q"])
    page.click("#submit")
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("support image 2 (notes.png) is not an image")
    assert page.locator("#results").is_hidden()
    sync_api.expect(page.locator("#submit")).to_be_enabled()


def test_serve_trains_the_default_run_only_when_missing(tiny_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import metamapper.demo
    from metamapper.web.server import ensure_default_run

    calls = []

    def fake_run_demo(*, quick: bool, out: Path) -> None:  # the real one trains for many minutes
        calls.append(quick)
        shutil.copytree(tiny_run, out)

    monkeypatch.setattr(metamapper.demo, "run_demo", fake_run_demo)
    out = tmp_path / "runs" / "demo"
    assert ensure_default_run(out) == out and calls == [False]
    assert "no trained run" in capsys.readouterr().out
    load_run(out)  # what serve() does next
    assert ensure_default_run(out) == out and calls == [False]  # trained: no second run


# ------------------------------------------------------------------ the API without the page


def post(url: str, files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]],
         timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """POST a multipart form with urllib; returns (status, JSON body)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/api/answer", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_limits_are_checked_on_the_server(server: tuple[str, Any, LoadedRun],
                                          images: dict[str, Path]) -> None:
    url = server[0]
    png = images["a"].read_bytes()
    query = [("query", "q.png", images["q"].read_bytes())]

    def support(n: int) -> list[tuple[str, str, bytes]]:
        return [("support", f"s{i}.png", png) for i in range(n)]

    def captions(n: int) -> list[tuple[str, str]]:
        return [("captions", f"This is a dax {i}.") for i in range(n)]

    status, body = post(url, support(2) + query, captions(2))
    assert status == 200 and isinstance(body["answer"], str), body
    cases = {
        "give 2-10 support images (got 1)": (support(1) + query, captions(1)),
        "Too many files": (support(11) + query, captions(11)),
        "one caption per support image": (support(2) + query, captions(1)),
        "caption 2 is empty": (support(2) + query, [("captions", "a"), ("captions", " ")]),
        "one query image (got 0)": (support(2), captions(2)),
        "the limit is 8 MB per image": (
            support(1) + [("support", "big.png", png + b"\0" * (8 * 2**20))] + query, captions(2)),
        "steps must be a whole number": (support(2) + query, [*captions(2), ("steps", "999")]),
        "unknown method": (support(2) + query, [*captions(2), ("method", "magic")]),
    }
    for message, (files, fields) in cases.items():
        status, body = post(url, files, fields)
        assert status == 400 and message in body["error"], (message, status, body)


def test_the_page_stays_served_while_the_model_works(server: tuple[str, Any, LoadedRun],
                                                     images: dict[str, Path]) -> None:
    url, app, _ = server
    png = images["a"].read_bytes()
    result: dict[str, Any] = {}
    files = [("support", "a.png", png), ("support", "b.png", png), ("query", "q.png", png)]

    def slow_request() -> None:
        result["status"], result["body"] = post(url, files, [("captions", "x"), ("captions", "y")])

    # hold the model as a long adaptation would; the request waits in its worker thread
    with app.state.model.lock:
        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.5)
        assert t.is_alive(), result
        t0 = time.monotonic()
        with urllib.request.urlopen(url + "/", timeout=5) as r:
            assert r.status == 200 and b"Adapt and answer" in r.read()
        with urllib.request.urlopen(url + "/api/info", timeout=5) as r:
            info = json.loads(r.read())
        assert info["method"] == "in_context"
        assert info["methods"] == {m: get_method(m).description for m in ("in_context", "maml", "standard")}
        assert time.monotonic() - t0 < 5
        assert t.is_alive()  # still waiting for the model
    t.join(timeout=60)
    assert result["status"] == 200, result
