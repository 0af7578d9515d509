"""The step census (cganraw.census) counts exactly: on a tiny model, the launches, copies and
syncs it records on the emu backend equal what a CuPy that counts every call sees when the
cuda backend's code runs the same step (tests/cupy_standin). No timing is asserted."""
import contextlib
import importlib
import re

import pytest

from cganraw import backend, devicelog
from cganraw.bench import census
from tests import cupy_standin

TINY = dict(model="cgan-conv", width=4, batch_size=3, num_classes=5)


@pytest.fixture
def restore_backend():
    prev = backend.current()
    yield
    backend.use(prev)


def _census_with_standin_log(monkeypatch, **kw):
    """run_census on the active backend; the stand-in's log covers exactly the recorded step."""
    real = devicelog.recording

    @contextlib.contextmanager
    def recording():
        cupy_standin.reset()
        with real() as log:
            yield log
        snapshot.extend(cupy_standin.LOG)
    snapshot = []
    monkeypatch.setattr(devicelog, "recording", recording)
    c = census.run_census(**kw)
    return c, snapshot


@pytest.mark.parametrize("options", [dict(), dict(log_step=True), dict(step=4), dict(d_norm="spectral"),
                                     dict(mismatch=0.0, ema_decay=0.0, r1=0.0), dict(model="cgan-mlp"),
                                     dict(model="dcgan", width=4), dict(d_stem=3, step=4)],
                         ids=["defaults", "log-step", "r1-step", "spectral", "plain", "cgan-mlp", "dcgan",
                              "d-stem-r1-step"])
def test_counts_equal_a_counting_cupy(options, monkeypatch, restore_backend):
    kw = {**TINY, **options}
    backend.use("emu")
    emu = census.run_census(**kw)
    with cupy_standin.installed():
        backend.use("cuda")
        cuda, standin_log = _census_with_standin_log(monkeypatch, **kw)
    standin = {}
    for kind, name, *_ in standin_log:
        standin[(kind, name)] = standin.get((kind, name), 0) + 1
    assert emu.config["d_stem"] == options.get("d_stem", 16 if kw.get("model", "cgan-conv") == "cgan-conv" else 0)
    assert dict(emu.log.counts()) == standin, "the census missed or invented device work"
    assert dict(cuda.log.counts()) == standin
    # bytes and FLOPs are the same on both backends too
    assert [(e.kind, e.name, e.bytes, e.flops) for e in emu.log.events] == \
           [(e.kind, e.name, e.bytes, e.flops) for e in cuda.log.events]


def test_a_step_between_log_steps_never_waits(restore_backend):
    backend.use("emu")
    c = census.run_census(**TINY)
    assert c.syncs == 0
    assert [e.kind for e in c.log.copies] == ["h2d", "h2d"]       # the batch's images and labels
    logged = census.run_census(**TINY, log_step=True)
    assert logged.syncs == 2 and [e.kind for e in logged.log.copies] == ["h2d", "h2d", "d2h", "d2h"]
    names = c.log.launches_by_name()
    # G's moving average, with its BatchNorm statistics' copy when it has some: one launch
    batch = c.config["g_norm"] == "batch"
    assert names["adam_update_v2"] == 2 and names["ema_update_v3" if batch else "ema_update_v2"] == 1
    assert names["ema_update_v2" if batch else "ema_update_v3"] == 0
    # the default D (minibatch stddev run segmented, no spectral norm) runs its real,
    # wrong-label and fake terms as one batch, then for G
    assert names["step_stats_v1"] == 1 and names["dropout_forward_v3"] == 2
    assert names["minibatch_std_forward_v3"] == 1
    assert not [n for n in names if n.startswith("spectral_norm")]
    # with spectral norm, each of those two forwards normalises D's three layers together
    # (every power iteration in one launch, every W / sigma in another); one backward with
    # weight gradients (two launches for the three)
    sn = census.run_census(**TINY, d_norm="spectral").log.launches_by_name()
    assert sn["spectral_norm_power_multi_v1"] == 2 and sn["spectral_norm_forward_multi_v1"] == 2
    assert sn["spectral_norm_dot_multi_v1"] == 1 and sn["spectral_norm_backward_multi_v1"] == 1
    assert not [n for n in sn if n.startswith("spectral_norm") and "multi" not in n]
    # an R1 step (every 4th by default) runs D's forward and backward twice more on the real
    # batch, in evaluation mode (no dropout): its input gradient g, then [x + e g | x - e g]
    # as one batch with its minibatch stddev segmented. It never waits either.
    r1_step = census.run_census(**TINY, step=4)
    assert r1_step.syncs == 0 and [e.kind for e in r1_step.log.copies] == ["h2d", "h2d"]
    r1 = r1_step.log.launches_by_name()
    assert r1["label_projection_forward_v1"] == names["label_projection_forward_v1"] + 2
    assert r1["minibatch_std_forward_v3"] == 2 and r1["minibatch_std_backward_v3"] == 2
    assert r1["dropout_forward_v3"] == 2 and r1["step_stats_v1"] == 1
    # one launch for every loss term of D's step, one for G's; the label paths fused
    assert names["bce_with_logits_segments_v1"] == 2
    # G's seed map (channel-major); the projection D has no label map: a projection term each
    # way in each of D's two passes
    assert names["label_map_concat_forward_v3"] == 1 and names["label_map_concat_backward_v2"] == 1
    assert names["label_map_concat_backward_v1"] == 0
    assert names["label_projection_forward_v1"] == names["label_projection_backward_v1"] == 2
    concat = census.run_census(**TINY, d_label="concat").log.launches_by_name()
    assert concat["label_map_concat_forward_v3"] == 3 and concat["label_map_concat_backward_v1"] == 2
    assert names["minibatch_std_forward_v2"] == 1            # D for G: one term, unsegmented
    # no layout copies around D's convolutions. The separate gradient adds: G's instance
    # norms' (weight and bias, two norms; the FiLM between each norm and its LeakyReLU keeps
    # the pair from fusing, and the unfused norm adds its parameter sums into .grad by launches
    # of their own) and the projection D's (its two readers of D's features, in each of D's two
    # backwards). G's last Conv2d flips its taps, not its weight gradient.
    assert c.config["g_film"] and c.config["d_label"] == "projection"
    assert names["add"] == 6 and names["im2col_v3"] == names["col2im_v4"] == 1
    assert census.run_census(**TINY, g_film=False).log.launches_by_name()["add"] == 2
    assert census.run_census(**TINY, g_film=False, d_label="concat").log.launches_by_name()["add"] == 0
    # a per-sample D runs its real, wrong-label and fake terms as one batch, then for G
    names = census.run_census(**TINY, minibatch_std=False, d_norm="none").log.launches_by_name()
    assert names["dropout_forward_v3"] == 2


def test_instance_norm_g_packs_its_average(restore_backend):
    # --g-norm instance (issue 12's G): one moving-average launch and no buffer copy, as G
    # has no running statistics; the norm's own kernels instead of BatchNorm's
    backend.use("emu")
    c = census.run_census(**TINY, g_norm="instance", g_film=False, d_label="concat")   # no FiLM, no projection
    names = c.log.launches_by_name()
    assert c.config["g_norm"] == "instance" and not c.config["g_batchnorm"]
    assert names["ema_update_v2"] == 1 and not any(n.startswith("batchnorm") for n in names)
    assert names["instancenorm_leaky_relu_forward_v2"] == 2 and names["instancenorm_leaky_relu_backward_v2"] == 2
    # fused with its LeakyReLU: no activation pass, no gradient adds
    assert names["add"] == 0 and "leaky_relu_backward_v2" not in names
    assert census.run_census(**TINY, g_batchnorm=False).config["g_norm"] == "none"


@pytest.mark.parametrize("options, launches, gemms, convs, copies", [
    (dict(g_norm="batch", g_film=False, d_label="concat", d_norm="spectral", d_stem=0), 100, 21, 14, 6),
    (dict(g_norm="instance", g_film=False, d_label="concat", d_norm="spectral", d_stem=0), 90, 21, 14, 2),
    (dict(d_norm="spectral", d_stem=0), 118, 24, 13, 8),
    (dict(d_stem=0), 112, 24, 13, 8),
    (dict(d_stem=0, step=4), 159, 33, 20, 10),
    (dict(), 125, 29, 17, 8),
    (dict(step=4), 185, 43, 28, 10)])
def test_launch_totals_of_the_default_step(options, launches, gemms, convs, copies, restore_backend):
    # the whole step's launches on the tiny model, exactly (the count does not depend on the
    # width). The defaults before FiLM and the projection D: 90 with instance norm (issue 14
    # asked for at most 90 at width 128), 21 cuBLAS GEMMs and 14 im2col/col2im, 6 layout and
    # batch copies (2 with instance norm: G's activations stay channel-major from its seed map
    # to its last conv). The default of 2026-12-03 morning (third row) adds FiLM's projections
    # (4 GEMMs), its launches and the unfused norms around it (30 more, 6 copies of G's
    # activations between layouts). Today's default drops spectral norm (6 launches fewer);
    # every 4th step (the last row) runs R1: D's forward and backward twice more (10 GEMMs,
    # 8 im2col/col2im, the labels' copies), a fill of ones and R1's two kernels. D's stem
    # (d_stem 16, the default since the eleventh round; the last two rows) adds a conv and its
    # LeakyReLU to every pass of D: 13 launches a step, 5 GEMMs, 4 im2col/col2im (R1's step:
    # 26, 10, 8). D's own backwards (its step's, and R1's second) skip the images' gradient
    # where no label map needs it (the projection D: its first conv's input GEMM and col2im,
    # 2 launches each). A change here is a change of the step.
    backend.use("emu")
    c = census.run_census(**TINY, **options)
    names = c.log.launches_by_name()
    assert c.launches == launches and c.syncs == 0
    conv = sum(names[k] for k in ("im2col_v2", "im2col_v3", "col2im_v3", "col2im_v4"))
    assert names["cublas_sgemm"] == gemms and conv == convs and names["copy"] == copies
    assert (names["r1_scalars_v1"], names["r1_perturb_v1"]) == ((1, 1) if options.get("step") == 4 else (0, 0))


def test_report_ends_with_the_summary_line(restore_backend):
    backend.use("emu")
    c = census.run_census(**TINY)
    last = c.report().splitlines()[-1]
    m = re.fullmatch(r"census: launches=(\d+) syncs=(\d+) copies=(\d+) est_step_ms=(\d+\.\d+) \(gpu=h100\)", last)
    assert m, last
    assert int(m[1]) == c.launches == len(c.log.launches) and int(m[2]) == 0 and int(m[3]) == 2
    # the estimate is the sum of its parts
    gpu = census.GPUS["h100"]
    assert float(m[4]) == pytest.approx(sum(census.estimate_us(e, gpu) for e in c.log.events) / 1e3, abs=1e-3)


def test_estimate_model():
    gpu = census.GPUS["h100"]
    gemm = devicelog.Event("gemm", "cublas_sgemm", bytes=3 * 4 * 1024 * 1024, flops=2 * 1024 ** 3)
    assert census.estimate_us(gemm, gpu) == pytest.approx(2 * 1024 ** 3 / 67e12 * 1e6 + census.LAUNCH_US)
    assert census.estimate_us(gemm, gpu, tf32=True) == pytest.approx(
        max(3 * 4 * 1024 ** 2 / 3.35e12, 2 * 1024 ** 3 / 495e12) * 1e6 + census.LAUNCH_US)
    copy = devicelog.Event("copy", "copy", bytes=3_350_000)
    assert census.estimate_us(copy, gpu, launch_us=0) == pytest.approx(1.0)
    assert census.estimate_us(devicelog.Event("sync", "sync"), gpu) == census.SYNC_US


def test_cli(tmp_path, capsys, restore_backend):
    bench = importlib.import_module("cganraw.bench.__main__")
    out = tmp_path / "census.json"
    backend.use("numpy")
    assert bench.main(["--census", "--backend", "emu", "--model", "cgan-conv", "--width", "4", "--batch-size", "2",
                       "--json", str(out), "--quiet"]) == 0
    assert backend.current() == "numpy"         # the census's backend does not outlive it
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("census: launches=") and lines[-1].endswith("(gpu=h100)")
    import json
    data = json.loads(out.read_text())
    assert data["syncs"] == 0 and data["launches"] == sum(r["count"] for r in data["rows"]
                                                          if r["kind"] in devicelog.LAUNCH_KINDS)
    # an R1 step, and the penalty off
    assert bench.main(["--census", "--backend", "emu", "--width", "4", "--batch-size", "2", "--step", "8",
                       "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "R1 0.3 every 4 steps; step 8)" in report and "r1_perturb_v1" in report
    assert bench.main(["--census", "--backend", "emu", "--width", "4", "--batch-size", "2", "--step", "8",
                       "--r1", "0", "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "R1 0.0 every 4 steps; step 8)" in report and "r1_perturb_v1" not in report


def test_cli_errors(capsys, restore_backend):
    with pytest.raises(SystemExit) as e:
        census.main(["--gpu", "tpu"])
    assert e.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        census.main(["--step", "0"])
    assert e.value.code == 2 and "argument --step" in capsys.readouterr().err
    # R1 on the dcgan's BatchNorm D: one line, no traceback
    assert census.main(["--model", "dcgan", "--width", "4", "--batch-size", "2", "--r1", "1", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "BatchNorm" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="use the cuda or emu backend"):
        prev = backend.current()
        backend.use("numpy")
        try:
            census.run_census(**TINY)
        finally:
            backend.use(prev)
    assert census.GPUS["h100"] == census.GPU("H100 SXM (HBM3)", 3.35e12, 67e12, 495e12)
