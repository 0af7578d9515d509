"""cganraw.evaluate: sanity of the metrics on real MNIST (real test images scored as if
generated must look like a perfect generator), and the CLI end to end on a tiny model."""
import json
import os

import numpy as np
import pytest

from cganraw import checkpoint, data, evaluate, metrics, models
from cganraw import classifier as C
from tests.conftest import SHARED_MNIST
from tests.synthetic import write_emnist

DIGITS = [str(i) for i in range(10)]


# --- real MNIST: one quick classifier for the whole module ------------------------------

@pytest.fixture(scope="module")
def mnist():
    path = os.path.abspath(SHARED_MNIST)   # as the mnist_dir fixture, at module scope
    if not os.path.isdir(path):
        pytest.skip("real MNIST not present in ../shared/data/mnist")
    return data.load("mnist", "train", data_dir=path), data.load("mnist", "test", data_dir=path)


@pytest.fixture(scope="module")
def quick_clf(mnist):
    """Trained on 8000 images for 2 epochs (~10-20 s on 2 cores): ~97% on the real test set."""
    train, test = mnist
    clf, acc = C.fit_classifier(train.images[:8000], train.labels[:8000], train.class_names, "mnist",
                                test=(test.images[:2000], test.labels[:2000]), epochs=2, batch_size=32,
                                lr=1e-2, seed=0, augment=0, log=None)
    assert acc > 0.95, acc
    return clf


@pytest.fixture(scope="module")
def real_scores(mnist, quick_clf):
    """Real test images scored as 'generated', FID against 2000 held-out train images."""
    train, test = mnist
    x, y = test.images[:2000], test.labels[:2000]
    ref = (train.images[-2000:], train.labels[-2000:])
    return x, y, ref, evaluate.score_images(x, y, quick_clf, DIGITS, real_test=ref, cas=False, log=None)


def test_real_images_look_like_a_perfect_generator(real_scores, quick_clf):
    x, y, _, res = real_scores
    assert res["label_accuracy"] == quick_clf.accuracy(x, y)          # the same argmaxes, exactly
    cm = np.array(res["confusion_matrix"])
    assert cm.sum() == 2000 and np.trace(cm) / 2000 == res["label_accuracy"]
    assert (cm.sum(axis=1) == np.bincount(y, minlength=10)).all()
    assert 8.0 < res["inception_score"] <= 10.0
    assert 7.0 < res["bcis"] <= 10.0            # ~7.7 for this quick classifier; 10 if perfect
    assert 1.0 <= res["wcis"] < 1.3
    # unbalanced classes: IS = BCIS * WCIS only approximately
    assert abs(res["inception_score"] - res["bcis"] * res["wcis"]) < 0.05 * res["inception_score"]
    assert min(res["per_class_accuracy"]) > 0.85
    # real test images against held-out real training images vary alike (within sampling at
    # 200 a class, and MNIST's test set begins with its cleaner writers)
    for name in metrics.STYLE_FEATURES:
        assert 0.75 < res["style_spread"][name] < 1.33, (name, res["style_spread"])
    assert res["speckle"] < 0.05                 # MNIST's test set: 1.3%


def test_fid_separates_real_from_noise(real_scores, quick_clf, mnist):
    x, y, ref, res = real_scores
    noise = np.random.default_rng(0).integers(0, 256, size=(2000, 28, 28), dtype=np.uint8)
    res_noise = evaluate.score_images(noise, y, quick_clf, real_test=ref, cas=False, log=None)
    assert res["fid"] >= 0 and res["fid"] < 0.05 * res_noise["fid"]
    # pure noise: the classifier sees (nearly) one thing, so IS and BCIS are low
    assert res_noise["inception_score"] < 3.0
    assert res_noise["bcis"] < 1.1 and res_noise["label_accuracy"] < 0.3
    assert res_noise["speckle"] > 0.5 and res["speckle"] < 0.05
    # a set against itself is 0 (features fed straight in)
    f = quick_clf.features(x)
    assert metrics.fid(f, f) < 1e-6 * res_noise["fid"]


def test_shuffled_labels_drop_label_accuracy(real_scores, quick_clf):
    x, y, ref, res = real_scores
    y_shuf = np.random.default_rng(1).permutation(y)
    res_s = evaluate.score_images(x, y_shuf, quick_clf, real_test=ref, cas=False, log=None)
    assert 0.05 < res_s["label_accuracy"] < 0.16
    assert res_s["bcis"] < 1.1                    # the labels carry no information any more
    assert res_s["wcis"] > 0.9 * res["inception_score"]
    assert res_s["inception_score"] == res["inception_score"] and res_s["fid"] == res["fid"]


def test_one_image_per_class_is_scored_without_a_style_spread(real_scores, quick_clf):
    """A spread needs two images of a class: with one each it is left out, the rest scored."""
    x, y, ref, _ = real_scores
    first = np.array([np.flatnonzero(y == c)[0] for c in range(10)])
    res = evaluate.score_images(x[first], y[first], quick_clf, real_test=ref, cas=False, log=None)
    assert "style_spread" not in res and res["num_samples"] == 10
    assert 0.0 <= res["speckle"] <= 1.0 and res["fid"] is not None


def test_cas_on_real_training_images(mnist):
    train, test = mnist
    acc = evaluate.class_accuracy_score(train.images[:3000], train.labels[:3000], DIGITS,
                                        (test.images[:1000], test.labels[:1000]), epochs=2, log=None)
    assert acc > 0.85


# --- a tiny generator checkpoint, end to end (no real data needed) -----------------------

@pytest.fixture
def tiny_run(tmp_path, rng):
    G, D = models.build("cgan-conv", 10, width=4)
    # synthetic files in EMNIST digits' layout (MNIST's own files are pinned by SHA-256)
    meta = {"config": {"model": "cgan-conv", "latent_dim": 100, "width": 4}, "num_classes": 10,
            "class_names": DIGITS, "dataset": "emnist-digits", "step": 7, "epoch": 1}
    ckpt = tmp_path / "run" / "checkpoints" / "last.npz"
    checkpoint.save(ckpt, G, D, meta=meta)
    clf_path = C.Classifier(10, DIGITS, dataset="emnist-digits", seed=3).save(tmp_path / "clf.npz")
    write_emnist(tmp_path / "fake", "digits", rng, n=(60, 60))
    return ckpt, clf_path, tmp_path / "fake"


def test_evaluate_main_writes_its_files(tiny_run, capsys):
    ckpt, clf_path, fake = tiny_run
    argv = ["--checkpoint", str(ckpt), "--classifier", str(clf_path), "--n-per-class", "5",
            "--data-dir", str(fake), "--cas-epochs", "1", "--seed", "2"]
    assert evaluate.main(argv) == 0
    out = capsys.readouterr().out
    for word in ("inception score", "FID", "BCIS", "WCIS", "label accuracy", "CAS", "style spread",
                 "with a speck", "per-class accuracy"):
        assert word in out
    run = ckpt.parent.parent
    for name in ("metrics.json", "confusion.png", "per_class_accuracy.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0
    res = json.loads((run / "metrics.json").read_text())
    assert res["num_samples"] == 50 and res["n_per_class"] == 5 and res["step"] == 7
    assert res["dataset"] == "emnist-digits" and res["model"] == "cgan-conv" and res["conditional"]
    assert np.array(res["confusion_matrix"]).sum() == 50 and len(res["per_class_accuracy"]) == 10
    assert 0 <= res["cas"] <= 1 and res["fid"] >= 0 and 1 <= res["inception_score"] <= 10
    # the same seed gives the same numbers; --out elsewhere
    other = ckpt.parent.parent.parent / "elsewhere"
    assert evaluate.main(argv + ["--out", str(other), "--no-cas"]) == 0
    res2 = json.loads((other / "metrics.json").read_text())
    assert res2["cas"] is None
    for key in ("inception_score", "fid", "bcis", "wcis", "label_accuracy", "style_spread", "speckle"):
        assert res2[key] == res[key]


def test_evaluate_main_errors(tiny_run, tmp_path, capsys):
    ckpt, clf_path, fake = tiny_run
    assert evaluate.main(["--checkpoint", str(tmp_path / "missing.npz"), "--classifier", str(clf_path)]) == 1
    assert "error:" in capsys.readouterr().err
    five = C.Classifier(5, dataset="emnist-digits").save(tmp_path / "five.npz")
    assert evaluate.main(["--checkpoint", str(ckpt), "--classifier", str(five), "--data-dir", str(fake),
                          "--n-per-class", "2"]) == 1
    assert "classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--checkpoint", str(ckpt), "--n-per-class", "0"])
    assert e.value.code == 2


def test_evaluate_scores_the_moving_average_unless_told_otherwise(tiny_run, tmp_path, capsys):
    ckpt, clf_path, fake = tiny_run
    G, D = models.build("cgan-conv", 10, width=4)
    G_ema, _ = models.build("cgan-conv", 10, width=4, seed=5)        # other weights than G's
    with_ema = tmp_path / "ema" / "checkpoints" / "last.npz"
    checkpoint.save(with_ema, G, D, meta=checkpoint.load(ckpt)["meta"], G_ema=G_ema)
    argv = ["--checkpoint", str(with_ema), "--classifier", str(clf_path), "--n-per-class", "5",
            "--data-dir", str(fake), "--no-cas"]
    scores = {}
    for name, extra in (("average", []), ("raw", ["--no-ema"]), ("plain", None)):
        out = tmp_path / f"out-{name}"
        target = argv if extra is not None else ["--checkpoint", str(ckpt), *argv[2:]]
        assert evaluate.main(target + (extra or []) + ["--out", str(out)]) == 0
        headline = capsys.readouterr().out.splitlines()[0]
        scores[name] = json.loads((out / "metrics.json").read_text())
        assert scores[name]["weights"] in headline
    assert scores["average"]["weights"] == "moving average" and scores["raw"]["weights"] == "raw"
    assert scores["plain"]["weights"] == "raw"                          # a checkpoint without an average
    assert scores["raw"]["fid"] == scores["plain"]["fid"] != scores["average"]["fid"]   # G's and G_ema's weights
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--real", "--dataset", "emnist-digits", "--no-ema"])
    assert e.value.code == 2 and "--no-ema" in capsys.readouterr().err


def test_evaluate_and_sample_take_an_exported_generator(tiny_run, tmp_path, capsys, monkeypatch):
    # the file `cganraw.export` writes (and the shipped digits model is) holds G alone: scored
    # like its checkpoint's moving average, written under runs/ of the working folder (never
    # beside the file, which may sit inside the installed package); --no-ema refused
    from cganraw import export, sample
    ckpt, clf_path, fake = tiny_run
    G, D = models.build("cgan-conv", 10, width=4)
    G_ema, _ = models.build("cgan-conv", 10, width=4, seed=5)
    run = tmp_path / "run"
    checkpoint.save(run / "checkpoints" / "last.npz", G, D, meta=checkpoint.load(ckpt)["meta"], G_ema=G_ema)
    exported = tmp_path / "pkg" / "g.npz"
    export.export(run, exported)
    monkeypatch.chdir(tmp_path)
    argv = ["--classifier", str(clf_path), "--n-per-class", "5", "--data-dir", str(fake), "--no-cas"]
    assert evaluate.main(["--checkpoint", str(exported), *argv]) == 0
    assert evaluate.main(["--checkpoint", str(run), *argv, "--out", str(tmp_path / "from-run")]) == 0
    from_file = json.loads((tmp_path / "runs" / "g-eval" / "metrics.json").read_text())
    from_run = json.loads((tmp_path / "from-run" / "metrics.json").read_text())
    assert from_file["weights"] == "moving average" and from_file["fid"] == from_run["fid"]
    assert not (tmp_path / "pkg" / "metrics.json").exists()
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(exported), *argv, "--no-ema"]) == 1
    assert "only the moving average" in capsys.readouterr().err
    assert sample.main(["--checkpoint", str(exported), "--out", str(tmp_path / "s.npz"), "--n-per-label", "2"]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape[0] == 20 and z["images"].dtype == np.uint8


def test_evaluate_real_scores_real_training_images(tiny_run, tmp_path, capsys, rng):
    _, clf_path, _ = tiny_run
    fake = tmp_path / "fake200"
    write_emnist(fake, "digits", rng, n=(200, 60))
    out = tmp_path / "real"
    argv = ["--real", "--dataset", "emnist-digits", "--classifier", str(clf_path), "--data-dir", str(fake),
            "--n-per-class", "3", "--cas-epochs", "1", "--out", str(out)]
    assert evaluate.main(argv) == 0
    assert "real emnist-digits training images" in capsys.readouterr().out
    res = json.loads((out / "metrics.json").read_text())
    assert res["num_samples"] == 30 and res["model"] == "real data" and 0 <= res["cas"] <= 1
    assert np.array_equal(np.array(res["confusion_matrix"]).sum(axis=1), np.full(10, 3))
    # what it needs, and what it cannot do
    with pytest.raises(SystemExit):
        evaluate.main(["--real", "--classifier", str(clf_path)])
    assert "--real needs --dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(argv + ["--checkpoint", "x.npz"])
    assert evaluate.main(argv[:-4] + ["--n-per-class", "1000", "--no-cas", "--out", str(out)]) == 1
    assert "fewer than --n-per-class 1000" in capsys.readouterr().err


def test_real_reference_draws_each_class_once(rng):
    labels = np.repeat(np.arange(3), [4, 5, 6])
    train = data.Dataset("toy", np.arange(15, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8),
                         labels, ["a", "b", "c"])
    images, got = evaluate.real_reference(train, 4, seed=1)
    assert np.array_equal(got, np.repeat(np.arange(3), 4))
    picked = images[:, 0, 0]
    assert len(set(picked.tolist())) == 12 and np.array_equal(labels[picked], got)


def test_generate_is_seeded_and_restores_the_mode(rng):
    G, _ = models.build("cgan-conv", 10, width=4)
    G.train()
    labels = np.repeat(np.arange(10), 2)
    a = evaluate.generate(G, 20, labels, seed=5, batch_size=7)
    assert a.shape == (20, 1, 28, 28) and a.dtype == np.float32 and np.abs(a).max() <= 1
    assert G.training
    G.eval()
    z = np.random.default_rng(5).standard_normal((20, 100), dtype=np.float32)
    np.testing.assert_allclose(a, G(z, labels), rtol=1e-5, atol=1e-6)


def test_unconditional_model_gets_is_and_fid_only(rng):
    G, _ = models.build("dcgan", None, width=4)
    clf = C.Classifier(10, DIGITS, dataset="mnist")
    real = (rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), np.arange(40) % 10)
    res = evaluate.evaluate_generator(G, None, clf, n_per_class=4, real_test=real, log=None)
    assert res["num_samples"] == 40 and not res["conditional"]
    assert res["fid"] is not None and res["inception_score"] >= 1
    assert "bcis" not in res and "label_accuracy" not in res and "cas" not in res
    assert all(line.split()[0] != "BCIS" for line in evaluate.format_table(res))
    res2 = evaluate.evaluate_generator(G, None, clf, n_per_class=4, real_test=real, log=None)
    assert res2["fid"] == res["fid"] and res2["inception_score"] == res["inception_score"]


# --- the trainer's --eval-every: the real test set is loaded and embedded once ----------

@pytest.fixture
def counted(monkeypatch, tmp_path, rng):
    """A 10-class G and classifier of emnist-digits, synthetic data with 50 test images, and
    counters of data.load calls and of classifier.features calls on the real test set."""
    evaluate.clear_caches()
    fake = tmp_path / "fake"
    write_emnist(fake, "digits", rng, n=(60, 50))
    calls = {"load": [], "embed_real": 0}
    real_load = data.load

    def load(name, split="train", *a, **kw):
        calls["load"].append((name, split))
        return real_load(name, split, *a, **kw)
    monkeypatch.setattr(data, "load", load)
    clf = C.Classifier(10, DIGITS, dataset="emnist-digits", seed=3)
    real_features = clf.features

    def features(images, *a, **kw):
        if len(images) == 50:
            calls["embed_real"] += 1
        return real_features(images, *a, **kw)
    monkeypatch.setattr(clf, "features", features)
    G, _ = models.build("cgan-conv", 10, width=4)
    yield G, clf, fake, calls
    evaluate.clear_caches()


def test_second_evaluation_neither_reloads_nor_reembeds_the_real_test_set(counted):
    G, clf, fake, calls = counted
    runs = [evaluate.evaluate_generator(G, DIGITS, clf, n_per_class=2, seed=0, cas=False, data_dir=fake, log=None)
            for _ in range(3)]
    assert calls["load"] == [("emnist-digits", "test")] and calls["embed_real"] == 1
    assert runs[0]["fid_real_samples"] == 50
    assert runs[1]["fid"] == runs[0]["fid"] == runs[2]["fid"]
    # the cached arrays are shared, so nobody may write into them
    images, labels = evaluate.load_real_test("emnist-digits", fake)
    assert not images.flags.writeable and not labels.flags.writeable
    assert calls["load"] == [("emnist-digits", "test")]


def test_real_feature_cache_follows_the_classifier_weights_and_the_data(counted, rng):
    G, clf, fake, calls = counted
    run = lambda: evaluate.evaluate_generator(G, DIGITS, clf, n_per_class=2, cas=False,
                                              data_dir=fake, log=None)
    first = run()
    clf.head.weight.data *= 2          # other weights, other features: embedded again
    clf.body[4].weight.data *= 0.5
    second = run()
    assert calls["embed_real"] == 2 and second["fid"] != first["fid"]
    assert len(calls["load"]) == 1
    other = fake.parent / "other"      # another data folder: loaded again
    write_emnist(other, "digits", rng, n=(60, 50))
    run_other = evaluate.evaluate_generator(G, DIGITS, clf, n_per_class=2, cas=False, data_dir=other, log=None)
    assert len(calls["load"]) == 2 and calls["embed_real"] == 3 and run_other["fid"] != second["fid"]
    # bounded: never more than CACHE_SIZE sets and feature tables
    third = fake.parent / "third"
    write_emnist(third, "digits", rng, n=(60, 50))
    evaluate.evaluate_generator(G, DIGITS, clf, n_per_class=2, cas=False, data_dir=third, log=None)
    assert len(evaluate._test_sets.items) == len(evaluate._features.items) == evaluate.CACHE_SIZE
    # the least recently used (the first folder) was dropped: using it again reloads
    run()
    assert len(calls["load"]) == 4


def test_evaluate_generator_checks_classes():
    G, _ = models.build("cgan-conv", 10, width=4)
    with pytest.raises(ValueError, match="generator has 10 classes.*classifier 5"):
        evaluate.evaluate_generator(G, DIGITS, C.Classifier(5), n_per_class=1, log=None)
    with pytest.raises(ValueError, match="needs its class_names"):
        evaluate.evaluate_generator(G, None, C.Classifier(10), n_per_class=1, log=None)
