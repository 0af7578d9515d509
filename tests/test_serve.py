"""The HTTP API and page of `cganraw.serve`, through FastAPI's TestClient: every endpoint,
every limit, determinism per seed and the monospace geometry."""
import builtins
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cganraw import render, serve
from tests.writing import LETTERS, make_run

ROOT = Path(__file__).resolve().parents[1]
URL = "/api/v1/render"


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("runs") / "letters", LETTERS)
    return render.Renderer(render.load_models([f"letters={run}"]))


@pytest.fixture
def make_client(renderer):
    clients = []

    def make(**kw):
        kw.setdefault("workers", 1)
        app = serve.create_app(renderer, **kw)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client
    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def image(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(resp.content)))


# ------------------------------------------------------------------ the endpoints ------

def test_render_returns_a_png_and_the_seed_used(client):
    r = client.post(URL, json={"text": "Call 0800 2026", "seed": 42})
    a = image(r)
    assert r.headers["x-seed"] == "42" and a.ndim == 2 and a.shape[0] == 28 + 2 * render.MARGIN
    assert a.max() == 255 and a.min() < 128                   # dark ink on white paper
    r2 = client.post(URL, json={"text": "Call 0800 2026"})
    seed = int(r2.headers["x-seed"])
    assert 0 <= seed <= render.MAX_SEED
    again = client.post(URL, json={"text": "Call 0800 2026", "seed": seed})
    assert again.content == r2.content                        # the header gives the hand back


def test_same_request_same_seed_same_bytes_without_the_cache(make_client):
    c = make_client(cache_entries=0)
    body = {"text": "Hello 2026\nok", "seed": 7, "style": "varied", "scale": 2, "ink": "light"}
    first = c.post(URL, json=body)
    assert first.headers["x-cache"] == "miss"
    second = c.post(URL, json=body)
    assert second.headers["x-cache"] == "miss" and second.content == first.content
    assert c.post(URL, json=dict(body, seed=8)).content != first.content
    assert c.post(URL, json=dict(body, style="same")).content != first.content


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_monospace_geometry_through_the_api(client, renderer, scale):
    text = "ab 1\n2"
    a = image(client.post(URL, json={"text": text, "seed": 3, "layout": "monospace", "scale": scale, "ink": "light"}))
    c = 28 * scale
    assert a.shape == (2 * c, 4 * c)
    glyphs = renderer.glyphs(text, seed=3)
    for k, (j, i) in enumerate([(0, 0), (0, 1), (0, 3), (1, 0)]):
        cell = a[j * c:(j + 1) * c, i * c:(i + 1) * c]
        np.testing.assert_array_equal(cell, np.repeat(np.repeat(glyphs[k], scale, 0), scale, 1))
    assert not a[0:c, 2 * c:3 * c].any() and not a[c:, c:].any()


def test_models_endpoint(client):
    r = client.get("/api/v1/models")
    assert r.status_code == 200
    doc = r.json()
    names = [m["name"] for m in doc["models"]]
    assert names == ["digits", "letters"]
    digits, letters = doc["models"]
    assert digits["characters"] == "0123456789" and digits["shipped"] and digits["source"] == "digits.npz"
    assert digits["dataset"] == "mnist" and "training_command" in digits and "metrics" in digits
    assert letters["characters"].startswith("ABC") and "z" in letters["characters"]
    assert letters["source"] == "last.npz" and "/" not in letters["source"]
    assert doc["characters"] == "".join(sorted(set("0123456789") | set(letters["characters"])))
    assert doc["limits"]["max_chars"] == 256 and doc["limits"]["max_body_bytes"] == 16384


def test_healthz_and_docs(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["models"] == ["digits", "letters"]
    assert h.json()["in_flight"] == 0
    spec = client.get("/openapi.json").json()
    assert URL in spec["paths"] and "/api/v1/models" in spec["paths"] and "/healthz" in spec["paths"]
    props = spec["components"]["schemas"]["RenderRequest"]["properties"]
    assert set(props) == {"text", "seed", "style", "layout", "scale", "ink"}
    assert client.get("/docs").status_code == 200


def test_the_page_is_served_whole_by_the_app(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for marker in ('id="text"', 'id="seed"', 'id="new-hand"', 'id="result"', 'id="download"', 'id="error"',
                   'role="alert"', 'name="viewport"', 'src="/app.js"', 'href="/style.css"'):
        assert marker in html, marker
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for path in ("/app.js", "/style.css"):
        assert client.get(path).status_code == 200
    for text in (html, client.get("/app.js").text, client.get("/style.css").text):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text   # nothing from elsewhere
    assert r.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------ 422 ----------------

def detail(resp):
    assert resp.status_code == 422, resp.text
    return resp.json()["detail"]


@pytest.mark.parametrize("text, expect", [
    ("", "empty"), ("  ", "empty"), ("1" * 257, "257 characters"), ("\n".join("123456789"), "9 lines")])
def test_unusable_text_is_422(client, text, expect):
    (d,) = detail(client.post(URL, json={"text": text}))
    assert expect in d["msg"] and d["loc"] == ["body", "text"]


def test_unwritable_characters_are_named_before_any_model_runs(client, monkeypatch):
    calls = []
    monkeypatch.setattr(client.app.state.pool, "submit", lambda *a: calls.append(a))
    (d,) = detail(client.post(URL, json={"text": "Grüße, 2026!"}))
    assert d["characters"] == ["ü", "ß", ",", "!"] and "'ü'" in d["msg"]
    (d,) = detail(client.post(URL, json={"text": "a\tb\r\n"}))
    assert d["characters"] == ["\t", "\r"]
    assert calls == []


@pytest.mark.parametrize("body", [
    {"text": 5}, {"text": ["1"]}, {"text": None}, {}, {"text": "1", "seed": "5"}, {"text": "1", "seed": 1.5},
    {"text": "1", "scale": "2"}, {"text": "1", "scale": 2.0}, {"text": "1", "scale": True},
    {"text": "1", "scale": 0}, {"text": "1", "scale": 5}, {"text": "1", "seed": -1}, {"text": "1", "seed": 2**32},
    {"text": "1", "style": "wild"}, {"text": "1", "layout": "grid"}, {"text": "1", "ink": "red"},
    {"text": "1", "path": "/etc/passwd"}, {"text": "1", "font": "x"}, ["1"], "1",
])
def test_malformed_requests_are_422(client, body):
    assert detail(client.post(URL, json=body))


def test_bad_json_is_422(client):
    for raw in (b"{", b"{'text': '1'}", b"\xff\xfe", b"", b"null"):
        r = client.post(URL, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (raw, r.status_code)


# ------------------------------------------------------------------ 413 ----------------

def test_body_over_16_kib_is_413(client):
    r = client.post(URL, json={"text": "1" * (16 * 1024)})
    assert r.status_code == 413 and "16384" in r.json()["detail"]
    assert client.post(URL, json={"text": "1" * 256}).status_code == 200


def test_streamed_body_over_16_kib_is_413(client):
    def chunks():
        yield b'{"text": "'
        for _ in range(40):
            yield b"1" * 1024
        yield b'"}'
    r = client.post(URL, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_body_at_the_limit_is_read(client):
    pad = 16 * 1024 - len(json.dumps({"text": "1", "style": ""}).encode())
    body = json.dumps({"text": "1", "style": " " * pad}).encode()
    assert len(body) == 16 * 1024
    r = client.post(URL, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422                                 # read and judged, not refused for size


# ------------------------------------------------------------------ load limits --------

def _block(pool):
    """Occupy one render thread until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def wait(_renderer):
        started.set()
        gate.wait(30)
    future = pool.submit(wait)
    assert started.wait(10)
    return gate, future


def test_a_full_queue_is_503_with_retry_after(make_client):
    c = make_client(workers=1, queue=1)
    pool = c.app.state.pool
    assert pool.capacity == 2
    gate, running = _block(pool)
    pool.submit(lambda _renderer: None)                # takes the one queue place
    r = c.post(URL, json={"text": "12", "seed": 1})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "render places" in r.json()["detail"]
    gate.set()
    running.result(10)
    for _ in range(100):
        if pool.in_flight == 0:
            break
        time.sleep(0.05)
    assert pool.in_flight == 0
    assert c.post(URL, json={"text": "12", "seed": 1}).status_code == 200


def test_a_render_past_its_time_limit_is_503_and_frees_its_place(make_client):
    c = make_client(workers=1, queue=1, render_timeout=0.3)
    pool = c.app.state.pool
    gate, running = _block(pool)
    t0 = time.monotonic()
    r = c.post(URL, json={"text": "12", "seed": 2})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "longer than 0.3 s" in r.json()["detail"]
    assert time.monotonic() - t0 < 10
    assert pool.in_flight == 1                  # the queued render was cancelled, the blocker still runs
    gate.set()
    running.result(10)
    assert c.post(URL, json={"text": "12", "seed": 2}).status_code == 200


def test_the_pool_is_sized_to_the_cores(renderer, monkeypatch):
    monkeypatch.setattr(serve, "threadsafe_kernels", lambda n: n)
    app = serve.create_app(renderer)
    assert app.state.pool.workers == serve.default_workers() == len(os.sched_getaffinity(0))
    assert app.state.pool.queue == serve.DEFAULT_QUEUE
    app.state.pool.shutdown()


def test_unsafe_kernel_threading_falls_back_to_one_thread(monkeypatch):
    class FakeNumba:
        class config:
            THREADING_LAYER = "default"

        @staticmethod
        def threading_layer():
            return "workqueue"
    from cganraw.ops import _cpu
    monkeypatch.setattr(_cpu, "numba", lambda: FakeNumba)
    assert serve.threadsafe_kernels(4) == 1
    FakeNumba.threading_layer = staticmethod(lambda: "omp")
    assert serve.threadsafe_kernels(4) == 4
    monkeypatch.setattr(_cpu, "numba", lambda: None)
    assert serve.threadsafe_kernels(3) == 3


# ------------------------------------------------------------------ cache, files, CORS --

def test_the_cache_is_bounded_and_serves_repeats(make_client):
    c = make_client(cache_entries=2)
    cache = c.app.state.cache
    first = c.post(URL, json={"text": "12", "seed": 1})
    assert first.headers["x-cache"] == "miss"
    hit = c.post(URL, json={"text": "12", "seed": 1})
    assert hit.headers["x-cache"] == "hit" and hit.content == first.content
    for seed in (2, 3, 4):
        c.post(URL, json={"text": "12", "seed": seed})
    assert len(cache) == 2 and c.post(URL, json={"text": "12", "seed": 1}).headers["x-cache"] == "miss"
    small = serve.PNGCache(max_entries=100, max_bytes=250)
    for i in range(5):
        small.put(i, b"x" * 100)
    assert len(small) == 2 and small.nbytes == 200 and small.get(0) is None and small.get(4)


def test_nothing_is_written_to_disk_per_request(client, monkeypatch):
    client.post(URL, json={"text": "1", "seed": 0})              # warm up
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, mode="r", *a, **k):
        if any(ch in mode for ch in "wax+"):
            writes.append(file)
        return real_open(file, mode, *a, **k)

    def spy_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(path)
        return real_os_open(path, flags, *a, **k)
    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    for i in range(5):
        assert client.post(URL, json={"text": f"Hello {i}", "seed": i, "scale": 2}).status_code == 200
    client.get("/")
    client.get("/api/v1/models")
    client.post(URL, json={"text": "é"})
    assert writes == []


def test_no_cors_unless_asked(make_client):
    c = make_client()
    origin = {"Origin": "https://elsewhere.example"}
    r = c.post(URL, json={"text": "1", "seed": 0}, headers=origin)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = c.options(URL, headers={**origin, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 405 and "access-control-allow-origin" not in pre.headers
    c2 = make_client(cors=["https://app.example"])
    ok = c2.post(URL, json={"text": "1", "seed": 0}, headers={"Origin": "https://app.example"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-seed" in ok.headers["access-control-expose-headers"].lower()
    other = c2.post(URL, json={"text": "1", "seed": 0}, headers=origin)
    assert "access-control-allow-origin" not in other.headers
    pre2 = c2.options(URL, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                    "Access-Control-Request-Headers": "content-type"})
    assert pre2.status_code == 200 and pre2.headers["access-control-allow-origin"] == "https://app.example"


# ------------------------------------------------------------------ the command --------

def test_serve_defaults_to_localhost_8000():
    args = serve.build_parser().parse_args([])
    assert (args.host, args.port, args.cors, args.queue) == ("127.0.0.1", 8000, [], serve.DEFAULT_QUEUE)


def _serve(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cganraw.serve", *args], check=False, capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_missing_or_corrupt_model_stops_the_server_naming_the_file(tmp_path):
    p = _serve("--model", f"x={tmp_path / 'gone.npz'}", "--port", "1")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "gone.npz: model file not found" in p.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 torn")
    p = _serve("--model", f"x={bad}", "--port", "1")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and str(bad) in p.stderr, p.stderr
    p = _serve("--model", "nonsense", "--port", "1")
    assert p.returncode == 1 and "NAME=PATH" in p.stderr
    p = _serve("--port", "70000")
    assert p.returncode == 2
