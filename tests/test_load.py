"""Load test of `python -m cganraw.serve`: a real uvicorn on 127.0.0.1, the shipped model,
300 requests at concurrency 16. Passes when no answer is a 5xx other than the designed 503
(with Retry-After), every image is the one the renderer draws for its request, and the
server is healthy afterwards. Speed is reported, never asserted:

    python tests/test_load.py            # prints p50/p99 latency and requests/s as JSON
"""
import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PHRASES = ["0800 2026", "0800 2026 12", "12 34 56", "2026\n0800", "31 12 1999", "7", "000 111 222 333",
           "42", "1 2 3 4 5 6 7 8 9 0", "555 0199"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(*args, log_path=None):
    """`python -m cganraw.serve` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log_path or os.devnull, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cganraw.serve", "--port", str(port), "--quiet", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer /healthz within 180 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def requests_mix(n):
    """n different render requests (no two alike, so the cache cannot answer): digits
    phrases of 1 to 19 characters, both layouts, scales 1-2, both styles."""
    out = []
    for i in range(n):
        out.append({"text": PHRASES[i % len(PHRASES)], "seed": 1000 + i,
                    "layout": "monospace" if i % 3 == 0 else "proportional", "scale": 1 + i % 2,
                    "style": "varied" if i % 5 == 0 else "same"})
    return out


async def _fire(base, bodies, concurrency):
    results = [None] * len(bodies)
    queue = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/api/v1/render", json=bodies[i])
                results[i] = (r.status_code, time.perf_counter() - t0, r.headers, r.content)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


def run_load(base, bodies, concurrency):
    """Send `bodies` with `concurrency` requests in flight: (results, summary)."""
    results, elapsed = asyncio.run(_fire(base, bodies, concurrency))
    lat = sorted(r[1] for r in results if r[0] == 200)
    pick = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)) if lat else (lambda q: None)
    summary = {"requests": len(bodies), "concurrency": concurrency, "statuses": dict(Counter(r[0] for r in results)),
               "cache_hits": sum(r[2].get("x-cache") == "hit" for r in results),
               "p50_ms": pick(0.50), "p99_ms": pick(0.99), "req_per_s": round(len(bodies) / elapsed, 1),
               "seconds": round(elapsed, 2)}
    return results, summary


def check_answers(results, bodies):
    """Only 200 and the designed 503 (with Retry-After); images decode; the 200s' bytes
    equal what the renderer draws for their requests."""
    from PIL import Image

    from cganraw import render
    statuses = Counter(r[0] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    for status, _, headers, content in results:
        if status == 503:
            assert headers.get("retry-after") == "1"
        else:
            assert headers["content-type"] == "image/png" and Image.open(io.BytesIO(content)).size[0] > 0
    local = render.Renderer(render.load_models())
    for i in range(0, len(bodies), max(1, len(bodies) // 12)):
        if results[i][0] == 200:
            b = bodies[i]
            options = {k: b[k] for k in ("layout", "scale", "style", "ink") if k in b}
            assert results[i][3] == local.render_png(b["text"], seed=b["seed"], **options), \
                f"request {i} drew something else"
    return statuses


def check_healthy(base):
    for _ in range(100):
        h = httpx.get(base + "/healthz", timeout=10)
        assert h.status_code == 200 and h.json()["status"] == "ok"
        if h.json()["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert h.json()["in_flight"] == 0
    r = httpx.post(base + "/api/v1/render", json={"text": "0800 2026", "seed": 1}, timeout=60)
    assert r.status_code == 200 and r.headers["x-seed"] == "1"


def test_300_requests_at_concurrency_16(tmp_path):
    bodies = requests_mix(300)
    with running_server(log_path=tmp_path / "server.log") as base:
        results, summary = run_load(base, bodies, 16)
        statuses = check_answers(results, bodies)
        assert statuses[200] >= len(bodies) // 2, summary
        check_healthy(base)
    print("\nload:", json.dumps(summary))


def test_overload_is_refused_with_503_and_retry_after(tmp_path):
    """One render thread and one queue place against 16 at once: the rest are 503s."""
    bodies = [{"text": f"{i:03d} " + "0123456789" * 4, "seed": i, "style": "varied"} for i in range(48)]
    with running_server("--workers", "1", "--queue", "1", log_path=tmp_path / "server.log") as base:
        results, summary = run_load(base, bodies, 16)
        statuses = check_answers(results, bodies)
        assert statuses[503] > 0 and statuses[200] > 0, summary
        check_healthy(base)
    print("\noverload:", json.dumps(summary))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    reqs = requests_mix(300)
    with running_server() as url:
        res, summ = run_load(url, reqs, 16)
        check_answers(res, reqs)
        check_healthy(url)
    print(json.dumps(summ))
