"""Text rendering (cganraw.render), the exported model format (cganraw.export), the shipped
digits model and the `cganraw.write` command."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cganraw import checkpoint, export, load, models, render, sample, write
from tests.writing import BALANCED, LETTERS, make_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"letters": make_run(base / "letters", LETTERS),
            "balanced": make_run(base / "balanced", BALANCED, dataset="emnist-balanced", model="cgan-mlp", seed=3),
            "digits": make_run(base / "digits", list("0123456789"), dataset="mnist", seed=5)}


@pytest.fixture(scope="module")
def renderer(runs):
    return render.Renderer(render.load_models([f"letters={runs['letters']}"]))


def decode(png):
    return np.asarray(Image.open(io.BytesIO(png)))


# ------------------------------------------------------------------ character sets ---

def test_char_classes_fold_case_only_where_the_dataset_merged_it():
    letters = render.char_classes(LETTERS)
    assert letters["A"] == letters["a"] == 0 and letters["z"] == 25 and len(letters) == 52
    bal = render.char_classes(BALANCED)
    assert bal["a"] == BALANCED.index("a") != bal["A"] == BALANCED.index("A")
    assert bal["c"] == bal["C"] == BALANCED.index("C")          # c has no class of its own
    assert bal["7"] == 7 and " " not in bal and "!" not in bal
    assert len(bal) == 10 + 26 + 26
    assert sample.labels_for_chars("aZc", BALANCED) == [bal["a"], bal["Z"], bal["c"]]


def test_routing_goes_to_the_first_model_that_writes_the_character(runs):
    r = render.Renderer(render.load_models([f"letters={runs['letters']}", f"balanced={runs['balanced']}"]))
    assert [m.name for m in r.models] == ["digits", "letters", "balanced"]
    assert r.route["7"] == (0, 7)                                # the shipped digits model comes first
    assert r.route["a"] == (1, 0) and r.route["B"] == (1, 1)     # letters before balanced
    r2 = render.Renderer(render.load_models([f"balanced={runs['balanced']}", f"letters={runs['letters']}"],
                                            shipped=False))
    assert r2.route["a"] == (0, BALANCED.index("a")) and r2.route["c"] == (0, BALANCED.index("C"))
    assert r2.route["0"] == (0, 0)


def test_a_model_named_digits_replaces_the_shipped_one(runs):
    ms = render.load_models([f"digits={runs['digits']}"])
    assert [m.name for m in ms] == ["digits"] and "shipped" not in ms[0].meta


# ------------------------------------------------------------------ text checks -------

@pytest.mark.parametrize("text, expect", [
    ("", "empty"), ("   \n ", "empty"), ("1" * 257, "257 characters"), ("\n".join("1" * 9), "9 lines"),
])
def test_check_refuses_unusable_text(renderer, text, expect):
    with pytest.raises(render.TextError, match=expect):
        renderer.check(text)


def test_check_names_each_unwritable_character_once_in_order(renderer):
    with pytest.raises(render.TextError) as e:
        renderer.check("héllo, wörld é\t")
    assert e.value.characters == ["é", ",", "ö", "\t"]
    assert "'é'" in str(e.value) and "'\\t'" in str(e.value)


def test_check_accepts_the_limits_exactly(renderer):
    renderer.check("1" * 256)
    renderer.check("\n".join("12345678"))
    renderer.check("Hello 2026\nok")


def test_render_rejects_bad_options(renderer):
    for kw in ({"style": "wild"}, {"layout": "grid"}, {"ink": "red"}, {"scale": 5}, {"scale": 0},
               {"scale": True}, {"seed": -1}, {"seed": 2**32}, {"seed": 1.5}):
        with pytest.raises(render.RenderError):
            renderer.render("12", **kw)


# ------------------------------------------------------------------ layouts ------------

@pytest.mark.parametrize("scale", [1, 3])
def test_monospace_puts_character_i_of_line_j_in_cell_i_j(renderer, scale):
    text = "1a 2\nBc\n\n7"
    glyphs = renderer.glyphs(text, seed=11)
    out = renderer.render(text, seed=11, layout="monospace", scale=scale, ink="light")
    c = 28 * scale
    assert out.shape == (4 * c, 4 * c)
    k = 0
    for j, line in enumerate(text.split("\n")):
        for i in range(4):
            cell = out[j * c:(j + 1) * c, i * c:(i + 1) * c]
            if i < len(line) and line[i] != " ":
                expect = np.repeat(np.repeat(glyphs[k], scale, 0), scale, 1)
                np.testing.assert_array_equal(cell, expect, err_msg=f"line {j} char {i}")
                k += 1
            else:
                assert not cell.any(), f"line {j} cell {i} should be empty"
    assert k == len(glyphs)
    dark = renderer.render(text, seed=11, layout="monospace", scale=scale, ink="dark")
    np.testing.assert_array_equal(dark, 255 - out)


def _glyph(cols, value=200):
    g = np.zeros((28, 28), np.uint8)
    g[5:20, cols] = value
    return g


def test_ink_columns_crop_to_the_ink():
    g = _glyph(slice(6, 13))
    g[3, 4] = render.INK_THRESHOLD        # faint: not ink, and outside the crop
    g[10, 8] = 30                         # faint inside the crop: kept
    cut = render.ink_columns(g)
    np.testing.assert_array_equal(cut, g[:, 6:13])
    assert render.ink_columns(np.zeros((28, 28), np.uint8)).shape == (28, render.BLANK)


def test_proportional_layout_geometry():
    a, b, c = _glyph(slice(3, 10), 100), _glyph(slice(10, 14), 150), _glyph(slice(0, 28), 250)
    out = render.proportional(["ab c", "b"], iter([a, b, c, b]))
    M, G, S, L = render.MARGIN, render.GAP, render.SPACE, render.LINE_GAP
    width1 = 7 + G + 4 + G + S + G + 28
    assert out.shape == (2 * 28 + L + 2 * M, width1 + 2 * M)
    x = M
    for glyph, w in ((a, 7), (b, 4)):
        np.testing.assert_array_equal(out[M:M + 28, x:x + w], render.ink_columns(glyph))
        assert not out[:, x + w:x + w + G].any()
        x += w + G
    assert not out[:, x:x + S + G].any()                       # the space
    np.testing.assert_array_equal(out[M:M + 28, x + S + G:x + S + G + 28], c)
    y2 = M + 28 + L
    np.testing.assert_array_equal(out[y2:y2 + 28, M:M + 4], render.ink_columns(b))
    assert not out[y2:, M + 4:].any() and not out[:M].any() and not out[:, :M].any()


def test_proportional_render_is_narrower_than_monospace_for_real_glyphs():
    r = render.Renderer(render.load_models())
    prop = r.render("0800 2026", seed=1, ink="light")
    mono = r.render("0800 2026", seed=1, ink="light", layout="monospace")
    assert prop.shape[0] == 28 + 2 * render.MARGIN and mono.shape == (28, 9 * 28)
    assert prop.shape[1] < mono.shape[1]
    assert prop.sum() > 0.8 * mono.sum()      # cropping cut only blank columns


# ------------------------------------------------------------------ noise, determinism --

def test_style_same_keeps_one_hand_per_word_and_varied_does_not(renderer):
    text = "aa a"
    same = renderer.glyphs(text, seed=4, style="same")
    np.testing.assert_array_equal(same[0], same[1])             # one word, one noise vector
    assert not np.array_equal(same[0], same[2])                 # the next word: another hand
    varied = renderer.glyphs(text, seed=4, style="varied")
    assert not np.array_equal(varied[0], varied[1])


def test_same_request_same_seed_same_bytes(renderer):
    png = renderer.render_png("Call 0800\n2026", seed=99, style="varied", scale=2)
    assert renderer.render_png("Call 0800\n2026", seed=99, style="varied", scale=2) == png
    assert renderer.clone().render_png("Call 0800\n2026", seed=99, style="varied", scale=2) == png
    assert renderer.render_png("Call 0800\n2026", seed=100, style="varied", scale=2) != png
    a = decode(png)
    assert a.dtype == np.uint8 and a.shape == renderer.render("Call 0800\n2026", seed=99, style="varied",
                                                               scale=2).shape


def test_png_encoder_round_trips():
    a = np.random.default_rng(0).integers(0, 256, (13, 37), dtype=np.uint8)
    png = render.encode_png(a)
    np.testing.assert_array_equal(decode(png), a)
    assert render.encode_png(a.copy()) == png


def test_a_passed_deadline_stops_the_render(renderer):
    with pytest.raises(render.RenderTimeout):
        renderer.render("12", deadline=0.0)


def test_glyphs_match_models_generate(renderer):
    """Each glyph is models.generate's image for its class and noise."""
    m = renderer.models[1]
    z = render._noise(8, 0, 0, m.G.latent_dim)[None]
    expect = models.generate(m.G, np.array([m.chars["Q"]]), z=z)
    from cganraw import images
    np.testing.assert_array_equal(renderer.glyphs("Q", seed=8)[0], images.to_uint8(expect)[0])


# ------------------------------------------------------------------ loading ------------

def test_missing_corrupt_and_unfit_model_files_are_named(tmp_path, runs):
    with pytest.raises(render.ModelLoadError, match="nope.npz: model file not found"):
        render.load_model("x", tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(render.ModelLoadError, match=str(bad)):
        render.load_model("x", bad)
    nan_run = make_run(tmp_path / "nan", LETTERS)
    ck = checkpoint.load(nan_run)
    G, D = load.build_models(ck)
    G.fc.weight.data[0, 0] = np.nan
    checkpoint.save(nan_run / "checkpoints" / "last.npz", G, D, meta=ck["meta"])
    with pytest.raises(render.ModelLoadError, match="non-finite"):
        render.load_model("x", nan_run)
    uncond = make_run(tmp_path / "gan", LETTERS, model="gan-mlp")
    with pytest.raises(render.ModelLoadError, match="unconditional"):
        render.load_model("x", uncond)


def test_model_specs_are_checked(runs):
    for spec in ("letters", "=x", "a b=x", "letters="):
        with pytest.raises(ValueError):
            render.parse_model_spec(spec)
    with pytest.raises(ValueError, match="given twice"):
        render.load_models([f"a={runs['letters']}", f"a={runs['letters']}"])


# ------------------------------------------------------------------ export -------------

def test_export_round_trips_the_ema_generator_with_metadata(tmp_path, runs):
    run = runs["letters"]
    res = {"label_accuracy": 0.75, "fid": 12.5, "inception_score": 20.1, "cas": 0.5, "step": 7,
           "confusion_matrix": [[1]], "checkpoint": "x",
           "classifier": {"dataset": "emnist-letters", "test_accuracy": 0.93, "path": "/home/someone/c.npz"}}
    (run / "metrics.json").write_text(json.dumps(res))
    out = tmp_path / "letters.npz"
    command = "python -m cganraw.train --dataset emnist"
    assert export.main([str(run), "--out", str(out), "--training-command", command]) == 0
    assert export.is_exported(out) and not export.is_exported(run / "checkpoints" / "last.npz")
    G, meta = export.load_generator(out)
    G0, meta0 = load.load_generator(run, ema=True)
    assert meta0["ema"] and meta["ema"]
    z = np.random.default_rng(0).standard_normal((5, 16), dtype=np.float32)
    lab = np.arange(5)
    np.testing.assert_array_equal(models.generate(G, lab, z=z), models.generate(G0, lab, z=z))
    assert meta["dataset"] == "emnist-letters" and meta["class_names"] == LETTERS
    assert meta["characters"] == "".join(sorted(set(LETTERS) | {c.lower() for c in LETTERS}))
    assert meta["config"] == {"model": "cgan-conv", "width": 8, "latent_dim": 16, "g_batchnorm": True}
    assert meta["training_command"] == "python -m cganraw.train --dataset emnist"
    assert meta["metrics"]["label_accuracy"] == 0.75 and "confusion_matrix" not in meta["metrics"]
    assert meta["metrics"]["classifier"] == {"dataset": "emnist-letters", "test_accuracy": 0.93}
    with np.load(out) as z:
        assert not [k for k in z.files if k.startswith(("D.", "opt_"))]
    (run / "metrics.json").unlink()


def test_an_exported_generator_keeps_its_cgan_conv_options(tmp_path):
    G, _ = models.build("cgan-conv", 10, latent_dim=16, width=8, seed=2, g_norm="instance", progressive=True)
    meta = {"format": export.FORMAT, "format_version": 1, "num_classes": 10, "class_names": list("0123456789"),
            "config": {"model": "cgan-conv", "width": 8, "latent_dim": 16, "g_batchnorm": False,
                       "g_norm": "instance", "progressive": True}}
    arrays = {f"G.{k}": np.asarray(v) for k, v in G.state_dict().items()}
    np.savez(tmp_path / "g.npz", meta=np.asarray(json.dumps(meta)), **arrays)
    G2, _ = export.load_generator(tmp_path / "g.npz")
    z = np.random.default_rng(1).standard_normal((3, 16), dtype=np.float32)
    np.testing.assert_array_equal(models.generate(G2, np.arange(3), z=z), models.generate(G, np.arange(3), z=z))


def test_export_rebuilds_the_training_command_and_refuses_stale_metrics(tmp_path, runs):
    run = make_run(tmp_path / "r", LETTERS, step=9)
    assert export.training_command({"dataset": "emnist-letters", "model": "cgan-mlp", "epochs": 20, "lr": 2e-4,
                                    "g_batchnorm": False}) == \
        "python -m cganraw.train --dataset emnist-letters --model cgan-mlp --g-norm none --lr 0.0002"
    (run / "metrics.json").write_text(json.dumps({"label_accuracy": 0.5, "step": 3}))
    with pytest.raises(export.ExportError, match="scores step 3"):
        export.export(run, tmp_path / "x.npz")
    (run / "metrics.json").unlink()
    with pytest.raises(export.ExportError, match="metrics.json not found"):
        export.export(run, tmp_path / "x.npz", require_metrics=True)
    assert not (tmp_path / "x.npz").exists()


def test_export_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in ([str(tmp_path / "none"), "--out", str(tmp_path / "x.npz")],
                 [str(tmp_path), "--out", str(tmp_path / "x.txt")]):
        p = subprocess.run([sys.executable, "-m", "cganraw.export", *args], check=False, capture_output=True,
                           text=True, env=env)
        assert p.returncode == 1 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr


# ------------------------------------------------------------------ the shipped model --

def test_the_shipped_digits_model():
    path = render.shipped_model_path()
    assert path.is_file() and path.stat().st_size < 5_000_000
    _, meta = export.load_generator(path)
    assert meta["dataset"] == "mnist" and meta["characters"] == "0123456789" and meta["ema"]
    assert meta["model"] == "cgan-conv" and meta["training_command"].startswith("python -m cganraw.train")
    m = meta["metrics"]
    assert m["step"] == meta["step"] and m["n_per_class"] >= 100
    assert m["label_accuracy"] > 0.9       # it draws the digit it is asked for
    (model,) = render.load_models()
    assert model.name == "digits" and model.characters == "0123456789" and model.meta["shipped"]


# ------------------------------------------------------------------ the write command --

def test_write_cli_renders_text(tmp_path, runs):
    out = tmp_path / "call.png"
    assert write.main(["Call 0800 2026", "--out", str(out), "--model", f"letters={runs['letters']}",
                       "--seed", "5", "--scale", "2", "--quiet"]) == 0
    a = decode(out.read_bytes())
    assert a.shape[0] == 2 * (28 + 2 * render.MARGIN) and a.max() == 255 and a.min() < 128
    mono = tmp_path / "mono.png"
    assert write.main(["0800\\n2026", "--out", str(mono), "--layout", "monospace", "--ink", "light", "--quiet"]) == 0
    assert decode(mono.read_bytes()).shape == (56, 4 * 28)
    again = tmp_path / "again.png"
    write.main(["0800\\n2026", "--out", str(again), "--layout", "monospace", "--ink", "light", "--quiet"])
    assert again.read_bytes() == mono.read_bytes()


def test_write_cli_errors(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cganraw.write", *args], check=False, capture_output=True,
                              text=True, env=env)

    p = run("Call 0800", "--out", str(tmp_path / "x.png"))      # no model writes letters by default
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "'C'" in p.stderr and "'a'" in p.stderr
    p = run("0800", "--out", str(tmp_path / "x.png"), "--model", f"x={tmp_path / 'missing.npz'}")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "missing.npz" in p.stderr
    p = run("0800", "--out", str(tmp_path / "x.jpg"))
    assert p.returncode == 1 and ".png" in p.stderr
    p = run("0800", "--out", str(tmp_path / "x.png"), "--scale", "5")
    assert p.returncode == 2
    assert not (tmp_path / "x.png").exists()
