"""One full training step (D on real, D on fake, then G through the updated D, Adam on
both; cganraw.train.train_step) for each model at batch 64 and 128, conv models at
width 128, in images/s. (The untimed smoke run of the normal test suite uses batch 2 and width 16.)

Peer: on the NumPy backend, where PyTorch is installed, the same architecture in PyTorch
(tests/torch_ports.py: same layers, widths and batch; Adam(betas=(0.5, 0.999)),
BCEWithLogits; the same order: fake generated once, D on fake.detach(), then G through
the updated D with D's parameters frozen as ours are) runs interleaved with ours, round
by round, with torch.set_num_threads equal to our BLAS/Numba thread count. The record
holds both medians and the ratio cganraw/PyTorch of time per step (< 1: ours is faster).

    pytest bench/bench_train_step.py --benchmark-enable --benchmark-only
"""
import importlib.util
import os
import time

import numpy as np
import pytest

import _benchlib as bl
from cganraw import models, optim, train

MODEL_NAMES = list(models.MODELS)
NUM_CLASSES = 10
LATENT = 100


def _torch():
    try:
        import torch  # noqa: PLC0415
    except Exception:  # missing, or a broken install
        return None
    return torch


def _torch_ports():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "torch_ports.py")
    spec = importlib.util.spec_from_file_location("cganraw_bench_torch_ports", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(batch, conditional, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch) if conditional else None
    return x, y


def torch_train_step(torch, name, batch, width, x_np, y_np, seed=0):
    """A closure running one PyTorch training step in our order; returns it."""
    torch.manual_seed(seed)
    G, D = _torch_ports().build_torch(torch, name, NUM_CLASSES, latent_dim=LATENT, width=width)
    G.train()
    D.train()
    og = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = torch.nn.BCEWithLogitsLoss()
    x = torch.from_numpy(x_np)
    y = None if y_np is None else torch.from_numpy(np.asarray(y_np, dtype=np.int64))
    conditional = y is not None
    ones = torch.ones(batch, 1)
    zeros = torch.zeros(batch, 1)
    gen = torch.Generator().manual_seed(seed)

    def step():
        z = torch.randn(batch, LATENT, generator=gen)
        fl = torch.randint(0, NUM_CLASSES, (batch,), generator=gen) if conditional else None
        od.zero_grad()
        loss_real = bce(D(x, y), ones)
        loss_real.backward()
        fake = G(z, fl)
        loss_fake = bce(D(fake.detach(), fl), zeros)
        loss_fake.backward()
        od.step()
        og.zero_grad()
        D.requires_grad_(False)
        loss_g = bce(D(fake, fl), ones)
        loss_g.backward()
        D.requires_grad_(True)
        og.step()
        return float(loss_real.detach() + loss_fake.detach()), float(loss_g.detach())
    return step


def _our_step(name, batch, width, xp, x_np, y_np, seed=0):
    G, D = models.build(name, NUM_CLASSES, latent_dim=LATENT, width=width, seed=seed)
    og, od = optim.Adam(G.parameters()), optim.Adam(D.parameters())
    x = xp.asarray(x_np)
    y = None if y_np is None else xp.asarray(y_np)
    rng = np.random.default_rng(seed)
    return lambda: train.train_step(G, D, og, od, x, y, rng)


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_train_step(benchmark, bench_ctx, use_backend, batch, model):
    name, xp = use_backend
    width = bl.model_width(bench_ctx["mode"])   # 128; narrower only in the untimed smoke run
    conditional = model.startswith("cgan")
    x_np, y_np = _data(batch, conditional)
    ours = _our_step(model, batch, width, xp, x_np, y_np)
    shape = f"N={batch}" + (f" width={width}" if model in ("cgan-conv", "dcgan") else "")
    torch = _torch() if name == "numpy" else None

    if name != "numpy" or torch is None:
        if name == "numpy":
            benchmark.extra_info["peer"] = "torch not installed: no peer comparison"
        stats = bl.measure(benchmark, ours, op=f"train_step {model}", shape=shape, backend=name, family="train",
                           ctx=bench_ctx, items=batch, rounds=bl.TRAIN_ROUNDS[bench_ctx["mode"]])
        assert np.isfinite(stats["d_loss"]) and np.isfinite(stats["g_loss"])
        return

    # ours timed by pytest-benchmark; PyTorch's step runs (and is timed) in the setup of
    # each round, so the two alternate: torch, ours, torch, ours, ...
    if bench_ctx.get("threads"):
        torch.set_num_threads(bench_ctx["threads"])
    peer = torch_train_step(torch, model, batch, width, x_np, y_np)
    torch_times = []

    def run_peer():
        t = time.perf_counter()
        losses = peer()
        torch_times.append(time.perf_counter() - t)
        assert all(np.isfinite(losses))

    benchmark.group = f"train_step {model} {shape}"
    benchmark.extra_info.update({"op": f"train_step {model}", "shape": shape, "backend": name, "family": "train"})
    rounds = bl.TRAIN_ROUNDS[bench_ctx["mode"]]
    stats = benchmark.pedantic(ours, setup=run_peer, rounds=rounds, warmup_rounds=1, iterations=1)
    assert np.isfinite(stats["d_loss"]) and np.isfinite(stats["g_loss"])
    if not benchmark.enabled:
        return
    ours_times = list(benchmark.stats.stats.data)
    torch_times = torch_times[-len(ours_times):]          # the warm-up round's peer step is dropped
    t_ours, t_torch = float(np.median(ours_times)), float(np.median(torch_times))
    bl.record_throughput(benchmark.extra_info, t_ours, {}, items=batch)
    benchmark.extra_info["timer"] = "perf_counter"
    benchmark.extra_info.update({
        "peer": "torch", "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "torch_time_s": t_torch, "torch_images_per_s": batch / t_torch,
        "ratio_vs_torch": t_ours / t_torch,
        "ratio_vs_torch_paired_median": float(np.median(np.asarray(ours_times) / np.asarray(torch_times))),
        "ours_times_s": ours_times, "torch_times_s": torch_times})
