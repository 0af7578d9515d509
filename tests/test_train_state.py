"""The state that evolves over a run, proven against closed forms through the trainer's
own path (python -m cganraw.train on tiny synthetic data): the moving average of G
after k steps, the learning rates each optimiser actually stepped with under the
schedule, and --lr-d. The pure functions of cganraw.step are checked at chosen points.

The optimisers' steps are observed by wrapping Adam.step: the gradient and the
parameters before and after each real update. The effective rate of a step is then
read off the update itself, against an independent float64 Adam run on the same
gradients, so a rate stored but not used, or used with the wrong scale, shows."""
import numpy as np
import pytest

from cganraw import checkpoint, models, nn, train
from cganraw.optim import Adam
from cganraw.step import ema_decay_at, lr_scale, update_ema
from tests.proof import run_trainer
from tests.synthetic import write_emnist

LR, LR_D, BETAS, EPS = 1e-3, 3e-3, (0.5, 0.999), 1e-8
EMA = 0.55          # the warm-up (1 + k) / (10 + k) reaches it at step 10 of 12
DECAY_START = 0.5
STEPS_PER_EPOCH, EPOCHS = 6, 2       # 48 images, batch 8


def expected_scale(frac, start):
    """The documented schedule: constant, then linear to 0 over the last 1 - start."""
    return 1.0 if frac <= start else (1.0 - frac) / (1.0 - start)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_emnist(d, "letters", np.random.default_rng(0), n=(48, 16))
    return d


def observed_run(out, data_dir, *extra):
    """Train with the trainer's defaults (model, BatchNorm, ...) at width 4 and record
    every optimiser step. Returns (records per network: "G"/"D", the final checkpoint, the
    G the trainer built and trained)."""
    steps, built = [], []
    real_step, real_build = Adam.step, models.build

    def recording(self):
        rec = {"grads": [np.array(p.grad, dtype=np.float64) for p in self.params],
               "before": [np.array(p.data, dtype=np.float64) for p in self.params]}
        real_step(self)
        rec["after"] = [np.array(p.data, dtype=np.float64) for p in self.params]
        steps.append((self.params[0], rec))

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Adam, "step", recording)
        mp.setattr(models, "build", build)
        # --threads given: a measured pick would time steps of a throwaway copy, whose Adam steps count here
        argv = ["--dataset", "emnist", "--data-dir", data_dir, "--out", out, "--width", 4, "--batch-size", 8,
                "--backend", "numpy", "--quiet", "--no-download", "--threads", 1, *extra]
        assert run_trainer(argv) == 0
    G, D = built[0]                                   # the pair the trainer trains
    named = {who: [rec for first, rec in steps if first is net.parameters()[0]] for who, net in (("G", G), ("D", D))}
    assert sum(map(len, named.values())) == len(steps), "an optimiser stepped parameters of neither G nor D"
    return named, checkpoint.load(out), G


@pytest.fixture(scope="module")
def scheduled_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs") / "scheduled"
    return observed_run(out, data_dir, "--epochs", EPOCHS, "--lr", LR, "--lr-d", LR_D, "--ema-decay", EMA,
                        "--lr-decay-start", DECAY_START, "--beta1", BETAS[0], "--beta2", BETAS[1],
                        "--g-norm", "batch")


def effective_rates(records, betas=BETAS, eps=EPS):
    """The learning rate each step applied: its update divided by Adam's direction,
    m_hat / (sqrt(v_hat) + eps), computed in float64 from the recorded gradients."""
    b1, b2 = betas
    m = [np.zeros_like(g) for g in records[0]["grads"]]
    v = [np.zeros_like(g) for g in records[0]["grads"]]
    rates = []
    for t, rec in enumerate(records, start=1):
        ratios = []
        for i, g in enumerate(rec["grads"]):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
            clear = np.abs(u) > 0.5          # a well-defined direction, far above rounding
            ratios.append((rec["before"][i] - rec["after"][i])[clear] / u[clear])
        r = np.concatenate(ratios)
        assert r.size > 100
        # float32 parameters round each update by about 1e-4 of itself; the spread of
        # the per-element rates shows a rate that differs between elements (a wrong Adam)
        assert np.percentile(r, 95) - np.percentile(r, 5) <= 2e-3 * abs(np.median(r)), (t, np.percentile(r, [5, 95]))
        rates.append(float(np.median(r)))
    return rates


def test_both_optimisers_step_at_the_scheduled_rates(scheduled_run):
    named, ck, _ = scheduled_run
    total = EPOCHS * STEPS_PER_EPOCH
    assert ck["meta"]["step"] == total
    for who, base in (("G", LR), ("D", LR_D)):
        assert len(named[who]) == total
        want = [base * expected_scale(k / total, DECAY_START) for k in range(total)]
        got = effective_rates(named[who])
        np.testing.assert_allclose(got, want, rtol=1e-3, err_msg=f"{who}'s effective learning rates")
    # the schedule really decays: the last step runs at 1/6 of the base rate
    assert want[-1] == pytest.approx(LR_D / 6)


def test_ema_after_k_steps_is_its_closed_form(scheduled_run):
    named, ck, G = scheduled_run
    names = [n for n, _ in G.named_parameters()]
    records = named["G"]
    ema = [p.copy() for p in records[0]["before"]]     # G_ema starts as a copy of G
    decays = []
    for k, rec in enumerate(records, start=1):          # k: finished steps
        d = min(EMA, (1 + k) / (10 + k))
        decays.append(d)
        ema = [d * e + (1 - d) * p for e, p in zip(ema, rec["after"])]
    assert decays[0] < decays[1] < EMA == decays[-1]    # both the ramp and the cap ran
    for name, want in zip(names, ema):
        np.testing.assert_allclose(ck["G_ema"][name], want, rtol=2e-5, atol=1e-6, err_msg=f"G_ema.{name}")
    assert any(not np.allclose(ck["G"][n], w, rtol=1e-2, atol=1e-6) for n, w in zip(names, ema))
    # BatchNorm's running statistics are copied, not averaged (--g-norm batch: G has them)
    buffers = [k for k in ck["G"] if k not in names]
    assert any("running_mean" in k for k in buffers)
    for k in buffers:
        np.testing.assert_array_equal(ck["G_ema"][k], ck["G"][k], err_msg=f"G_ema buffer {k}")


def test_lr_d_defaults_per_model(tmp_path, data_dir):
    # cgan-conv's D has its own rate (TTUR, settings.MODEL_DEFAULTS); the other models' follows --lr
    betas = ("--beta1", BETAS[0], "--beta2", BETAS[1])      # effective_rates replays Adam with these
    named, _, _ = observed_run(tmp_path / "conv", data_dir, "--max-steps", 2, "--lr", 5e-4, *betas)
    np.testing.assert_allclose(effective_rates(named["G"]), [5e-4, 5e-4], rtol=1e-3, err_msg="G")
    lr_d = train.MODEL_DEFAULTS["cgan-conv"]["lr_d"]
    np.testing.assert_allclose(effective_rates(named["D"]), [lr_d, lr_d], rtol=1e-3, err_msg="D")
    named, _, _ = observed_run(tmp_path / "mlp", data_dir, "--max-steps", 2, "--lr", 5e-4, "--model", "cgan-mlp",
                               *betas)
    for who in ("G", "D"):
        np.testing.assert_allclose(effective_rates(named[who]), [5e-4, 5e-4], rtol=1e-3, err_msg=who)


# ------------------------------------------------------------------ the pure functions

@pytest.mark.parametrize("start,points", [
    (0.5, [(0.0, 1.0), (0.25, 1.0), (0.5, 1.0), (0.6, 0.8), (0.75, 0.5), (0.9, 0.2), (1.0, 0.0)]),
    (0.8, [(0.5, 1.0), (0.8, 1.0), (0.9, 0.5), (0.95, 0.25), (1.0, 0.0)]),
    (0.0, [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (1.0, 0.0)]),
    (1.0, [(0.0, 1.0), (0.5, 1.0), (0.99, 1.0), (1.0, 1.0)]),
])
def test_lr_scale_at_chosen_fractions(start, points):
    for frac, want in points:
        assert lr_scale(frac, start) == pytest.approx(want, abs=1e-12), (start, frac)


def test_ema_decay_ramps_from_a_tenth_to_its_cap():
    assert ema_decay_at(0, 0.9995) == pytest.approx(0.1)
    assert ema_decay_at(1, 0.9995) == pytest.approx(2 / 11)
    assert ema_decay_at(90, 0.9995) == pytest.approx(91 / 100)
    assert ema_decay_at(10 ** 6, 0.9995) == 0.9995
    assert ema_decay_at(12, 0.5) == 0.5 and ema_decay_at(7, 0.5) == pytest.approx(8 / 17)


def test_update_ema_moves_a_fraction_and_copies_buffers():
    G, _ = models.build("cgan-conv", 3, latent_dim=4, width=2, seed=0, batchnorm=True)
    G_ema, _ = models.build("cgan-conv", 3, latent_dim=4, width=2, seed=1, batchnorm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for _, m in G.named_modules())
    rng = np.random.default_rng(0)
    G.train()
    G(rng.standard_normal((4, 4)).astype(np.float32), rng.integers(0, 3, 4))     # running stats move
    old = {k: p.data.astype(np.float64) for k, p in G_ema.named_parameters()}
    update_ema(G_ema, G, 0.3)
    for k, p in G_ema.named_parameters():
        want = 0.3 * old[k] + 0.7 * dict(G.named_parameters())[k].data
        np.testing.assert_allclose(p.data, want, rtol=1e-6, atol=1e-6, err_msg=k)
    for (k, b_ema), (_, b) in zip(G_ema.named_buffers(), G.named_buffers()):
        np.testing.assert_array_equal(b_ema, b, err_msg=k)
