"""Serve the text renderer over HTTP: a JSON API and one web page (FastAPI on uvicorn).

    python -m cganraw.serve                                   # http://127.0.0.1:8000/
    python -m cganraw.serve --model letters=runs/letters --host 0.0.0.0 --port 8080

Endpoints: POST /api/v1/render (JSON in, image/png out, the seed used in `X-Seed`),
GET /api/v1/models, GET /healthz, GET / (the page), /docs and /openapi.json.

Limits: the text is checked against a regular expression built from the loaded character
sets before any model runs (422 naming the characters); unknown fields, wrong types and
out-of-range numbers are 422; a body over 16 KiB is 413. Renders run in a pool of threads
sized to the cores behind a bounded queue: a request that finds it full gets 503 with
Retry-After, and each render has a time limit. Nothing is written to disk per request;
finished images are kept in a bounded in-memory cache. No CORS unless --cors ORIGIN.
"""

import asyncio
import collections
import json
import logging
import os
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Literal

from cganraw import backend, cli, render

log = logging.getLogger("cganraw.serve")   # not __name__: that is __main__ under python -m

MAX_BODY = 16 * 1024
DEFAULT_QUEUE = 16
DEFAULT_TIMEOUT = 10.0
DEFAULT_CACHE_ENTRIES = 256
DEFAULT_CACHE_BYTES = 32 << 20
RETRY_AFTER = "1"
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
WEB_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
             "/app.js": ("app.js", "text/javascript; charset=utf-8"),
             "/style.css": ("style.css", "text/css; charset=utf-8")}


def default_workers() -> int:
    """One render thread per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not Linux
        return max(1, os.cpu_count() or 1)


def threadsafe_kernels(workers: int) -> int:
    """The number of render threads the CPU kernels allow. Numba's default `workqueue`
    threading layer aborts the process when two threads launch parallel kernels at once,
    so pick a thread-safe layer (OpenMP or TBB) before the first launch; where none can
    be had, render on one thread."""
    from cganraw.ops import _cpu

    nb = _cpu.numba()
    if workers <= 1 or nb is None:
        return workers
    layer = _cpu.threading_layer()
    if layer is None:             # no parallel kernel has run yet: the layer can still be chosen
        try:
            nb.config.THREADING_LAYER = "threadsafe"
            _cpu.start_threads()
            layer = _cpu.threading_layer()
        except Exception as e:  # no OpenMP or TBB: fall back below
            nb.config.THREADING_LAYER = "default"
            log.debug("no thread-safe numba layer: %s", e)
    if layer in ("omp", "tbb"):
        return workers
    log.warning("numba's %s threading layer is not thread-safe: rendering on one thread "
                "(install tbb, or a numba with OpenMP, for %d)", layer or "default", workers)
    return 1


def single_threaded_kernels():
    """This thread's Numba kernels run on one thread: the pool already keeps every core
    busy, and nested thread teams on a shared machine only wait on each other."""
    from cganraw.ops import _cpu

    nb = _cpu.start_threads()
    if nb is not None:
        nb.set_num_threads(1)


def single_threaded_blas():
    """One BLAS thread per render thread, for the same reason; returns the limiter (keep
    it), or None where threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning("threadpoolctl is missing: each render's BLAS calls use every core")
        return None
    return threadpool_limits(1, user_api="blas")


class PoolBusy(Exception):
    """Every render slot and queue place is taken."""


class RenderPool:
    """`workers` render threads, each with its own copy of the models, and room for
    `queue` more requests waiting; beyond that, submit raises PoolBusy at once."""

    def __init__(self, renderer, workers, queue):
        self.renderer, self.workers, self.queue = renderer, int(workers), int(queue)
        self.capacity = self.workers + self.queue
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._held = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cganraw-render")

    @property
    def in_flight(self) -> int:
        return self._held

    def _run(self, fn, args):
        own = getattr(self._local, "renderer", None)
        if own is None:
            if self.workers > 1:
                single_threaded_kernels()
            own = self._local.renderer = self.renderer.clone()
        return fn(own, *args)

    def _release(self, _future):
        with self._lock:
            self._held -= 1
        self._slots.release()

    def submit(self, fn, *args):
        """Future of fn(thread's renderer, *args); PoolBusy when the queue is full."""
        if not self._slots.acquire(blocking=False):
            raise PoolBusy
        with self._lock:
            self._held += 1
        try:
            future = self._executor.submit(self._run, fn, args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return future

    def shutdown(self):
        self._executor.shutdown(wait=False, cancel_futures=True)


class PNGCache:
    """Least-recently-used PNG bytes by request, bounded in entries and bytes."""

    def __init__(self, max_entries=DEFAULT_CACHE_ENTRIES, max_bytes=DEFAULT_CACHE_BYTES):
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._items = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._items)

    @property
    def nbytes(self):
        return self._bytes

    def get(self, key):
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key, png):
        if self.max_entries <= 0 or len(png) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = png
            self._bytes += len(png)
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def _json_body(body):
    data = json.dumps(body).encode()
    return data, [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]


class Guard:
    """ASGI middleware: reads each request body first, refusing one over `limit` bytes
    with 413 (by its Content-Length, or as it streams in), then hands the app the body it
    read; marks every response nosniff."""

    def __init__(self, app, limit=MAX_BODY):
        self.app, self.limit = app, int(limit)

    async def _refuse(self, send):
        data, headers = _json_body({"detail": f"request body over {self.limit} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": headers + [(b"x-content-type-options", b"nosniff"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": data})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":      # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        async def marked_send(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", []))
                               + [(b"x-content-type-options", b"nosniff")])
            await send(message)

        await self.app(scope, replay, marked_send)


def create_app(renderer, *, workers=None, queue=DEFAULT_QUEUE, render_timeout=DEFAULT_TIMEOUT,
               cache_entries=DEFAULT_CACHE_ENTRIES, cache_bytes=DEFAULT_CACHE_BYTES, cors=(), max_body=MAX_BODY):
    """The FastAPI app around `renderer` (its models already loaded and checked)."""
    from fastapi import FastAPI, Request  # the .[serve] extra
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field

    workers = threadsafe_kernels(default_workers() if workers is None else int(workers))
    pool = RenderPool(renderer, workers, queue)
    cache = PNGCache(cache_entries, cache_bytes)
    web = resources.files("cganraw") / "web"
    pages = {route: (web.joinpath(name).read_bytes(), kind) for route, (name, kind) in WEB_FILES.items()}

    class RenderRequest(BaseModel):
        """What to write and how. Everything but `text` is optional."""
        model_config = ConfigDict(extra="forbid", strict=True)
        text: str = Field(description=f"up to {render.MAX_CHARS} characters and {render.MAX_LINES} lines of "
                                      "characters the loaded models write, spaces and newlines",
                          examples=["0800 2026"])
        seed: int | None = Field(None, ge=0, le=render.MAX_SEED,
                                    description="fixes the hand; a random one is used (and returned) when absent")
        style: Literal["same", "varied"] = Field("same", description="one hand per word, or per glyph")
        layout: Literal["proportional", "monospace"] = Field(
            "proportional", description="glyphs cut to their ink, or one 28x28 cell per character")
        scale: int = Field(1, ge=1, le=4, description="pixels per model pixel")
        ink: Literal["dark", "light"] = Field("dark", description="dark on white, or white on black as in MNIST")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown()

    app = FastAPI(title="cganraw", version=__import__("cganraw").__version__, lifespan=lifespan,
                  description="Text written in handwriting generated by conditional GANs.")
    app.state.pool, app.state.cache, app.state.renderer = pool, cache, renderer
    app.state.render_timeout = float(render_timeout)

    def busy(detail):
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER})

    @app.post("/api/v1/render", response_class=Response, summary="Write text as a PNG",
              responses={200: {"content": {"image/png": {}}, "description": "the image; the seed in X-Seed"},
                         422: {"description": "text or options unusable; unwritable characters listed"},
                         413: {"description": "body over 16 KiB"},
                         503: {"description": "render queue full or render too slow; retry after Retry-After"}})
    async def render_text(req: RenderRequest):
        try:
            renderer.check(req.text)        # the regular expression, before any model runs
        except render.TextError as e:
            return JSONResponse({"detail": [{"type": "text", "loc": ["body", "text"], "msg": str(e),
                                             "characters": e.characters}]}, status_code=422)
        seed = req.seed if req.seed is not None else secrets.randbelow(render.MAX_SEED + 1)
        key = (req.text, seed, req.style, req.layout, req.scale, req.ink)
        png, hit = cache.get(key), True
        if png is None:
            hit = False
            deadline = time.monotonic() + app.state.render_timeout
            try:
                future = pool.submit(_render_png, key, deadline)
            except PoolBusy:
                return busy(f"all {pool.capacity} render places are taken: retry shortly")
            try:
                png = await asyncio.wait_for(asyncio.wrap_future(future), app.state.render_timeout)
            except (asyncio.TimeoutError, render.RenderTimeout):
                future.cancel()
                return busy(f"the render took longer than {app.state.render_timeout:g} s")
            cache.put(key, png)
        return Response(png, media_type="image/png",
                        headers={"X-Seed": str(seed), "X-Cache": "hit" if hit else "miss",
                                 "Cache-Control": "no-store",
                                 "Content-Disposition": 'inline; filename="handwriting.png"'})

    @app.get("/api/v1/models", summary="The loaded models, in routing order")
    async def list_models():
        return {"models": [m.describe() for m in renderer.models], "characters": renderer.charset,
                "limits": {"max_chars": render.MAX_CHARS, "max_lines": render.MAX_LINES, "scales": list(render.SCALES),
                           "max_seed": render.MAX_SEED, "max_body_bytes": max_body}}

    @app.get("/healthz", summary="Liveness and load")
    async def healthz():
        return {"status": "ok", "models": [m.name for m in renderer.models], "workers": pool.workers,
                "queue": pool.queue, "in_flight": pool.in_flight, "cached": len(cache)}

    def page(route):
        body, kind = pages[route]

        async def serve_file(_request: Request):
            return Response(body, media_type=kind, headers={"Content-Security-Policy": PAGE_CSP,
                                                            "Referrer-Policy": "no-referrer",
                                                            "X-Frame-Options": "DENY"})
        return serve_file

    for route in WEB_FILES:
        app.add_api_route(route, page(route), methods=["GET"], include_in_schema=False)

    if cors:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"], expose_headers=["X-Seed"])
    app.add_middleware(Guard, limit=max_body)
    return app


def _render_png(renderer, key, deadline):
    text, seed, style, layout, scale, ink = key
    return renderer.render_png(text, seed=seed, style=style, layout=layout, scale=scale, ink=ink, deadline=deadline)


def build_parser():
    p = cli.ArgumentParser(prog="python -m cganraw.serve", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.number(int, lambda v: 0 < v < 65536, "a port 1..65535"), default=8000)
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="add a model (exported .npz, checkpoint or run directory); repeatable; "
                        "digits=PATH replaces the shipped digits model")
    p.add_argument("--workers", type=cli.positive_int, default=None, help="render threads (default: one per core)")
    p.add_argument("--queue", type=cli.nonneg_int, default=DEFAULT_QUEUE,
                   help="requests that may wait for a render thread; more get 503")
    p.add_argument("--render-timeout", type=cli.positive_float, default=DEFAULT_TIMEOUT,
                   help="seconds a request may wait for its image, queue included")
    p.add_argument("--cache-entries", type=cli.nonneg_int, default=DEFAULT_CACHE_ENTRIES,
                   help="rendered images kept in memory (0: no cache)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (e.g. https://example.org) to call the API; repeatable")
    p.add_argument("--backend", choices=backend.BACKENDS, default=None)
    return cli.add_common_flags(p)


def _main(args):
    cli.setup_logging(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise cli.CLIError(f"{e.name} is missing: pip install 'cganraw[serve]'") from None
    if args.backend:
        backend.use(args.backend)
    renderer = render.Renderer(render.load_models(args.model))
    renderer.clone().render("0" if "0" in renderer.route else renderer.charset[0])   # compile the kernels once
    app = create_app(renderer, workers=args.workers, queue=args.queue, render_timeout=args.render_timeout,
                     cache_entries=args.cache_entries, cors=args.cors)
    blas_limit = single_threaded_blas() if app.state.pool.workers > 1 else None  # noqa: F841  (held while serving)
    log.info("models: %s; characters: %s", ", ".join(f"{m.name} ({m.source})" for m in renderer.models),
             renderer.charset)
    log.info("serving on http://%s:%d/ (%d render threads, queue %d)", args.host, args.port,
             app.state.pool.workers, app.state.pool.queue)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="debug" if args.debug else "warning",
                            limit_concurrency=max(64, 4 * app.state.pool.capacity), timeout_keep_alive=5,
                            server_header=False, access_log=False)
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise cli.CLIError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this machine)")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run(_main, args, expected=(render.RenderError, render.ModelLoadError))


if __name__ == "__main__":
    sys.exit(main())
