"""Judge a trained generator with the evaluation classifier (cganraw.classifier).

    python -m cganraw.evaluate --checkpoint RUN/checkpoints/last.npz [--classifier PATH]
                               [--n-per-class N] [--seed S] [--out DIR] [--data-dir DIR]
    python -m cganraw.evaluate --real --dataset mnist      # the same metrics of real images

Generates N images per class from seeded z ~ N(0, 1), scores them with the classifier and
reports (cganraw.metrics):
    inception_score  exp(E KL(p(y|x) || p(y)))                 1..K, K is best
    fid              Frechet distance of classifier features, generated vs the real test set
    bcis, wcis       between-/within-class conditional IS (Benny et al.): K and 1 are best
    label_accuracy   classifier argmax == conditioning label, overall and per class
    confusion        rows: conditioning label, columns: the classifier's argmax
    cas              Classification Accuracy Score (Ravuri & Vinyals 2019): a fresh classifier
                     trained only on generated images, tested on the real test set
An unconditional model gets IS and FID only. Writes metrics.json, confusion.png and
per_class_accuracy.png into --out (default: the run directory, the parent of checkpoints/).

The trainer calls `evaluate_generator(G, class_names, classifier, ...)` every few epochs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from cganraw import backend, load, metrics, models
from cganraw.checkpoint import CheckpointError, atomic_write_bytes

__all__ = ["generate", "score_images", "evaluate_generator", "real_reference", "format_table",
           "write_outputs", "main"]

DEFAULT_N_PER_CLASS = 1000
DEFAULT_CAS_EPOCHS = 5
CAS_BATCH, CAS_LR = 64, 5e-3     # more steps than the real-data recipe: generated sets are small
GEN_BATCH = 500
IS_SPLITS = 10


def generate(G, n, labels=None, seed=0, batch_size=GEN_BATCH):
    """n images from G (models.generate): float32 (n, 1, 28, 28) on the host."""
    return models.generate(G, labels, n=n, seed=seed, batch=batch_size)


def _log(log, msg):
    if log:
        log(msg)


def _real_test(real_test, classifier, data_dir):
    """(images uint8 (N, 28, 28), labels (N,)) of the real test set, or None."""
    if real_test is None:
        if classifier.dataset is None:
            return None
        from cganraw import data  # noqa: PLC0415
        real_test = data.load(classifier.dataset, "test", data_dir=data_dir)
    if isinstance(real_test, tuple):
        return real_test
    return real_test.images, real_test.labels


def _real_features(classifier, images):
    """classifier.features(images), remembered for the last real set seen, so a trainer
    evaluating every few epochs embeds the real test set once. The cache holds the array
    itself, so its id cannot be recycled while cached."""
    cached = getattr(classifier, "_real_feature_cache", None)
    if cached is not None and cached[0] is images:
        return cached[1]
    feats = classifier.features(images)
    object.__setattr__(classifier, "_real_feature_cache", (images, feats))
    return feats


def score_images(images, labels, classifier, class_names=None, real_test=None, real_features=None,
                 cas=True, cas_epochs=DEFAULT_CAS_EPOCHS, seed=0, data_dir=None, log=print):
    """All metrics of a set of images the classifier takes (uint8 (N, 28, 28) or float
    (N, 1, 28, 28) in [-1, 1]) generated for `labels` (N,) int, or None (unconditional: IS and
    FID only). real_test: a cganraw.data.Dataset or (images, labels) of the REAL test split
    (default: the classifier's dataset, loaded); real_features: its classifier features, if
    already computed. Returns a JSON-friendly dict."""
    t0 = time.perf_counter()
    n = images.shape[0]
    conditional = labels is not None
    if conditional:
        labels = np.asarray(backend.asnumpy(labels)).astype(np.int64)
        if labels.shape != (n,):
            raise ValueError(f"score_images: expected labels of shape ({n},), got shape {labels.shape}")
    k = classifier.num_classes
    names = list(class_names) if class_names is not None else list(classifier.class_names)
    if len(names) != k:
        raise ValueError(f"score_images: {len(names)} class names for a classifier of {k} classes")
    probs = classifier.probs(images)
    perm = np.random.default_rng(seed).permutation(n)    # splits must not follow the class order
    res = {"num_samples": int(n), "num_classes": int(k), "class_names": names,
           "inception_score": metrics.inception_score(probs)}
    splits = min(IS_SPLITS, n)
    res["inception_score_std"] = metrics.inception_score_splits(probs[perm], splits=splits)[1] if splits > 1 else 0.0

    test = _real_test(real_test, classifier, data_dir)
    if test is not None and n >= 2:
        if real_features is None:
            real_features = _real_features(classifier, test[0])
        res["fid"] = metrics.fid(classifier.features(images), real_features)
        res["fid_real_samples"] = int(real_features.shape[0])
    else:
        res["fid"] = None
        _log(log, "no real test set: FID and CAS skipped")

    if conditional:
        pred = probs.argmax(axis=1)
        pca = metrics.per_class_accuracy(probs, labels, k)
        res.update({
            "bcis": metrics.bcis(probs, labels),
            "wcis": metrics.wcis(probs, labels),
            "label_accuracy": metrics.label_accuracy(probs, labels),
            "per_class_accuracy": [None if math.isnan(v) else float(v) for v in pca],
            "confusion_matrix": metrics.confusion_matrix(labels, pred, k).tolist(),
        })
        res["cas"] = None
        if cas and test is not None:
            res["cas"] = class_accuracy_score(images, labels, names, test, classifier.dataset,
                                              epochs=cas_epochs, seed=seed, log=log)
    res["classifier"] = {"dataset": classifier.dataset, "test_accuracy": classifier.test_accuracy}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def class_accuracy_score(images, labels, class_names, real_test, dataset=None,
                         epochs=DEFAULT_CAS_EPOCHS, seed=0, log=print):
    """CAS: accuracy on the real test set of a fresh Classifier trained only on `images`."""
    from cganraw import classifier as C  # noqa: PLC0415
    from cganraw import data  # noqa: PLC0415
    train_u8 = images if images.dtype == np.uint8 else data.to_uint8(images)
    _log(log, f"CAS: training a fresh classifier on these {len(train_u8)} images ({epochs} epochs)")
    _, acc = C.fit_classifier(train_u8, labels, class_names, dataset=dataset, test=(real_test[0], real_test[1]),
                              epochs=epochs, batch_size=CAS_BATCH, lr=CAS_LR, seed=seed, log=None)
    return float(acc)


def evaluate_generator(G, class_names, classifier, n_per_class=DEFAULT_N_PER_CLASS, seed=0,
                       real_test=None, cas=True, log=print, cas_epochs=DEFAULT_CAS_EPOCHS,
                       data_dir=None, batch_size=GEN_BATCH):
    """Generate n_per_class images per class (z from `seed`) and score them: see score_images.
    class_names: the generator's classes, or None for an unconditional G (which gets
    n_per_class * classifier.num_classes images and only IS and FID)."""
    conditional = getattr(G, "num_classes", None) is not None
    if conditional:
        if class_names is None:
            raise ValueError("evaluate_generator: a conditional generator needs its class_names")
        k = len(class_names)
        if k != G.num_classes or k != classifier.num_classes:
            raise ValueError(f"evaluate_generator: the generator has {G.num_classes} classes, class_names "
                             f"{k}, the classifier {classifier.num_classes} ({classifier.dataset})")
        labels = np.repeat(np.arange(k, dtype=np.int64), n_per_class)
    else:
        labels = None
    n = n_per_class * classifier.num_classes
    t0 = time.perf_counter()
    _log(log, f"generating {n} images ({n_per_class} per class, seed {seed})")
    images = generate(G, n, labels, seed, batch_size)
    res = score_images(images, labels, classifier, class_names if conditional else None, real_test=real_test,
                       cas=cas, cas_epochs=cas_epochs, seed=seed, data_dir=data_dir, log=log)
    res.update({"n_per_class": int(n_per_class), "seed": int(seed), "conditional": conditional,
                "seconds": round(time.perf_counter() - t0, 2)})
    return res


def _fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def format_table(res):
    """The metrics as aligned text lines."""
    rows = [("inception score", f"{_fmt(res['inception_score'], '.3f')} +- {_fmt(res['inception_score_std'], '.3f')}"
                                f"  (best {res['num_classes']})"),
            ("FID (classifier features)", _fmt(res.get("fid"), ".3f"))]
    if "bcis" in res:
        rows += [("BCIS", f"{res['bcis']:.3f}  (best {res['num_classes']})"),
                 ("WCIS", f"{res['wcis']:.3f}  (best 1)"),
                 ("label accuracy", _fmt(res["label_accuracy"])),
                 ("CAS (train on generated)", _fmt(res.get("cas")))]
    acc = res.get("classifier", {}).get("test_accuracy")
    rows.append(("classifier real test acc", _fmt(acc)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {val}" for name, val in rows]
    if "per_class_accuracy" in res:
        cells = [f"{c}:{_fmt(a, '.3f')}" for c, a in zip(res["class_names"], res["per_class_accuracy"])]
        lines.append("per-class accuracy:")
        lines += ["  " + "  ".join(cells[i:i + 8]) for i in range(0, len(cells), 8)]
    return lines


def write_outputs(res, out_dir):
    """metrics.json (atomic), and for a conditional model confusion.png and per_class_accuracy.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json"]
    # one key per line, each value on one line (the confusion matrix as a row list)
    text = ("{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in res.items()) + "\n}\n").encode()
    atomic_write_bytes(written[0], lambda f: f.write(text))
    if "confusion_matrix" in res:
        where = [res.get("dataset"), f"step {res['step']}" if res.get("step") is not None else res.get("source")]
        title = f" ({', '.join(w for w in where if w)})" if any(where) else ""
        written.append(Path(metrics.plot_confusion_matrix(np.asarray(res["confusion_matrix"]), res["class_names"],
                                                          out_dir / "confusion.png", title="Confusion matrix" + title)))
        acc = np.array([np.nan if a is None else a for a in res["per_class_accuracy"]])
        written.append(Path(metrics.plot_per_class_accuracy(acc, res["class_names"], out_dir / "per_class_accuracy.png",
                                                            title="Per-class label accuracy" + title)))
    return written


def _run_dir(checkpoint_path):
    p = Path(checkpoint_path).resolve().parent
    return p.parent if p.name == "checkpoints" else p


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m cganraw.evaluate",
                                description="Score a generator checkpoint with the evaluation classifier.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="RUN/checkpoints/last.npz or a run directory")
    what.add_argument("--real", action="store_true",
                      help="score N real training images per class of --dataset instead: the reference "
                           "row that generated images are judged against")
    p.add_argument("--classifier", help="classifier checkpoint (default: the cached one, trained if absent)")
    p.add_argument("--n-per-class", type=int, default=DEFAULT_N_PER_CLASS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: the run directory; runs/<dataset>-real with --real)")
    p.add_argument("--data-dir")
    p.add_argument("--dataset", help="override the checkpoint's dataset")
    p.add_argument("--no-cas", action="store_true", help="skip the Classification Accuracy Score")
    p.add_argument("--cas-epochs", type=int, default=DEFAULT_CAS_EPOCHS)
    args = p.parse_args(argv)
    if args.n_per_class < 1:
        p.error(f"--n-per-class must be >= 1, got {args.n_per_class}")
    if args.cas_epochs < 1:
        p.error(f"--cas-epochs must be >= 1, got {args.cas_epochs}")
    if args.real and not args.dataset:
        p.error("--real needs --dataset (the real images of which dataset?)")
    try:
        res, out, headline = (_score_real if args.real else _score_checkpoint)(args)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(headline)
    for line in format_table(res):
        print("  " + line)
    for path in write_outputs(res, Path(args.out) if args.out else out):
        print(f"wrote {path}")
    return 0


def _classifier(args, dataset):
    """--classifier, else the cached classifier of `dataset` (trained if absent); and its path."""
    from cganraw import classifier as C  # noqa: PLC0415
    if args.classifier:
        return C.load(args.classifier), str(args.classifier)
    return C.load_or_train(dataset, data_dir=args.data_dir), str(C.default_path(dataset))


def _score_checkpoint(args):
    """main's metrics of a generator checkpoint: (results, default output folder, headline)."""
    from cganraw import data  # noqa: PLC0415
    G, meta = load.load_generator(args.checkpoint)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise ValueError(f"{meta['path']}: the checkpoint names no dataset; pass --dataset")
    dataset = data.resolve_name(dataset)
    clf, clf_path = _classifier(args, dataset)
    if clf.dataset and clf.dataset != dataset:
        print(f"warning: the classifier was trained on {clf.dataset}, the generator on {dataset}",
              file=sys.stderr)
    test = data.load(dataset, "test", data_dir=args.data_dir)
    class_names = meta.get("class_names") or (test.class_names if meta.get("num_classes") else None)
    res = evaluate_generator(G, class_names, clf, args.n_per_class, args.seed, real_test=test,
                             cas=not args.no_cas, cas_epochs=args.cas_epochs, data_dir=args.data_dir)
    res.update({"checkpoint": meta["path"], "dataset": dataset, "model": meta.get("model") or
                meta.get("config", {}).get("model"), "step": meta.get("step"), "epoch": meta.get("epoch"),
                "classifier": dict(res["classifier"], path=clf_path)})
    return res, _run_dir(meta["path"]), f"{res['model']} on {dataset}, step {res['step']}, {res['num_samples']} samples:"


def real_reference(train, n_per_class, seed=0):
    """n_per_class real images of each class, drawn without replacement from `train` (a
    cganraw.data.Dataset): (images uint8 (K*n, 28, 28), labels (K*n,)), class-major."""
    rng = np.random.default_rng(seed)
    idx = []
    for k in range(train.num_classes):
        members = np.flatnonzero(train.labels == k)
        if len(members) < n_per_class:
            raise ValueError(f"{train.name} {train.split}: class {train.class_names[k]!r} has {len(members)} "
                             f"images, fewer than --n-per-class {n_per_class}")
        idx.append(rng.choice(members, n_per_class, replace=False))
    idx = np.concatenate(idx)
    return train.images[idx], train.labels[idx].astype(np.int64)


def _score_real(args):
    """main's metrics of real training images (--real), the reference row."""
    from cganraw import data  # noqa: PLC0415
    dataset = data.resolve_name(args.dataset)
    clf, clf_path = _classifier(args, dataset)
    train = data.load(dataset, "train", data_dir=args.data_dir)
    test = data.load(dataset, "test", data_dir=args.data_dir)
    images, labels = real_reference(train, args.n_per_class, args.seed)
    res = score_images(images, labels, clf, train.class_names, real_test=test, cas=not args.no_cas,
                       cas_epochs=args.cas_epochs, seed=args.seed, data_dir=args.data_dir)
    res.update({"source": f"real {dataset} training images", "dataset": dataset, "model": "real data",
                "n_per_class": int(args.n_per_class), "seed": int(args.seed),
                "classifier": dict(res["classifier"], path=clf_path)})
    return res, Path(f"runs/{dataset}-real"), f"real {dataset} training images, {res['num_samples']} samples:"


if __name__ == "__main__":
    sys.exit(main())
