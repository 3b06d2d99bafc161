"""What `import keras_ortho` does differently when the process is the `keras-ortho` command."""

import contextlib
import os
import sys


def running_as_command():
    """True in `python -m keras_ortho ...` and the `keras-ortho` console script."""
    return getattr(sys, "orig_argv", [])[1:3] == ["-m", "keras_ortho"] or (
        os.path.basename(sys.argv[0]) == "keras-ortho"
    )


@contextlib.contextmanager
def quiet_start_up():
    """Keeps TensorFlow's start-up lines out of the command's output.

    TensorFlow writes them from C++ to file descriptor 2 while it is imported,
    before any log level applies (`TF_CPP_MIN_LOG_LEVEL` does not reach them),
    so the descriptor points at /dev/null for that long. Python errors raised
    meanwhile still propagate and are printed after it is restored. Anywhere
    but in the command, nothing changes.
    """
    if not running_as_command():
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
