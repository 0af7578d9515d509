"""Helpers for the tests that train through the trainer's command line in-process."""
from cganraw import checkpoint, train


def run_cli(*argv):
    """train.main on the arguments as strings; returns its exit code."""
    return train.main([str(a) for a in argv])


def final_state(run_dir):
    """The run's last checkpoint, loaded."""
    return checkpoint.load(run_dir / "checkpoints" / "last.npz")


def resave_with_config(path, config):
    """Rewrite the checkpoint at `path` with `config` as its run's configuration (an older
    run's, say), every weight, optimiser moment and random state as saved."""
    import numpy as np

    from cganraw import load
    from cganraw.optim import Adam
    ck = checkpoint.load(path)
    G, D = load.build_models(ck)
    G_ema, _ = load.build_models(ck)
    G_ema.load_state_dict(ck["G_ema"])
    opt_g, opt_d = Adam(G.parameters()), Adam(D.parameters())
    opt_g.load_state_dict(ck["opt_g"])
    opt_d.load_state_dict(ck["opt_d"])
    rngs = {k: np.random.default_rng() for k in ck["rng"]}
    for k, state in ck["rng"].items():
        checkpoint.restore_rng(rngs[k], state)
    checkpoint.save(path, G, D, opt_g, opt_d, rngs, {**ck["meta"], "config": config}, G_ema)


def assert_resume_conflict(flag, saved, asked, saved_args, asked_args, data_dir, tmp_path, capsys, tiny):
    """Train one step with saved_args, resume with asked_args: the resume must stop with exit 2
    and the message "FLAG: was SAVED, asked ASKED ... conflicts with the saved run", leaving the
    checkpoint at step 1."""
    out = tmp_path / "run"
    assert run_cli("--dataset", "emnist", "--data-dir", data_dir, "--out", out, "--max-steps", 1,
                   *saved_args, *tiny) == 0
    capsys.readouterr()
    rc = run_cli("--resume", out, "--max-steps", 2, *asked_args, "--quiet", "--data-dir", data_dir, "--no-download")
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{flag}: was {saved}, asked {asked}" in err and "conflicts with the saved run" in err
    assert final_state(out)["meta"]["step"] == 1


def assert_same_state(a, b):
    """Two loaded checkpoints hold the same training state: every array of G, its moving
    average, D and both optimisers, bit for bit, under the same keys."""
    import numpy as np
    for part in ("G", "G_ema", "D", "opt_g", "opt_d"):
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            np.testing.assert_array_equal(a[part][k], b[part][k], err_msg=f"{part}.{k}")
