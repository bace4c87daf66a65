"""``metamapper serve``: teach a trained run new names from a few captioned images, in the browser.

The page (``static/``) posts one multipart form to ``POST /api/answer``:

    support   2-10 image files            captions  one text field per support image, same order
    query     one image file              question  text after the query image (default "This is a")
    method    optional, a registered method (``metamapper.methods``; default: the run's own)
    steps     optional adaptation steps, 0-20 (default: the method's or the run's own)

and gets back JSON ``{"answer", "unadapted", "support_losses", "method", "steps", "seconds"}``, or
``{"error": "..."}`` with HTTP 400 (403 for a foreign Host or Origin, 413 when the whole body is
over its cap, 503 with ``Retry-After`` when the queue is full or the wait too long).

Safety, in short (docs/WEB.md has the long form):

* binds to 127.0.0.1 unless told otherwise, and says so loudly when told otherwise; a request
  whose ``Host`` is not the address it was sent to (DNS rebinding) or whose ``Origin`` is another
  site gets 403; no response holds a path of the machine;
* the body is read through a byte cap and parsed in memory; each image's format, structure and
  size are checked from its header (``Image.open`` is lazy, ``verify`` reads no pixels), and the
  request's pixels in all against a budget, before anything is decoded; nothing is written to
  disk;
* decoding uses ``metamapper.data.images.load_image``, the CLI's own decoder (alpha over white,
  16-bit grey scaled), at the request's turn, so at most one request's pixels are in memory;
* the model work runs in a worker thread, one request at a time; at most ``max_pending``
  requests are read, queued or worked on at once (more get 503), and one waits at most
  ``max_wait_s`` for its turn.

Example::

    from metamapper.pretrained import load_run
    from metamapper.web.server import create_app
    app = create_app(load_run("runs/demo"))       # an ASGI app: uvicorn.run(app)
"""

from __future__ import annotations

import io
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from metamapper.checkpoint import CKPT_DIR
from metamapper.data.images import ImageLoadError, load_image
from metamapper.loading import LoadedRun, load_run
from metamapper.methods import get_method, method_names
from metamapper.pretrained import adapt_to_support
from metamapper.registry import UnknownNameError

STATIC = Path(__file__).parent / "static"
DEFAULT_RUN = "runs/demo"
DEFAULT_QUESTION = "This is a"
# Only everyday raster formats: PIL plugins such as EPS hand the file to Ghostscript, and nothing
# a user drops here needs them.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True)
class Limits:
    """What one request may carry and cost; checked on the server (the page checks the sizes
    too, to save a round trip)."""

    min_support: int = 2
    max_support: int = 10
    max_image_bytes: int = 8 * 1024 * 1024  # per uploaded file
    max_image_pixels: int = 16_000_000  # per image (a 12 MP photo fits), from its header
    max_request_pixels: int = 40_000_000  # all images of a request: <= ~120 MB decoded as RGB
    max_text_chars: int = 200  # per caption and for the question
    max_steps: int = 20  # adaptation steps: bounds the gradient work one request can ask for
    max_pending: int = 4  # requests being read, queued or answered at once; more get 503
    max_wait_s: float = 120.0  # longest wait for the model before a 503
    retry_after_s: int = 5  # what a 503 tells the client to wait

    @property
    def max_body_bytes(self) -> int:
        """Every image at its limit plus room for text fields and multipart headers."""
        return (self.max_support + 1) * self.max_image_bytes + 1024 * 1024


class RequestError(ValueError):
    """A request the user can fix (or retry); the message goes back as ``{"error": ...}``."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class Upload:
    """An uploaded image, checked from its header but not decoded yet."""

    data: bytes = field(repr=False)
    name: str  # for messages, e.g. "support image 2 (cat.png)"
    width: int
    height: int


@dataclass
class DemoAnswer:
    """One adapted answer, the unadapted one for comparison, and the support-loss curve."""

    answer: str
    unadapted: str
    method: str
    steps: int
    support_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def probe_image(data: bytes, name: str, *, limits: Limits = Limits()) -> Upload:
    """Check an upload without decoding its pixels: size, format, structure, dimensions.

    Raises:
        ImageLoadError: empty, over the byte or pixel cap, not an image of ``FORMATS``, or
            corrupt (``verify``); the message names ``name``.
    """
    if not data:
        raise ImageLoadError(f"{name} is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageLoadError(f"{name} is {len(data) / 2**20:.1f} MB; the limit is "
                             f"{limits.max_image_bytes / 2**20:.0f} MB per image")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:  # lazy: reads the header only
            width, height = im.size
            if width * height > limits.max_image_pixels:
                raise ImageLoadError(f"{name} is {width}x{height} pixels; the limit is "
                                     f"{limits.max_image_pixels / 1e6:g} megapixels per image")
            im.verify()  # structure and checksums, without decoding the pixels
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{name} exceeds PIL's decompression-bomb limit: {e}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name} is not an image (allowed: {', '.join(FORMATS)})") from None
    except Exception as e:  # verify() raises assorted types on broken files
        raise ImageLoadError(f"{name} is corrupt or truncated: {e}") from None
    return Upload(data=data, name=name, width=width, height=height)


def decode_request(args: dict[str, Any], limits: Limits = Limits()) -> dict[str, Any]:
    """``parse_request``'s result with its uploads decoded (``load_image``, as the CLI reads
    files): the arguments of ``DemoModel.answer``. Blocking; called at the request's turn."""

    def decode(u: Upload) -> Image.Image:
        return load_image(u.data, name=u.name, formats=FORMATS, max_pixels=limits.max_image_pixels)

    return {**args, "support": [decode(u) for u in args["support"]], "query": decode(args["query"])}


class DemoModel:
    """A loaded run shared by all requests; one adaptation at a time (a lock, not a queue)."""

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        # the model is not re-entrant (adaptation builds autograd graphs over shared frozen
        # weights, and two at once would only split the same CPU cores), so requests take turns
        self.lock = threading.Lock()

    def answer(self, support: Sequence[Image.Image], captions: Sequence[str], query: Image.Image,
               question: str, *, method: str | None = None, steps: int | None = None) -> DemoAnswer:
        """Adapt to the support set and answer the query; blocking (call from a worker thread)."""
        method = method or self.run.method
        with self.lock:
            t0 = time.perf_counter()
            adapted = adapt_to_support(self.run, support, captions, steps=steps, method=method)
            answer = adapted.answer([query], question=question)[0]
            # "standard": the same weights, 0 steps and no support in the context
            plain = adapt_to_support(self.run, support, captions, method="standard")
            unadapted = plain.answer([query], question=question)[0]
            seconds = time.perf_counter() - t0
        losses = adapted.support_losses
        return DemoAnswer(answer=answer.strip(), unadapted=unadapted.strip(), method=method,
                          steps=max(len(losses) - 1, 0), support_losses=losses,
                          seconds=round(seconds, 3))


async def _capped(request: Request, cap: int) -> AsyncGenerator[bytes, None]:
    # Counting as we read stops a chunked upload with no Content-Length from going past the cap.
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > cap:
            raise RequestError(f"the upload is over {cap / 2**20:.0f} MB in all", status=413)
        yield chunk


async def _read_form(request: Request, limits: Limits) -> list[tuple[str, str | UploadFile]]:
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise RequestError("send the form as multipart/form-data")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(f"the upload is over {limits.max_body_bytes / 2**20:.0f} MB in all",
                           status=413)
    parser = MultiPartParser(request.headers, _capped(request, limits.max_body_bytes),
                             max_files=limits.max_support + 1, max_fields=limits.max_support + 8,
                             max_part_size=4 * limits.max_text_chars + 1024)
    # The body is capped, so parts can stay in memory; the default spools anything over 1 MB to
    # a temporary file on disk.
    parser.spool_max_size = limits.max_body_bytes
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise RequestError(f"bad upload: {e.message}") from None
    return list(form.multi_items())


def _text(value: str | UploadFile | None, what: str, limits: Limits) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestError(f"{what} must be text, not a file")
    value = value.strip()
    if len(value) > limits.max_text_chars:
        raise RequestError(f"{what} is {len(value)} characters; the limit is {limits.max_text_chars}")
    return value


async def _image(upload: str | UploadFile, what: str, limits: Limits) -> Upload:
    if not isinstance(upload, UploadFile):
        raise RequestError(f"{what} must be a file")
    if upload.size is not None and upload.size > limits.max_image_bytes:
        # say so before reading or checking anything
        raise RequestError(f"{what} ({upload.filename}) is {upload.size / 2**20:.1f} MB; the limit "
                           f"is {limits.max_image_bytes / 2**20:.0f} MB per image")
    data = await upload.read()
    try:
        # header parsing and verify() are CPU work: off the event loop too
        return await run_in_threadpool(probe_image, data, f"{what} ({upload.filename})",
                                       limits=limits)
    except ImageLoadError as e:
        raise RequestError(str(e)) from None


async def parse_request(request: Request, limits: Limits = Limits()) -> dict[str, Any]:
    """Read and check one ``/api/answer`` form, decoding no pixels.

    Returns:
        The arguments of ``DemoModel.answer`` with ``Upload`` s for the images (``decode_request``
        decodes them).

    Raises:
        RequestError: anything wrong with the upload, with a message for the page.
    """
    items = await _read_form(request, limits)
    support = [v for k, v in items if k == "support"]
    captions = [v for k, v in items if k == "captions"]
    queries = [v for k, v in items if k == "query"]
    fields = {k: v for k, v in items if k in ("question", "method", "steps")}
    if not limits.min_support <= len(support) <= limits.max_support:
        raise RequestError(f"give {limits.min_support}-{limits.max_support} support images "
                           f"(got {len(support)})")
    if len(captions) != len(support):
        raise RequestError(f"give one caption per support image ({len(support)} images, "
                           f"{len(captions)} captions)")
    texts = [_text(c, f"caption {i + 1}", limits) for i, c in enumerate(captions)]
    if missing := [str(i + 1) for i, c in enumerate(texts) if not c]:
        raise RequestError(f"caption {', '.join(missing)} is empty: write what the image shows, "
                           "e.g. 'This is a dax.'")
    if len(queries) != 1:
        raise RequestError(f"give one query image (got {len(queries)})")
    question = _text(fields.get("question"), "the question", limits) or DEFAULT_QUESTION
    method = _text(fields.get("method"), "the method", limits) or None
    if method is not None:
        try:
            method = get_method(method).name  # an earlier version's spelling: today's
        except UnknownNameError:
            raise RequestError(f"unknown method {method!r}; choose from {', '.join(method_names())}") from None
    steps_text = _text(fields.get("steps"), "steps", limits)
    steps = None
    if steps_text:
        if not steps_text.isdigit() or int(steps_text) > limits.max_steps:
            raise RequestError(f"steps must be a whole number from 0 to {limits.max_steps}")
        steps = int(steps_text)
    images = [await _image(u, f"support image {i + 1}", limits) for i, u in enumerate(support)]
    query = await _image(queries[0], "the query image", limits)
    pixels = sum(u.width * u.height for u in [*images, query])
    if pixels > limits.max_request_pixels:
        raise RequestError(f"the images have {pixels / 1e6:.1f} megapixels in all; the limit is "
                           f"{limits.max_request_pixels / 1e6:g} per request (send smaller images)")
    return {"support": images, "captions": texts, "query": query, "question": question,
            "method": method, "steps": steps}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(authority: str, default_port: int) -> tuple[str, int] | None:
    """``"Example.com:80"`` -> ``("example.com", 80)``; ``"[::1]:7860"`` -> ``("::1", 7860)``."""
    try:
        parts = urllib.parse.urlsplit("//" + authority)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port or bracket
        return None
    return (host, port or default_port) if host else None


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def foreign_request(scope: Scope, allowed_hosts: Sequence[str] = ()) -> str | None:
    """Why a request must be refused (403), or ``None``: its ``Host`` is not the address it was
    sent to, or its ``Origin`` is another site.

    The address is the listening socket's (``scope["server"]``), so a page on another site that
    rebinds its own name to 127.0.0.1 (DNS rebinding) is refused: its requests carry its name.
    Loopback names (localhost, 127.0.0.1, [::1]) are accepted for a loopback address, with the
    same port; ``allowed_hosts`` adds names (``"name"`` or ``"name:port"``) e.g. for a server
    reached by its machine's name.
    """
    server = scope.get("server")
    allowed: set[tuple[str, int]] = set()
    if server:
        host, port = str(server[0]).lower(), int(server[1])
        names = {host, *LOOPBACK_NAMES} if _is_loopback(host) else {host}
        allowed |= {(n, port) for n in names}
        allowed |= {hp for a in allowed_hosts if (hp := _host_port(a, port)) is not None}
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    shown = f"{server[0]}:{server[1]}" if server else "this server"
    host_header = headers.get("host", "")
    if _host_port(host_header, 80) not in allowed:
        return (f"Host {host_header!r} is not this server's address; open the page at "
                f"http://{shown}/")
    origin = headers.get("origin")
    if origin is not None:
        parts = urllib.parse.urlsplit(origin)
        default = 443 if parts.scheme == "https" else 80
        if parts.scheme not in ("http", "https") or _host_port(parts.netloc, default) not in allowed:
            return f"requests from another site ({origin}) are refused"
    return None


class HostGuard:
    """ASGI middleware: 403 for requests ``foreign_request`` refuses, before any route runs."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = foreign_request(scope, self.allowed_hosts)
            if problem is not None:
                await JSONResponse({"error": problem}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def run_name(run: LoadedRun) -> str:
    """The run folder's name (``runs/demo/checkpoints/step-0000129`` -> ``demo``): the page
    shows it; a full path would tell any page that reads it where the user's files are. A Hub
    model's snapshot (``.../models--owner--name/snapshots/<commit>``) shows as ``owner/name``."""
    path = Path(run.path)
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.parent.parent.name if path.parent.name == CKPT_DIR else path.name


def create_app(run: LoadedRun, *, limits: Limits = Limits(),
               allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The demo's ASGI app over a loaded run.

    Routes: ``GET /`` (the page), ``GET /static/*``, ``GET /api/info`` (run name and step,
    methods, limits), ``POST /api/answer`` (see the module docstring).

    Args:
        run: the loaded run.
        limits: what a request may carry and cost.
        allowed_hosts: further names the server may be reached by (see ``foreign_request``).

    Example::

        app = create_app(load_run("runs/demo"))
        uvicorn.run(app, host="127.0.0.1", port=7860)
    """
    model = DemoModel(run)
    # One token: waiting requests queue on the event loop instead of each parking a pool thread on
    # the model lock, so a queue of adaptations cannot starve the threads that serve files.
    model_turn = anyio.CapacityLimiter(1)
    app = FastAPI(title="metamapper demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model = model
    app.state.pending = 0  # /api/answer requests being read, queued or answered (event loop only)
    app.state.turn = model_turn
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        # the page loads only its own files; previews are blob: URLs
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        inner = run.config.train.inner
        return {"run": run_name(run), "step": run.meta.get("step"),
                "sha256": str(run.meta.get("sha256", ""))[:12], "method": run.method,
                "methods": {name: get_method(name).description for name in method_names()},
                "inner_steps": inner.steps,
                "default_question": DEFAULT_QUESTION,
                "limits": {**asdict(limits), "max_body_bytes": limits.max_body_bytes}}

    def busy(why: str) -> RequestError:
        return RequestError(f"the demo is busy ({why}); try again in a few seconds", status=503,
                            headers={"Retry-After": str(limits.retry_after_s)})

    @app.post("/api/answer")
    async def answer(request: Request) -> dict[str, Any]:
        # bounded before the body is read: a queue of requests costs at most max_pending bodies
        if app.state.pending >= limits.max_pending:
            raise busy(f"{app.state.pending} requests in line")
        app.state.pending += 1
        try:
            args = await parse_request(request, limits)
            try:
                with anyio.fail_after(limits.max_wait_s):
                    await model_turn.acquire()
            except TimeoutError:
                raise busy(f"waited {limits.max_wait_s:g} s for the model") from None
            try:
                # decoding and the model work block for seconds: a worker thread keeps the event
                # loop serving; decoding at the request's turn keeps one request's pixels in memory
                result = await anyio.to_thread.run_sync(
                    lambda: model.answer(**decode_request(args, limits)))
            except ValueError as e:  # load_image's and adapt_to_support's own checks
                raise RequestError(str(e)) from None
            finally:
                model_turn.release()
        finally:
            app.state.pending -= 1
        return asdict(result)

    return app


def ensure_default_run(run_dir: str | Path = DEFAULT_RUN) -> Path:
    """Return ``run_dir`` with a valid checkpoint, training it with ``metamapper demo`` if needed.

    The full demo (meta-training, baselines, evaluation) takes a while on CPU; its progress bars
    go to the terminal. A half-finished run resumes from its last checkpoint.
    """
    from metamapper.checkpoint import CheckpointError, latest_checkpoint

    run_dir = Path(run_dir)
    try:
        latest_checkpoint(run_dir)
        return run_dir
    except CheckpointError:
        pass
    print(f"metamapper serve: no trained run in {run_dir}/; training the embedded default first "
          "(`metamapper demo`: several minutes to tens of minutes on CPU, progress below). "
          "Pass --checkpoint RUN_DIR to serve another run.", flush=True)
    from metamapper.demo import run_demo

    run_demo(quick=False, out=run_dir)
    return run_dir


def serve(checkpoint: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 7860,
          step: str | int | None = None, allow_fallback: bool = False,
          allowed_hosts: Sequence[str] = (), device: str | None = None,
          revision: str | None = None) -> None:
    """Load a run (default: ``runs/demo``, trained first if missing) and serve the demo until ^C.

    Args:
        checkpoint: a run folder or checkpoint folder, an exported folder or a Hub id
            ``owner/name`` (``hub.resolve_checkpoint``); ``None`` for the embedded default run.
        host: the address to bind; anything but loopback exposes the demo to the network.
        port: the TCP port.
        step: which checkpoint of the run (``latest``, ``best`` or a number; see
            ``checkpoint.select_checkpoint``).
        allow_fallback: a corrupt newest checkpoint falls back to the newest valid one.
        revision: with a Hub id, a branch, tag or commit.
        allowed_hosts: further names the page may be opened under (see ``foreign_request``).
        device: where the model is served (default ``auto``: a GPU when there is one).
    """
    import uvicorn

    source = checkpoint if checkpoint is not None else ensure_default_run()
    print(f"metamapper serve: loading {source} ...", flush=True)
    run = load_run(source, step=step, revision=revision, allow_fallback=allow_fallback, device=device)
    if not _is_loopback(host):
        print(f"metamapper serve: WARNING: binding to {host} makes the demo reachable from other "
              "machines; it has no authentication.", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"metamapper serve: {run.path} ({run.method}, step {run.meta.get('step')}) on "
          f"http://{shown}:{port}/  (^C stops)", flush=True)
    uvicorn.run(create_app(run, allowed_hosts=allowed_hosts), host=host, port=port, log_level="info")
