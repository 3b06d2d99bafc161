"""keras_ortho: exact orthogonality regularizers and constraints for Keras 3 (TensorFlow, JAX, PyTorch).

    L = factor * sum_i sum_jk |Phi_i^T Phi_i - I|_jk      (and four other norms)

The package, room by room. What users call:
    regularizer.py   OrthoRegularizer, the Keras adapter of the penalty
    constraint.py    OrthoConstraint, the Keras adapter of the projection
    ops.py           slice_errors, ortho_penalty, ortho_gradient (as keras.ops)
    models.py        regularize, constrain: keras_ortho on a model that exists
    logger.py        OrthoLogger;  schedule.py, target.py: OrthoSchedule, OrthoTarget
    plotting.py      plot_errors;  report.py, _command.py: the `keras-ortho` command
Beneath them:
    _math.py         the five norms, their gradients and the polar factor, in keras.ops
    _backend/        per backend: Gram, custom gradient, compiled measuring
    _slicing.py      how a weight becomes a stack of matrices (a plan)
    _rules.py        which matrices each Keras layer's weights hold
    _binding.py      each weight's rule recorded, its regularizer bound
    _watch.py        which weights to measure, and one compiled probe
    _records.py, _tensorboard.py   what the logger keeps and writes
    _scale.py        the scale the schedule callbacks put on a model during fit
    _validation.py   argument checks and their error messages
    _keras_compat.py every reliance on Keras beyond its public API
"""

from keras_ortho._command import quiet_start_up, running_as_command

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

from keras_ortho.constraint import OrthoConstraint
from keras_ortho.logger import OrthoLogger
from keras_ortho.models import constrain, regularize
from keras_ortho.ops import ortho_gradient, ortho_penalty, slice_errors
from keras_ortho.plotting import plot_errors
from keras_ortho.regularizer import OrthoRegularizer
from keras_ortho.schedule import OrthoSchedule
from keras_ortho.target import OrthoTarget

__version__ = "0.2.0"

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
