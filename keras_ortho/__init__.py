"""keras_ortho: exact orthogonality regularizers and constraints for Keras 3 (TensorFlow, JAX, PyTorch).

    L = factor * sum_i sum_jk |Phi_i^T Phi_i - I|_jk      (and four other norms)
"""

from keras_ortho._command import running_as_command, quiet_start_up

try:
    with quiet_start_up():
        import keras  # noqa: F401  (loads the backend KERAS_BACKEND names)
except ModuleNotFoundError as error:
    _message = (
        f"Keras could not load its backend ({error}). Set KERAS_BACKEND to the backend "
        "you installed (KERAS_BACKEND=jax or KERAS_BACKEND=torch), or install one: "
        "`pip install 'keras-ortho[tensorflow]'` (Keras's default backend), "
        "`'keras-ortho[jax]'` or `'keras-ortho[torch]'`."
    )
    if running_as_command():  # one line for the `keras-ortho` command, no traceback
        raise SystemExit(f"keras-ortho: error: {_message}") from None
    raise ImportError(f"keras_ortho: {_message}") from error

from keras_ortho.ops import ortho_gradient, ortho_penalty, slice_errors
from keras_ortho.models import constrain, regularize
from keras_ortho.constraint import OrthoConstraint
from keras_ortho.logger import OrthoLogger
from keras_ortho.plotting import plot_errors
from keras_ortho.regularizer import OrthoRegularizer
from keras_ortho.schedule import OrthoSchedule
from keras_ortho.target import OrthoTarget

__version__ = "0.1.0"

__all__ = [
    "OrthoConstraint",
    "OrthoLogger",
    "OrthoRegularizer",
    "OrthoSchedule",
    "OrthoTarget",
    "constrain",
    "ortho_gradient",
    "ortho_penalty",
    "plot_errors",
    "regularize",
    "slice_errors",
]
