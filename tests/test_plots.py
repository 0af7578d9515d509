"""cganraw.plots: every picture is set up by new_figure and written atomically by save_figure."""
import json

import numpy as np
import pytest

from cganraw import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")   # IHDR width, height


def write_metrics(path):
    rows = [{"step": s, "d_loss": 1.0 / s, "g_loss": 2.0, "d_real": 0.6, "d_fake": 0.4} for s in range(1, 6)]
    rows.append({"step": 5, "epoch": 1, "label_accuracy": 0.5})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_plot_confusion_matrix_writes_png(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [0, 0, 0]])
    out = plots.plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "sub" / "cm.png")
    data = (tmp_path / "sub" / "cm.png").read_bytes()
    assert out.endswith("cm.png") and len(data) > 1000 and data.startswith(PNG_MAGIC)
    big = np.random.default_rng(0).integers(0, 9, size=(47, 47))
    plots.plot_confusion_matrix(big, None, tmp_path / "big.png", normalize=False)
    assert (tmp_path / "big.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"plot_confusion_matrix: class_names must have 3"):
        plots.plot_confusion_matrix(cm, ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"plot_confusion_matrix: cm must be a square"):
        plots.plot_confusion_matrix(cm[:2], None, tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"plot_confusion_matrix: cm must be a numeric array"):
        plots.plot_confusion_matrix(np.array([["a"]]), None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_per_class_accuracy_writes_png(tmp_path):
    acc = np.array([1.0, 0.5, np.nan, 0.0])
    path = tmp_path / "acc.png"
    plots.plot_per_class_accuracy(acc, list("wxyz"), str(path))
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    plots.plot_per_class_accuracy(np.full(3, np.nan), None, tmp_path / "nan.png")
    assert (tmp_path / "nan.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"plot_per_class_accuracy: acc must be a 1-D"):
        plots.plot_per_class_accuracy(np.ones((2, 2)), None, path)


def test_save_grid_one_row_per_label(tmp_path, rng):
    u8 = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    wide = plots.save_grid(tmp_path / "g" / "rows.png", u8, row_labels=list("abc"), cols=8, title="t")
    w1, h1 = png_size(tmp_path / "g" / "rows.png")
    plots.save_grid(tmp_path / "tall.png", u8, row_labels=list("abcdefghijkl"), cols=2)
    w2, h2 = png_size(tmp_path / "tall.png")
    assert wide.endswith("rows.png") and w1 > w2 and h2 > h1
    plots.save_grid(tmp_path / "square.png", u8)            # no labels: a square-ish grid
    assert png_size(tmp_path / "square.png")[0] > 0


def test_mosaic_places_each_image():
    imgs = np.stack([np.full((28, 28), v, np.uint8) for v in (10, 20, 30, 40, 50)])
    m = plots.mosaic(imgs, 2, 3, pad=2)
    assert m.shape == (2 * 30 + 2, 3 * 30 + 2)
    assert m[2, 2] == 10 and m[2, 32] == 20 and m[32, 2] == 40 and m[32, 32] == 50
    assert m[32, 62] == 40 and m[0, 0] == 40               # the empty cell and the padding: background


def test_plot_losses(tmp_path):
    assert plots.plot_losses(write_metrics(tmp_path / "m.jsonl"), tmp_path / "loss.png").endswith("loss.png")
    assert png_size(tmp_path / "loss.png") == (800, 600)
    (tmp_path / "empty.jsonl").write_text("\n")
    assert plots.plot_losses(tmp_path / "empty.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    # a run stopped before its first logged step has no metrics.jsonl at all: no figure, no error
    assert plots.plot_losses(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_every_plot_uses_the_one_figure_setup(tmp_path, monkeypatch, rng):
    made = []
    real = plots.new_figure

    def spy(*a, **kw):
        made.append(a)
        return real(*a, **kw)
    monkeypatch.setattr(plots, "new_figure", spy)
    plots.save_grid(tmp_path / "a.png", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), row_labels=["x", "y"])
    plots.plot_losses(write_metrics(tmp_path / "m.jsonl"), tmp_path / "b.png")
    plots.plot_confusion_matrix(np.eye(3, dtype=int), None, tmp_path / "c.png")
    plots.plot_per_class_accuracy(np.ones(3), None, tmp_path / "d.png")
    assert len(made) == 4
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["a.png", "b.png", "c.png", "d.png"]


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "cm.png"
    target.write_bytes(b"old")

    def broken(self, *a, **kw):
        raise OSError(28, "No space left on device")
    from matplotlib.figure import Figure
    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="No space"):
        plots.plot_confusion_matrix(np.eye(2, dtype=int), None, target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cm.png"]


def test_to_uint8_images_is_the_images_module_conversion():
    from cganraw import images
    assert plots.to_uint8_images is images.to_uint8
