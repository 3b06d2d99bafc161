"""What `import keras_ortho` does differently when the process is the `keras-ortho` command."""

import contextlib
import os
import sys


def running_as_command():
    """True in `python -m keras_ortho ...` and the `keras-ortho` console script."""
    argv = getattr(sys, "orig_argv", [])
    # Interpreter options may come first (`python -X importtime -m keras_ortho`).
    module = argv[argv.index("-m") + 1 : argv.index("-m") + 2] if "-m" in argv else []
    return module == ["keras_ortho"] or os.path.basename(sys.argv[0]) == "keras-ortho"


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


def import_keras():
    """Imports Keras (which loads the backend KERAS_BACKEND names), quietly in the command.

    Raises:
        ImportError: when the backend cannot load, saying how to install or
            choose one; in the command, SystemExit with that message in one line.
    """
    try:
        with quiet_start_up():
            import keras  # noqa: F401
    except ModuleNotFoundError as error:
        message = (
            f"Keras could not load its backend ({error}). Set KERAS_BACKEND to the backend "
            "you installed (KERAS_BACKEND=jax or KERAS_BACKEND=torch), or install one: "
            "`pip install 'keras-ortho[tensorflow]'` (Keras's default backend), "
            "`'keras-ortho[jax]'` or `'keras-ortho[torch]'`."
        )
        if running_as_command():  # one line for the `keras-ortho` command, no traceback
            raise SystemExit(f"keras-ortho: error: {message}") from None
        raise ImportError(f"keras_ortho: {message}") from error
