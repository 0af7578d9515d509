"""The GAN objective of one training step, proven by finite differences.

Each test writes the loss of one step of cganraw.step.train_step as an explicit float64
function of the parameters, on tiny models, from the same draws train_step made:

    D:  BCE(D(x, y), 1 - s) + w * BCE(D(x, y_wrong), 0) + BCE(D(G(z, y_fake), y_fake), 0)
        + r * k / (2 N) * |grad_x sum D_eval(x, y)|^2       (at steps k divides)
    G:  BCE(D'(G(z, y_fake), y_fake), 1) + m * 1 / (mean|G_a - G_b| / mean|z_a - z_b| + 1e-5)

with s the label smoothing, w the mismatch weight (conditional models only), r the R1
weight taken every k steps (D_eval: D in evaluation mode; its input gradient from D's own
backward, proven layer by layer; not for the DCGAN, whose D has BatchNorm), m the
mode-seeking weight (rows i and M + i of the batch share a label), and D' the
discriminator after its own update. The gradients train_step hands to each optimiser
are captured (a recording optimiser) and compared with central differences of these
functions; the loss values it reports, with the functions' values. The draws (z, the fake
and wrong labels) are Philox streams of the step's key, recomputed here by their NumPy
twins; dropout masks are replayed from the layers' (step, call). When D treats every sample
alone, train_step runs D's three terms as one batch (one forward, one set of masks), and so
does the objective here; BatchNorm runs in training mode, as in training. Every option of
train_step is covered alone and all together.
"""
import numpy as np
import pytest

from cganraw import models
from cganraw.ops import philox
from cganraw.optim import Adam
from cganraw.step import per_sample, train_step
from tests.proof import RecordingOptimizer, check_gradient, dropout_states, load_params, params_of, set_dropout_states

K = 3              # classes
LATENT = 4
N = 5              # odd: with mode seeking, two pairs and one unpaired row
LR = 0.02          # large, so that the G step would see a stale D clearly
MODES = {"plain": {}, "smoothing": {"label_smoothing": 0.2}, "mismatch": {"mismatch": 0.6},
         "mode_seeking": {"mode_seeking": 1.5}, "r1": {"r1": 3.0}, "r1_lazy": {"r1": 2.0, "r1_every": 4},
         "r1_skipped": {"r1": 2.0, "r1_every": 3},
         "all": {"label_smoothing": 0.15, "mismatch": 0.7, "mode_seeking": 0.8, "r1": 1.5}}
STEP = {"r1_lazy": 8}       # the step of each case's key (1 by default): 8 takes a lazy R1 term, 1 not
# tiny conv models (width 2; BatchNorm in G as the trainer builds it) and the fixed-size MLPs
BUILD = {"cgan-conv": {"width": 2, "batchnorm": True}, "dcgan": {"width": 2}, "cgan-mlp": {}, "gan-mlp": {}}
CASES = [(name, mode) for name in BUILD for mode in MODES
         if not (mode == "mismatch" and name in ("dcgan", "gan-mlp"))     # no labels to mismatch
         and not (mode.startswith("r1") and name == "dcgan")]             # BatchNorm in D: no R1


def bce(logits, target):
    """Mean binary cross-entropy of float64 logits against a constant target."""
    x = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))))


def mode_seeking_term(images, z):
    """MSGAN's 1 / (ratio + 1e-5), ratio = mean |x_a - x_b| / mean |z_a - z_b|, a = first half."""
    m = len(images) // 2
    ratio = np.abs(images[:m] - images[m:]).mean() / np.abs(z[:m] - z[m:]).mean()
    return float(1.0 / (ratio + 1e-5))


def eval_input_gradient(D, x, y):
    """grad_x of the sum of D's logits, D in evaluation mode (R1's g), by D's own backward."""
    D.eval().requires_grad_(False)
    try:
        return D.backward(np.ones_like(D(x, y)))
    finally:
        D.train().requires_grad_(True)


class Step:
    """One train_step on float64 models with every draw, gradient and parameter recorded."""

    def __init__(self, name, mode, seed=0):
        self.name, self.mode, options = name, mode, MODES[mode]
        if name == "dcgan":         # BatchNorm in D: no R1 (r1_penalty refuses it)
            options = {k: v for k, v in options.items() if not k.startswith("r1")}
        self.options = {"label_smoothing": 0.0, "mismatch": 0.0, "mode_seeking": 0.0, "r1": 0.0, "r1_every": 1,
                        **options}
        G, D = models.build(name, K, latent_dim=LATENT, seed=seed, **BUILD[name])
        self.G, self.D = G.to(np.float64), D.to(np.float64)
        data = np.random.default_rng(100 + seed)
        # biases start at 0; then a zero patch of a fake (ReLU, tanh(0)) puts a LeakyReLU
        # exactly on its kink, where no finite difference agrees with a one-sided gradient
        for module in (G, D):
            for k, p in module.named_parameters():
                if k.endswith("bias"):
                    p.data[...] = data.normal(0, 0.05, p.shape)
        self.x = data.uniform(-1, 1, (N, 1, 28, 28))
        self.y = data.integers(0, K, N) if G.conditional else None
        self.G0, self.D0 = params_of(G), params_of(D)
        self.key = philox.Key(1000 + seed, STEP.get(mode, 1))
        self.batched = per_sample(D)
        order = []
        watch = {"G": G, "D": D}
        self.opt_g = RecordingOptimizer("G", Adam(G.parameters(), lr=LR), G, watch, order)
        self.opt_d = RecordingOptimizer("D", Adam(D.parameters(), lr=LR), D, watch, order)
        self.stats = train_step(G, D, self.opt_g, self.opt_d, self.x, self.y, self.key, **self.options).fetch()
        self.dropout0 = [(self.key.step, 0)] * len(models.dropout_layers(D))   # the D step's first masks
        self.order = order
        self._draws()

    def _draws(self):
        """z, the fake labels and the wrong labels: the key's Philox streams, by the NumPy twins."""
        key = self.key
        self.z = philox.philox_normal_numpy((N, LATENT), key.stream(philox.NOISE)).astype(np.float64)
        self.pairs = N // 2 if self.options["mode_seeking"] > 0 else 0
        self.fake_labels = self.wrong_labels = None
        if not self.G.conditional:
            return
        # rows i and pairs + i share a label (MSGAN's pairs); the rest are independent
        self.fake_labels = philox.philox_integers_numpy(N, 0, K, key.stream(philox.FAKE_LABELS), fold=self.pairs)
        np.testing.assert_array_equal(self.fake_labels[self.pairs:2 * self.pairs], self.fake_labels[:self.pairs])
        if self.options["mismatch"] > 0:
            self.wrong_labels = philox.philox_shift_labels_numpy(self.y, K, key.stream(philox.WRONG_LABELS))
            assert np.all(self.wrong_labels != self.y), "a mismatched pair kept its true label"

    # -- the objective, as an explicit function of the current parameters -------------
    def d_loss_parts(self, fake):
        """D's three terms at D's current parameters; `fake` is a constant (detached)."""
        set_dropout_states([self.D], self.dropout0)          # the masks the D step drew
        real_target = 1.0 - self.options["label_smoothing"]
        terms = [("d_loss_real", self.x, self.y, real_target)]
        if self.wrong_labels is not None:
            terms.append(("d_loss_mismatch", self.x, self.wrong_labels, 0.0))
        terms.append(("d_loss_fake", fake, self.fake_labels, 0.0))
        if not self.batched:
            return {name: bce(self.D(x, y), t) for name, x, y, t in terms}
        # one forward over [real | wrong | fake], as train_step runs a per-sample D
        labels = None if self.y is None else np.concatenate([y for _, _, y, _ in terms])
        logits = np.asarray(self.D(np.concatenate([x for _, x, _, _ in terms]), labels))
        return {name: bce(logits[i * N:(i + 1) * N], t) for i, (name, _, _, t) in enumerate(terms)}

    def d_loss(self, fake):
        parts = self.d_loss_parts(fake)
        return (parts["d_loss_real"] + self.options["mismatch"] * parts.get("d_loss_mismatch", 0.0)
                + parts["d_loss_fake"] + self.r1_term())

    def r1_term(self):
        """r * k / (2 N) * |grad_x sum D_eval(x, y)|^2 at steps k divides, else 0."""
        r, every = self.options["r1"], self.options["r1_every"]
        if r == 0 or self.key.step % every:
            return 0.0
        g = eval_input_gradient(self.D, self.x, self.y)
        return float(r * every / (2 * N) * (g * g).sum())

    def g_loss_parts(self, dropout_g):
        set_dropout_states([self.D], dropout_g)
        fake = self.G(self.z, self.fake_labels)
        adversarial = bce(self.D(fake, self.fake_labels), 1.0)
        ms = mode_seeking_term(fake[:2 * self.pairs], self.z[:2 * self.pairs]) if self.pairs else 0.0
        return adversarial, ms

    def g_loss(self, dropout_g):
        adversarial, ms = self.g_loss_parts(dropout_g)
        return adversarial + self.options["mode_seeking"] * ms

    def dropout_after_d_step(self):
        """The D masks' generator states once the D step's forwards have drawn theirs."""
        load_params(self.G, self.G0)
        self.d_loss(self.G(self.z, self.fake_labels))
        return dropout_states(self.D)


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{m}" for n, m in CASES])
def st(request):
    """One recorded step per case, shared by the tests below (pytest groups them by case)."""
    name, mode = request.param
    return Step(name, mode, seed=CASES.index(request.param))


def test_order_d_then_g_through_the_updated_d(st):
    assert st.order == ["D", "G"]
    (rec_d,), (rec_g,) = st.opt_d.records, st.opt_g.records
    # the D step starts from the initial parameters and moves D only
    for part, start in (("G", st.G0), ("D", st.D0)):
        for k, v in start.items():
            np.testing.assert_array_equal(rec_d["before"][part][k], v, err_msg=f"{part}.{k} before the D step")
    for k, v in st.G0.items():
        np.testing.assert_array_equal(rec_d["after"]["G"][k], v, err_msg=f"the D step moved G.{k}")
    assert any(not np.array_equal(rec_d["after"]["D"][k], v) for k, v in st.D0.items())
    # the G step sees the updated D, and moves G only
    for k, v in rec_d["after"]["D"].items():
        np.testing.assert_array_equal(rec_g["before"]["D"][k], v, err_msg=f"the G step saw a stale D.{k}")
        np.testing.assert_array_equal(rec_g["after"]["D"][k], v, err_msg=f"the G step moved D.{k}")
    for k, v in st.G0.items():
        np.testing.assert_array_equal(rec_g["before"]["G"][k], v, err_msg=f"G.{k} moved before its own step")


def test_d_gradient_is_the_d_objective(st):
    name, mode = st.name, st.mode
    (rec,) = st.opt_d.records
    load_params(st.G, st.G0)
    load_params(st.D, st.D0)
    fake = np.array(st.G(st.z, st.fake_labels), copy=True)     # a constant for D: detached
    arrays = {k: p.data for k, p in st.D.named_parameters()}
    check_gradient(lambda: st.d_loss(fake), arrays, rec["grads"], f"{name} {mode}: D's gradient")


def test_g_gradient_is_the_g_objective_through_the_updated_d(st):
    name, mode = st.name, st.mode
    (rec_d,), (rec,) = st.opt_d.records, st.opt_g.records
    dropout_g = st.dropout_after_d_step()
    load_params(st.G, st.G0)
    load_params(st.D, rec_d["after"]["D"])     # D' = D after its own update
    arrays = {k: p.data for k, p in st.G.named_parameters()}
    check_gradient(lambda: st.g_loss(dropout_g), arrays, rec["grads"], f"{name} {mode}: G's gradient")


def test_reported_losses_are_the_objective(st):
    (rec_d,), _ = st.opt_d.records, st.opt_g.records
    load_params(st.G, st.G0)
    load_params(st.D, st.D0)
    parts = st.d_loss_parts(np.array(st.G(st.z, st.fake_labels), copy=True))
    stats = st.stats
    for k in ("d_loss_real", "d_loss_mismatch", "d_loss_fake"):
        assert stats[k] == pytest.approx(parts.get(k, 0.0), rel=1e-9, abs=1e-12), k
    assert stats["d_loss"] == pytest.approx(parts["d_loss_real"] + parts["d_loss_fake"]
                                            + st.options["mismatch"] * parts.get("d_loss_mismatch", 0.0), rel=1e-9)
    load_params(st.D, rec_d["after"]["D"])
    adversarial, ms = st.g_loss_parts(st.dropout_after_d_step())
    assert stats["g_loss"] == pytest.approx(adversarial, rel=1e-9)
    assert stats["g_loss_mode_seeking"] == pytest.approx(ms, rel=1e-9, abs=0)


def test_every_train_step_option_is_covered():
    # a new keyword of train_step must get its own objective term and case here
    import inspect
    params = inspect.signature(train_step).parameters
    # (`flag` is the loss flag's plumbing and `paired_labels` a choice of labels (test_label_groups),
    # not terms of the objective)
    options = {k for k, p in params.items() if p.default is not inspect.Parameter.empty
               and k not in ("flag", "paired_labels")}
    assert options == {"label_smoothing", "mismatch", "mode_seeking", "r1", "r1_every"}, (
        f"train_step's options are now {sorted(options)}: give each new one its term in Step")
    assert {k for mode in MODES.values() for k in mode} == options


@pytest.mark.parametrize("d_norm,growth,d_stem", [("none", None, 0), ("spectral", None, 0), ("none", (28, 0.4), 0),
                                                  ("spectral", (14, 1.0), 0), ("none", None, 3),
                                                  ("spectral", None, 2), ("none", (28, 0.4), 2)])
def test_r1_gradient_through_the_cgan_conv_d_options(d_norm, growth, d_stem):
    # r1_penalty on D with minibatch stddev (its two perturbed batches segmented), the
    # projection label and, with spectral norm, sigma from fixed u, v (evaluation mode);
    # growth: the progressive D in its fade (both stems mixed) or at 14x14 (the pooled stem);
    # d_stem: the stride-1 conv at 28x28 in front of the first stride-2 one
    from cganraw.step import r1_penalty
    _, D = models.build("cgan-conv", K, latent_dim=LATENT, width=2, seed=4, d_norm=d_norm, minibatch_std=True,
                        d_label="projection", progressive=growth is not None, d_stem=d_stem)
    if growth is not None:
        D.set_growth(*growth)
    D.to(np.float64)
    data = np.random.default_rng(7)
    for k, p in D.named_parameters():
        if k.endswith("bias"):
            p.data[...] = data.normal(0, 0.05, p.shape)
    x, y = data.uniform(-1, 1, (6, 1, 28, 28)), data.integers(0, K, 6)
    for _ in range(30):         # training forwards: u, v converge as in a run
        D(x, y)
        D.drop_caches()
    gamma = 2.5

    def penalty():
        g = eval_input_gradient(D, x, y)
        return float(gamma / (2 * len(x)) * (g * g).sum())

    D.zero_grad()
    reported = r1_penalty(D, x, y, gamma)
    assert D.training and all(p.requires_grad for p in D.parameters())
    assert float(reported) == pytest.approx(penalty(), rel=1e-12)
    grads = {k: p.grad.copy() for k, p in D.named_parameters()}
    unused = "from_img28." if growth is not None and growth[0] == 14 else None      # the 28x28 stem, not yet grown
    assert all(np.abs(g).max() > 0 for k, g in grads.items()
               if not k.endswith("bias") and not (unused and k.startswith(unused))), "a weight got no R1 gradient"
    check_gradient(penalty, {k: p.data for k, p in D.named_parameters()}, grads,
                   f"R1, d_norm {d_norm}, growth {growth}, d_stem {d_stem}")


def test_r1_refuses_a_d_with_batchnorm():
    from cganraw.step import r1_penalty
    _, D = models.build("dcgan", None, width=2)
    with pytest.raises(ValueError, match="no BatchNorm"):
        r1_penalty(D, np.zeros((2, 1, 28, 28), np.float32), None, 1.0)
