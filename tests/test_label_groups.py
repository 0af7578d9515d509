"""Label groups (--label-groups): batches dealt in cliques of one label, laid out as
MinibatchStdDev's groups, and G drawing the real batch's labels, so that D's minibatch
stddev compares the spread within a class. The iterator, the step, the flags and a
resumed run, on tiny synthetic data."""
import json

import numpy as np
import pytest

from cganraw import backend, checkpoint, models
from cganraw.data import BatchIterator
from cganraw.ops.minibatch_std import effective_group_size
from cganraw.step import train_step, upload_batch
from tests.runs import assert_same_state, run_cli
from tests.synthetic import write_emnist

TINY = ["--width", "3", "--log-every", "1", "--quiet", "--no-download"]


def _set(n=203, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n) % 256          # each image findable from its pixels
    images[:, 0, 1] = np.arange(n) // 256
    return images, labels


def _index(x):
    """The dataset index of each image of a float batch (from the two marker pixels)."""
    px = np.rint((x[:, 0, 0, :2] + 1) * 127.5).astype(np.int64)
    return px[:, 0] + 256 * px[:, 1]


def _groups(y, g):
    """(G, M): MinibatchStdDev's group m is column m (row g*M + m is member g of it)."""
    return np.asarray(y).reshape(g, -1)


@pytest.mark.parametrize("batch", [4, 8, 28])
def test_every_minibatch_std_group_holds_one_label(batch):
    images, labels = _set()
    g = models.MINIBATCH_STD_GROUP
    it = BatchIterator(images, labels, batch, np.random.default_rng(2), group_size=g)
    assert effective_group_size(batch, g) == g
    per_class = np.bincount(labels)
    assert it.epoch_length == (per_class // g * g).sum() and len(it) == it.epoch_length // batch
    mixed = 0
    for epoch in range(3):
        seen = []
        for x, y in it:
            idx = _index(x)
            np.testing.assert_array_equal(y, labels[idx])               # images and labels stay paired
            cols = _groups(y, g)
            assert (cols == cols[0]).all(), "a group holds two labels"
            mixed += len(np.unique(y)) > 1
            seen.append(idx)
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == len(seen)                          # no image twice in an epoch
        assert it.epoch == epoch + 1
    assert mixed > 0 or batch == g                                       # batches mix labels across groups


def test_the_odd_ones_out_change_every_epoch_and_the_order_is_seeded():
    images, labels = _set(n=61, classes=3)
    it = BatchIterator(images, labels, 8, np.random.default_rng(5), group_size=4)
    sets = [frozenset(np.concatenate([_index(x) for x, _ in it])) for _ in range(4)]
    assert len(set(sets)) > 1                                            # another image sits out each epoch
    a = [y for _, y in BatchIterator(images, labels, 8, np.random.default_rng(5), group_size=4)]
    b = [y for _, y in BatchIterator(images, labels, 8, np.random.default_rng(6), group_size=4)]
    assert not all(np.array_equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("stop_after", [1, 5, 7])
def test_a_grouped_iterator_resumes_exactly(stop_after):
    images, labels = _set()
    it = BatchIterator(images, labels, 12, np.random.default_rng(1), group_size=4)
    for _ in range(stop_after):
        it.next_batch()
    state = json.loads(json.dumps(it.state_dict()))
    rest = [it.next_batch()[1] for _ in range(30)]
    again = BatchIterator(images, labels, 12, np.random.default_rng(99), group_size=4)
    again.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate(rest), np.concatenate([again.next_batch()[1] for _ in range(30)]))
    plain = BatchIterator(images, labels, 12, np.random.default_rng(1))
    with pytest.raises(ValueError, match="group_size"):
        plain.load_state_dict(state)


def test_rising_grouped_batches_keep_the_layout():
    images, labels = _set()
    it = BatchIterator(images, labels, 4, np.random.default_rng(0), group_size=4, variable_size=True)
    for size, nxt in [(4, 8), (8, 12), (12, 16), (16, 16), (16, 20)]:
        x, y = it.next_batch(size, nxt)
        assert len(y) == size and (_groups(y, 4) == _groups(y, 4)[0]).all()
    with pytest.raises(ValueError, match="multiple of the label group size 4"):
        it.next_batch(6, 8)


def test_bad_grouped_iterators_are_refused():
    images, labels = _set(n=40, classes=5)
    with pytest.raises(ValueError, match="not a multiple of the label group size"):
        BatchIterator(images, labels, 10, np.random.default_rng(0), group_size=4)
    with pytest.raises(ValueError, match="shuffle"):
        BatchIterator(images, labels, 8, np.random.default_rng(0), group_size=4, shuffle=False)
    with pytest.raises(ValueError, match="group_size must be positive"):
        BatchIterator(images, labels, 8, np.random.default_rng(0), group_size=0)
    with pytest.raises(ValueError, match="larger than an epoch of label groups"):
        BatchIterator(images, np.arange(40) % 20, 8, np.random.default_rng(0), group_size=4)   # 2 per class
    with pytest.raises(ValueError, match="labels >= 0"):
        BatchIterator(images, labels - 1, 8, np.random.default_rng(0), group_size=4)


# ------------------------------------------------------------------ the step ------

@pytest.fixture
def restore_backend():
    prev = backend.current()
    yield
    backend.use(prev)


@pytest.mark.parametrize("name", ["numpy", "emu"])
def test_paired_labels_give_g_the_real_labels(name, monkeypatch, restore_backend):
    """G (and D's fake term) see the real batch's labels, row for row; drawn labels otherwise."""
    backend.use(name)
    rng = np.random.default_rng(0)
    G = models.ConvCGANGenerator(10, latent_dim=8, width=4, rng=rng, norm="instance")
    D = models.ConvCGANDiscriminator(10, width=4, rng=rng, spectral=True, minibatch_std=True,
                                     spectral_rng=np.random.default_rng(1))
    from cganraw.optim import Adam
    opt_g, opt_d = Adam(G.parameters(), lr=1e-3), Adam(D.parameters(), lr=1e-3)
    images, labels = _set(n=64, classes=10)
    x, y = BatchIterator(images, labels, 8, np.random.default_rng(0), group_size=4).next_batch()
    x, y = upload_batch(x, y, 10)
    asked = []
    forward = type(G).forward
    monkeypatch.setattr(type(G), "forward", lambda self, z, lab: asked.append(backend.asnumpy(lab).copy())
                        or forward(self, z, lab))
    from cganraw.ops.philox import Key
    train_step(G, D, opt_g, opt_d, x, y, Key(7, 0), 0.1, 0.5, paired_labels=True)
    assert len(asked) == 1
    np.testing.assert_array_equal(asked[0], backend.asnumpy(y))
    train_step(G, D, opt_g, opt_d, x, y, Key(7, 1), 0.1, 0.5)
    assert not np.array_equal(asked[1], backend.asnumpy(y))


# ------------------------------------------------------------------ the trainer ------

@pytest.fixture
def digits_dir(tmp_path):
    d = tmp_path / "data"
    write_emnist(d, "digits", np.random.default_rng(0), n=(160, 20))
    return d


def test_a_label_group_run_records_the_setting_and_resumes_bit_exactly(digits_dir, tmp_path):
    common = ["--dataset", "emnist-digits", "--data-dir", digits_dir, "--seed", 4, "--epochs", 2, "--batch-size", 8,
              "--minibatch-std", "--label-groups", *TINY]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_cli(*common, "--out", straight) == 0
    assert run_cli(*common, "--out", split, "--max-steps", 7) == 0
    assert json.loads((split / "config.json").read_text())["label_groups"] is True
    assert run_cli("--resume", split, "--max-steps", 10 ** 6, "--quiet", "--data-dir", digits_dir, "--no-download") == 0
    a, b = (checkpoint.load(d / "checkpoints" / "last.npz") for d in (straight, split))
    assert a["meta"]["step"] == b["meta"]["step"] > 7
    assert a["meta"]["batches"] == b["meta"]["batches"] and a["meta"]["batches"]["group_size"] == 4
    assert_same_state(a, b)


@pytest.mark.parametrize("argv,needle", [
    (["--label-groups", "--no-minibatch-std"], "--label-groups needs --minibatch-std"),
    (["--label-groups", "--batch-size", "30"], "--batch-size 30: with --label-groups"),
    (["--label-groups", "--batch-size", "8", "--batch-size-final", "18"], "--batch-size-final 18"),
    (["--model", "cgan-mlp", "--label-groups"], "--label-groups: options of --model cgan-conv only"),
])
def test_bad_label_group_flags_are_one_line_errors(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        run_cli("--dataset", "mnist", "--out", tmp_path / "x", *argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_resume_names_a_changed_label_group_setting(digits_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist-digits", "--data-dir", digits_dir, "--out", out, "--max-steps", 2,
                   "--batch-size", 8, "--minibatch-std", "--no-label-groups", *TINY) == 0
    capsys.readouterr()
    assert run_cli("--resume", out, "--label-groups", "--quiet", "--data-dir", digits_dir, "--no-download") == 2
    assert "--label-groups: was False, asked True" in capsys.readouterr().err


def test_a_rising_batch_rises_in_whole_label_groups(digits_dir, tmp_path):
    from cganraw.run import batch_size_at
    sizes = [batch_size_at(k, 12, 8, 24, multiple=4) for k in range(13)]
    assert sizes == [8, 8, 12, 12, 12, 16, 16, 20, 20, 20, 24, 24, 24]    # 8 + 4 * round(4 k / 11)
    assert [batch_size_at(k, 12, 4, 12) for k in range(13)] == [4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11, 12, 12]
    out = tmp_path / "rising"
    assert run_cli("--dataset", "emnist-digits", "--data-dir", digits_dir, "--out", out, "--epochs", 2,
                   "--batch-size", 4, "--batch-size-final", 16, "--minibatch-std", "--label-groups", *TINY) == 0
    seen = [json.loads(line)["batch_size"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"d_loss"' in line]
    assert seen[0] == 4 and seen[-1] == 16 and all(b % 4 == 0 for b in seen) and len(set(seen)) == 4
