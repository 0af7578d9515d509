"""The evaluation classifier: API on both image formats, errors, checkpoints, gradients,
a training smoke test on synthetic glyphs, the CLI; and a short run on real MNIST."""
import re

import numpy as np
import pytest

from cganraw import classifier as C
from cganraw import data
from cganraw.checkpoint import CheckpointError
from cganraw.gradcheck import check_module


def glyphs(n, num_classes, rng):
    """uint8 (n, 28, 28) faint noise plus one bright bar per class (row band 2 + 5c, a
    column offset that varies per image) and labels (n,): easy, but not trivially so."""
    labels = rng.integers(0, num_classes, size=n)
    imgs = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    off = rng.integers(0, 8, size=n)
    for i in range(n):
        r = 2 + 5 * labels[i]
        imgs[i, r:r + 3, 4 + off[i]:16 + off[i]] = 255
    return imgs, labels


@pytest.fixture
def clf():
    return C.Classifier(3, ["a", "b", "c"], dataset="toy", seed=0)


def test_architecture_and_size():
    m = C.Classifier(10)
    names = list(m.state_dict())
    assert names[:6] == ["body.0.weight", "body.1.weight", "body.1.bias", "body.1.running_mean",
                         "body.1.running_var", "body.1.num_batches_tracked"]
    assert 10_000 <= m.num_parameters() <= 20_000
    assert m.class_names == [str(i) for i in range(10)]
    assert m(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)
    assert "MaxPool2d(kernel_size=2, stride=2)" in repr(m)


def test_probs_and_features_on_both_formats(clf, rng):
    u8, _ = glyphs(7, 3, rng)
    f32 = data.to_float(u8)
    p = clf.probs(u8)
    assert p.shape == (7, 3) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_allclose(clf.probs(f32), p, rtol=1e-6)
    np.testing.assert_allclose(clf.probs(f32.astype(np.float64)), p, rtol=1e-6)
    np.testing.assert_allclose(clf.probs(u8, batch_size=2), p, rtol=1e-6)   # batching is invisible
    feats = clf.features(u8)
    assert feats.shape == (7, C.DEFAULT_FEATURES) and (feats >= 0).all()    # after a ReLU
    np.testing.assert_allclose(clf.features(f32, batch_size=3), feats, rtol=1e-5, atol=1e-6)
    assert clf.predict(u8).shape == (7,)
    assert clf.training                                                     # mode restored
    assert all(m._cache is None for _, m in clf.named_modules())            # no activations kept
    assert clf.probs(np.zeros((0, 28, 28), np.uint8)).shape == (0, 3)


def test_inference_uses_eval_mode(clf, rng):
    # a BN layer in training mode would make an image's output depend on its batch
    u8, _ = glyphs(6, 3, rng)
    np.testing.assert_allclose(clf.probs(u8[:1]), clf.probs(u8)[:1], rtol=1e-6)


@pytest.mark.parametrize("images,err,pattern", [
    ([[0]], TypeError, "expected an array of images"),
    (np.zeros((2, 1, 28, 28), np.uint8), ValueError, r"uint8 images must have shape \(N, 28, 28\), got shape \(2, 1, 28, 28\)"),
    (np.zeros((2, 28, 28), np.float32), ValueError, r"float images must have shape \(N, 1, 28, 28\), got shape \(2, 28, 28\)"),
    (np.zeros((2, 1, 32, 32), np.float32), ValueError, r"\(N, 1, 28, 28\), got shape \(2, 1, 32, 32\)"),
    (np.zeros((2, 28, 28), np.int32), TypeError, "got dtype int32"),
    (np.full((1, 1, 28, 28), 255.0, np.float32), ValueError, r"must lie in \[-1, 1\]"),
    (np.full((1, 1, 28, 28), np.nan, np.float32), ValueError, "NaN"),
])
def test_bad_images_are_rejected(clf, images, err, pattern):
    with pytest.raises(err, match=pattern):
        clf.probs(images)
    with pytest.raises(err, match=pattern):
        clf.features(images)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        C.Classifier(1)
    with pytest.raises(ValueError, match="2 class_names for 3 classes"):
        C.Classifier(3, ["a", "b"])


def test_gradients_of_the_whole_network(rng):
    m = C.Classifier(4, seed=1).to(np.float64)
    x = rng.normal(size=(2, 1, 28, 28))
    check_module(m, x, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_save_load_round_trip(clf, rng, tmp_path):
    u8, labels = glyphs(5, 3, rng)
    clf.test_accuracy = 0.5
    path = clf.save(tmp_path / "sub" / "clf.npz")
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    back = C.load(path)
    assert (back.num_classes, back.class_names, back.dataset, back.test_accuracy) == (3, ["a", "b", "c"], "toy", 0.5)
    assert not back.training
    np.testing.assert_array_equal(back.probs(u8), clf.probs(u8))
    with np.load(path) as z:
        assert "meta" in z.files and "model.head.weight" in z.files


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        C.load(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a readable classifier"):
        C.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        C.load(tmp_path / "junk.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        C.load(tmp_path)


def test_load_refuses_truncated_and_non_finite_files(tmp_path, clf):
    whole = clf.save(tmp_path / "c.npz").read_bytes()
    for cut in (len(whole) // 3, len(whole) - 30):            # no central directory / a torn one
        (tmp_path / "t.npz").write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=r"t\.npz: not a readable classifier.*truncated or corrupt; "
                                                  r"delete it and train a new one"):
            C.load(tmp_path / "t.npz")
    clf.body[1].running_var.data[0] = np.nan
    clf.save(tmp_path / "nan.npz")
    with pytest.raises(CheckpointError, match=r"nan\.npz: body\.1\.running_var has 1 non-finite value.*"
                                              r"--dataset toy"):
        C.load(tmp_path / "nan.npz")
    clf.body[1].running_var.data[0] = 1.0
    clf.head.weight.data[0, 0] = 1e7
    clf.save(tmp_path / "big.npz")
    with pytest.raises(CheckpointError, match="head.weight has max"):
        C.load(tmp_path / "big.npz")


def test_default_path_and_load_or_train(monkeypatch, tmp_path, clf):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert C.default_path("mnist") == tmp_path / "cganraw" / "classifiers" / "mnist.npz"
    assert C.default_path("emnist").name == "emnist-letters.npz"
    with pytest.raises(ValueError, match="unknown dataset"):
        C.default_path("cifar")
    clf.save(C.default_path("mnist"))
    got = C.load_or_train("mnist", data_dir=tmp_path / "no-data")   # cached: no training, no data
    assert got.dataset == "toy"


def test_random_shift(rng):
    x = np.full((5, 1, 28, 28), -1, np.float32)
    x[:, 0, 10:18, 10:18] = 1.0
    y = C.random_shift(x, rng, 2)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert ((y == 1).sum(axis=(1, 2, 3)) == 64).all()            # the square moved, intact
    assert set(np.unique(y)) == {-1.0, 1.0}
    assert C.random_shift(x, rng, 0) is x


def test_training_smoke_on_glyphs(rng):
    x, y = glyphs(384, 3, rng)
    xt, yt = glyphs(120, 3, rng)
    lines = []
    clf, acc = C.fit_classifier(x, y, ["a", "b", "c"], dataset="toy", test=(xt, yt), epochs=3,
                                batch_size=64, lr=3e-3, seed=0, log=lines.append)
    losses = [float(re.search(r"loss ([0-9.]+)", s).group(1)) for s in lines]
    assert len(losses) == 3 and losses[-1] < 0.5 * losses[0]
    assert acc >= 0.9 and clf.test_accuracy == acc and not clf.training
    assert clf.info["epochs"] == 3 and clf.info["train_images"] == 384
    # the same seed gives the same network
    clf2, acc2 = C.fit_classifier(x, y, ["a", "b", "c"], test=(xt, yt), epochs=1, batch_size=64, seed=0, log=None)
    clf3, _ = C.fit_classifier(x, y, ["a", "b", "c"], epochs=1, batch_size=64, seed=0, log=None)
    np.testing.assert_array_equal(clf2.head.weight.data, clf3.head.weight.data)


def test_fit_rejects_bad_input(rng):
    x, y = glyphs(10, 3, rng)
    with pytest.raises(ValueError, match=r"uint8 images of shape \(N, 28, 28\)"):
        C.fit_classifier(data.to_float(x), y, ["a", "b", "c"])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        C.fit_classifier(x, y, ["a", "b", "c"], epochs=0)
    with pytest.raises(ValueError, match=r"augment must be in 0..4 pixels, got 5"):
        C.fit_classifier(x, y, ["a", "b", "c"], augment=5)
    with pytest.raises(ValueError, match="N >= 1 images and N labels, got 10 and 9"):
        C.fit_classifier(x, y[:9], ["a", "b", "c"])
    with pytest.raises(ValueError, match="max_train must be a positive number of images, got -5"):
        C.train_classifier("mnist", max_train=-5)


def test_progress_goes_to_the_logger_unless_a_callable_is_given(rng, caplog):
    x, y = glyphs(64, 3, rng)
    with caplog.at_level("INFO", logger="cganraw.classifier"):
        C.fit_classifier(x, y, ["a", "b", "c"], epochs=1, batch_size=32)
    assert [r.name for r in caplog.records] == ["cganraw.classifier"] and "epoch 1/1" in caplog.text
    caplog.clear()
    lines = []
    with caplog.at_level("INFO", logger="cganraw.classifier"):
        C.fit_classifier(x, y, ["a", "b", "c"], epochs=1, batch_size=32, log=lines.append)
    assert not caplog.records and len(lines) == 1 and lines[0].startswith("epoch 1/1")


def test_cli_errors(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as e:
        C.main(["train", "--dataset", "cifar10"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        C.main([])
    capsys.readouterr()
    # no data anywhere: a one-line error, exit status 1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    assert C.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c.npz")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "c.npz").exists()
    assert C.main(["test", "--dataset", "mnist", "--classifier", str(tmp_path / "none.npz")]) == 1
    assert "not found" in capsys.readouterr().err
    # numbers are checked by argparse: a usage error in one line, exit 2
    for flag, value in (("--max-train", "-5"), ("--augment", "5"), ("--seed", "-1"), ("--epochs", "0")):
        with pytest.raises(SystemExit) as e:
            C.main(["train", "--dataset", "mnist", flag, value])
        err = capsys.readouterr().err
        assert e.value.code == 2 and flag in err and len(err.splitlines()) == 1


def test_cli_train_on_a_slice_of_real_mnist(mnist_dir, tmp_path, capsys):
    out = tmp_path / "mnist.npz"
    assert C.main(["train", "--dataset", "mnist", "--data-dir", mnist_dir, "--epochs", "1",
                   "--max-train", "2000", "--batch-size", "32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out                           # the result on stdout, progress on stderr (logging)
    acc = float(re.search(r"mnist: test accuracy ([0-9.]+)", text).group(1))
    assert "epoch 1/1" in captured.err and acc > 0.8
    clf = C.load(out)
    assert clf.dataset == "mnist" and abs(clf.test_accuracy - acc) < 1e-4
    assert C.main(["test", "--dataset", "mnist", "--classifier", str(out), "--data-dir", mnist_dir]) == 0
    assert f"test accuracy {acc:.4f}" in capsys.readouterr().out
