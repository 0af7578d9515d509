"""`cganraw.sample --interpolate` and `--label-sweep` (cganraw.interpolate), on a tiny
progressive run of synthetic EMNIST letters."""
import numpy as np
import pytest

from cganraw import interpolate, load, models, sample, train
from cganraw.images import to_uint8
from tests.synthetic import write_emnist


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interp")
    write_emnist(tmp / "data", "letters", np.random.default_rng(0), n=(48, 16))
    out = tmp / "run"
    argv = ["--dataset", "emnist", "--data-dir", tmp / "data", "--out", out, "--width", 3, "--batch-size", 8,
            "--epochs", 1, "--progressive", "--grow-at", 0.2, "--fade", 0.5, "--quiet", "--no-download"]
    assert train.main([str(a) for a in argv]) == 0
    return out


def test_slerp_keeps_the_norm_and_hits_both_ends():
    rng = np.random.default_rng(0)
    z0, z1 = rng.standard_normal(64), rng.standard_normal(64)
    z1 -= z0 * (z0 @ z1) / (z0 @ z0)                     # orthogonal,
    z1 *= np.linalg.norm(z0) / np.linalg.norm(z1)        # same norm: the walk stays on the sphere
    path = interpolate.slerp(z0, z1, np.linspace(0, 1, 5))
    np.testing.assert_allclose(path[0], z0, rtol=1e-6)
    np.testing.assert_allclose(path[-1], z1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), np.linalg.norm(z0), rtol=1e-6)
    np.testing.assert_allclose(path[2], (z0 + z1) / np.sqrt(2), rtol=1e-5, atol=1e-6)
    same = interpolate.slerp(z0, 2 * z0, np.array([0.0, 0.5, 1.0]))   # parallel: the straight line
    np.testing.assert_allclose(same, [z0, 1.5 * z0, 2 * z0], rtol=1e-6)


def test_interpolation_draws_each_label_along_the_slerp(run_dir, tmp_path):
    out = tmp_path / "walk.npz"
    assert sample.main(["--checkpoint", str(run_dir), "--chars", "AbZ", "--interpolate", "--steps", "5",
                        "--seed", "3", "--out", str(out)]) == 0
    with np.load(out) as f:
        images, labels, z = f["images"], f["labels"], f["z"]
    assert images.shape == (3, 5, 28, 28) and images.dtype == np.uint8 and list(labels) == [0, 1, 25]
    ends = np.random.default_rng(3).standard_normal((2, z.shape[1]), dtype=np.float32)
    np.testing.assert_allclose(z[[0, -1]], ends, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z, interpolate.slerp(ends[0], ends[1], np.linspace(0, 1, 5)))
    G, _ = load.load_generator(run_dir)
    assert G.growth[0] == 28
    expected = models.generate(G, np.full(5, 25), z=z)
    np.testing.assert_array_equal(images[2], to_uint8(expected))
    assert not np.array_equal(images[0, 0], images[0, -1])


def test_label_sweep_keeps_one_noise_vector_per_row(run_dir, tmp_path):
    out = tmp_path / "sweep.npz"
    assert sample.main(["--checkpoint", str(run_dir), "--label-sweep", "--labels", "0,4,7", "--n-per-label", "2",
                        "--out", str(out)]) == 0
    with np.load(out) as f:
        images, z = f["images"], f["z"]
    assert images.shape == (2, 3, 28, 28) and z.shape[0] == 2
    G, _ = load.load_generator(run_dir)
    # row r is labels 0, 4, 7 drawn with z[r]; one batch of all rows, as the sweep draws it
    # (OpenBLAS may sum a GEMM in another order for another batch size: a last-bit change)
    drawn = models.generate(G, np.tile([0, 4, 7], 2), z=np.repeat(z, 3, axis=0))
    np.testing.assert_array_equal(images, to_uint8(drawn).reshape(2, 3, 28, 28))
    assert not np.array_equal(images[0], images[1])


@pytest.mark.parametrize("walk,frames", [(["--interpolate", "--steps", "6"], 6), (["--label-sweep"], 3)])
def test_png_and_animated_gif(run_dir, tmp_path, walk, frames):
    from PIL import Image
    gif, png = tmp_path / "a.gif", tmp_path / "a.png"
    for out in (gif, png):
        assert sample.main(["--checkpoint", str(run_dir), "--chars", "XYZ", *walk, "--n-per-label", "2",
                            "--out", str(out)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == frames and im.is_animated
        tiles = 3 if walk[0] == "--interpolate" else 2       # a frame: every label, or every z
        assert im.size[0] == 3 * (tiles * 30 + 2)


@pytest.mark.parametrize("argv,needle", [
    (["--interpolate", "--steps", "1", "--out", "x.png"], "--steps must be at least 2"),
    (["--out", "x.gif"], ".gif with --interpolate or --label-sweep"),
    (["--interpolate", "--out", "x.jpg"], "must end in .png or .npz"),
])
def test_bad_interpolation_flags_are_argparse_errors(run_dir, tmp_path, argv, needle, capsys):
    argv = [a if not a.startswith("x.") else str(tmp_path / a) for a in argv]
    with pytest.raises(SystemExit) as e:
        sample.main(["--checkpoint", str(run_dir), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x.*"))


def test_a_label_out_of_range_is_one_line(run_dir, tmp_path, capsys):
    assert sample.main(["--checkpoint", str(run_dir), "--interpolate", "--labels", "0,99",
                        "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "out of range" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_interpolate_and_label_sweep_exclude_each_other(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--checkpoint", str(run_dir), "--interpolate", "--label-sweep", "--out", str(tmp_path / "x.png")])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_an_unconditional_model_is_refused(tmp_path, capsys):
    write_emnist(tmp_path / "data", "letters", np.random.default_rng(0), n=(48, 16))
    out = tmp_path / "run"
    assert train.main([str(a) for a in ("--dataset", "emnist", "--data-dir", tmp_path / "data", "--out", out,
                                        "--model", "gan-mlp", "--max-steps", 1, "--batch-size", 8, "--quiet",
                                        "--no-download")]) == 0
    assert sample.main(["--checkpoint", str(out), "--label-sweep", "--out", str(tmp_path / "s.png")]) == 1
    assert "unconditional" in capsys.readouterr().err
