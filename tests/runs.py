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
