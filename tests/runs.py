"""Helpers for the tests that train through the trainer's command line in-process."""
from cganraw import checkpoint, train


def run_cli(*argv):
    """train.main on the arguments as strings; returns its exit code."""
    return train.main([str(a) for a in argv])


def final_state(run_dir):
    """The run's last checkpoint, loaded."""
    return checkpoint.load(run_dir / "checkpoints" / "last.npz")
