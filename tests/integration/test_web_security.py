"""The web demo's defences, through the real server (uvicorn on a localhost socket, raw HTTP):
Host and Origin checks (DNS rebinding), no paths in responses, the pixel budget checked from
image headers before decoding, the bounded queue and wait, the steps cap, and uploads decoded
exactly as the CLI reads files."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install -e '.[web]'")
pytest.importorskip("uvicorn", reason="the web extra is not installed: pip install -e '.[web]'")

import metamapper.web.server as server_module  # noqa: E402
from metamapper.data.images import load_image  # noqa: E402
from metamapper.data.synthetic import draw  # noqa: E402
from metamapper.loading import LoadedRun, load_run  # noqa: E402
from metamapper.web.server import DemoAnswer, Limits, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedRun]:
    """A 2-update smoke run on tiny random backbones, loaded."""
    from metamapper.config import load_config
    from metamapper.methods import train

    tmp = tmp_path_factory.mktemp("web-security")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAMAPPER_CACHE", str(tmp / "cache"))
        cfg = load_config(ROOT / "configs" / "smoke.yaml",
                          ["train.updates=2", "train.val_every=0", f"data.feature_cache={tmp / 'f'}"])
        yield load_run(train(cfg, tmp / "secret-folder" / "run", progress=False))


@contextmanager
def serving(app: Any) -> Iterator[int]:
    """``app`` under uvicorn in a thread on a socket bound here; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def served(tiny_run: LoadedRun) -> Iterator[tuple[int, Any]]:
    app = create_app(tiny_run)
    with serving(app) as port:
        yield port, app


def send(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: bytes | None = None, timeout: float = 60) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One raw HTTP request to 127.0.0.1:port with exactly these headers (Host included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        data = json.loads(raw)
    except ValueError:
        data = {"_raw": raw.decode(errors="replace")}
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def form(files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
              f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for k, name, data in files]
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def post_answer(port: int, files: list[tuple[str, str, bytes]], fields: list[tuple[str, str]],
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    ctype, body = form(files, fields)
    return send(port, "POST", "/api/answer", {"Content-Type": ctype, **(headers or {})}, body)


def png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def small() -> bytes:
    return png(draw(6, 0, size=32))


def valid(small: bytes, **fields: str) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str]]]:
    files = [("support", "a.png", small), ("support", "b.png", small), ("query", "q.png", small)]
    return files, [("captions", "This is a dax."), ("captions", "This is a blicket."), *fields.items()]


class Recorder:
    """Stands in for ``DemoModel.answer``: records what the server decoded, answers at once."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> DemoAnswer:
        self.calls.append(kwargs)
        return DemoAnswer(answer="dax", unadapted="x", method=kwargs.get("method") or "in_context",
                          steps=kwargs.get("steps") or 0)


@pytest.fixture
def recorder(served: tuple[int, Any], monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(served[1].state.model, "answer", rec)
    return rec


# ------------------------------------------------------------------ Host and Origin


def test_a_foreign_host_is_refused(served: tuple[int, Any]) -> None:
    port, _ = served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
        status, _, body = send(port, "GET", "/api/info", {"Host": host})
        assert status == 200, (host, body)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1",
                 f"localhost.evil.example:{port}", "", f"127.0.0.1:{port}:1"):
        for path in ("/api/info", "/", "/static/app.js"):
            status, _, body = send(port, "GET", path, {"Host": host})
            assert status == 403, (host, path, status)
            assert "not this server's address" in body["error"], body


def test_a_foreign_origin_is_refused(served: tuple[int, Any], recorder: Recorder, small: bytes) -> None:
    port, _ = served
    files, fields = valid(small)
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null",
                   f"http://127.0.0.1:{port + 1}", f"file://127.0.0.1:{port}"):
        status, _, body = post_answer(port, files, fields, {"Origin": origin})
        assert status == 403 and "another site" in body["error"], (origin, status, body)
    assert recorder.calls == []  # nothing reached the model
    status, _, _ = post_answer(port, files, fields, {"Origin": f"http://localhost:{port}"})
    assert status == 200 and len(recorder.calls) == 1  # the page's own requests pass
    status, _, _ = send(port, "GET", "/api/info", {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200


def test_no_response_holds_a_path_of_the_machine(served: tuple[int, Any], tiny_run: LoadedRun) -> None:
    port, _ = served
    status, _, body = send(port, "GET", "/api/info")
    assert status == 200
    assert body["run"] == "run" and body["step"] == 2 and len(body["sha256"]) == 12
    assert "secret-folder" not in json.dumps(body) and str(ROOT) not in json.dumps(body)


# ------------------------------------------------------------------ cost of one request


def test_the_pixel_budget_is_checked_from_headers_before_decoding(
        served: tuple[int, Any], recorder: Recorder, small: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    port, _ = served
    decoded = []
    monkeypatch.setattr(server_module, "load_image", lambda *a, **k: decoded.append(a) or load_image(*a, **k))
    huge = png(Image.new("L", (6300, 6300)))  # ~130 kB of PNG, 40 megapixels decoded
    assert len(huge) < 200_000
    files, fields = valid(small)
    status, _, body = post_answer(port, [files[0], ("support", "huge.png", huge), files[2]], fields)
    assert status == 400 and "support image 2 (huge.png) is 6300x6300 pixels" in body["error"], body
    assert "16 megapixels per image" in body["error"]
    nine = png(Image.new("L", (3000, 3000)))  # 9 MP each: under the per-image cap
    many = [("support", f"s{i}.png", nine) for i in range(4)] + [("query", "q.png", nine)]
    status, _, body = post_answer(port, many, [("captions", f"This is a dax {i}.") for i in range(4)])
    assert status == 400 and "45.0 megapixels in all; the limit is 40 per request" in body["error"], body
    assert decoded == [] and recorder.calls == []  # refused from the headers alone
    status, _, _ = post_answer(port, *valid(small))
    assert status == 200 and len(decoded) == 3  # a fine request decodes its 3 images


def test_steps_are_capped_for_the_gradient_methods(served: tuple[int, Any], recorder: Recorder,
                                                   small: bytes) -> None:
    port, _ = served
    for steps in ("21", "50"):
        status, _, body = post_answer(port, *valid(small, method="maml", steps=steps))
        assert status == 400 and "steps must be a whole number from 0 to 20" in body["error"], body
    assert recorder.calls == []
    status, _, _ = post_answer(port, *valid(small, method="maml", steps="20"))
    assert status == 200 and recorder.calls[0]["steps"] == 20


def test_the_method_is_a_registered_one(served: tuple[int, Any], recorder: Recorder, small: bytes) -> None:
    """One spelling: an unknown method is refused before the model is asked; an earlier
    version's spelling reaches the model as the method's name today."""
    port, _ = served
    status, _, body = post_answer(port, *valid(small, method="zero-shot"))
    assert status == 400, body
    assert "unknown method 'zero-shot'; choose from in_context, maml, standard" in body["error"], body
    assert recorder.calls == []
    for method in ("in_context", "maml", "standard", ""):
        status, _, body = post_answer(port, *valid(small, method=method))
        assert status == 200, (method, body)
    for old in ("in-context", "no-adapt"):
        with pytest.warns(FutureWarning, match=f"method '{old}' is now spelled"):
            status, _, body = post_answer(port, *valid(small, method=old))
        assert status == 200, (old, body)
    assert [c["method"] for c in recorder.calls] == ["in_context", "maml", "standard", None,
                                                      "in_context", "standard"]


def test_uploads_are_decoded_exactly_as_the_cli_reads_files(served: tuple[int, Any], recorder: Recorder,
                                                            tmp_path: Path) -> None:
    """Transparent pixels on white (not black), 16-bit grey scaled (not clipped): the same
    ``load_image`` as ``metamapper predict``."""
    port, _ = served
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    rgba.putpixel((1, 1), (10, 200, 30, 255))
    rgba.save(tmp_path / "alpha.png")
    Image.fromarray(np.array([[0, 256, 32768, 65535]] * 4, dtype=np.uint16)).save(tmp_path / "g16.png")
    files = [("support", "alpha.png", (tmp_path / "alpha.png").read_bytes()),
             ("support", "g16.png", (tmp_path / "g16.png").read_bytes()),
             ("query", "alpha.png", (tmp_path / "alpha.png").read_bytes())]
    status, _, body = post_answer(port, files, [("captions", "This is a dax."),
                                                ("captions", "This is a blicket.")])
    assert status == 200, body
    got = recorder.calls[0]
    web_alpha, web_grey = got["support"]
    assert web_alpha.getpixel((0, 0)) == (255, 255, 255) and web_alpha.getpixel((1, 1)) == (10, 200, 30)
    assert [web_grey.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]
    for web, path in ((web_alpha, "alpha.png"), (web_grey, "g16.png"), (got["query"], "alpha.png")):
        cli = load_image(tmp_path / path)
        assert web.mode == cli.mode == "RGB" and web.tobytes() == cli.tobytes()


# ------------------------------------------------------------------ queue


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(result=fn()), daemon=True)
    t.start()
    return t, out


def wait_until(cond: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_full_queue_answers_503_with_retry_after(tiny_run: LoadedRun, small: bytes,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(tiny_run, limits=Limits(max_pending=2))
    rec = Recorder()

    def slow_answer(**kw: Any) -> DemoAnswer:  # waits while the test holds the model's lock
        with app.state.model.lock:
            return rec(**kw)

    monkeypatch.setattr(app.state.model, "answer", slow_answer)
    with serving(app) as port:
        with app.state.model.lock:
            a, ra = in_thread(lambda: post_answer(port, *valid(small)))
            wait_until(lambda: app.state.turn.borrowed_tokens == 1)  # a holds the model's turn
            b, rb = in_thread(lambda: post_answer(port, *valid(small)))
            wait_until(lambda: app.state.pending == 2)  # b waits for its turn
            status, headers, body = post_answer(port, *valid(small))
            assert status == 503 and headers["retry-after"] == "5", (status, headers)
            assert "busy (2 requests in line)" in body["error"]
            assert a.is_alive() and b.is_alive()
        a.join(60)
        b.join(60)
    assert ra["result"][0] == 200 and rb["result"][0] == 200
    assert len(rec.calls) == 2 and app.state.pending == 0


def test_a_long_wait_for_the_model_answers_503(tiny_run: LoadedRun, small: bytes,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(tiny_run, limits=Limits(max_wait_s=0.5))
    rec = Recorder()

    def slow_answer(**kw: Any) -> DemoAnswer:  # waits while the test holds the model's lock
        with app.state.model.lock:
            return rec(**kw)

    monkeypatch.setattr(app.state.model, "answer", slow_answer)
    with serving(app) as port:
        with app.state.model.lock:
            a, ra = in_thread(lambda: post_answer(port, *valid(small)))
            wait_until(lambda: app.state.turn.borrowed_tokens == 1)
            status, headers, body = post_answer(port, *valid(small))
            assert status == 503 and "waited 0.5 s for the model" in body["error"]
            assert headers["retry-after"] == "5"
        a.join(60)
    assert ra["result"][0] == 200 and len(rec.calls) == 1 and app.state.pending == 0
