"""keras_ortho: exact orthogonality regularizers and constraints for Keras 3 (TensorFlow, JAX, PyTorch).

    L = factor * sum_i sum_jk |Phi_i^T Phi_i - I|_jk      (and four other norms)

The package, room by room. What users call:
    regularizer.py   OrthoRegularizer, the Keras adapter of the penalty
    constraint.py    OrthoConstraint, the Keras adapter of the projection
    ops.py           slice_errors, ortho_penalty, ortho_gradient (as keras.ops)
    conv.py          conv_singular_values: each convolution's operator, by its singular values
    lipschitz.py     lipschitz_bound, lipschitz_factors, certified_radius, LipschitzConstraint
    models.py        regularize, constrain, starting_factor: keras_ortho on a model that exists
    logger.py        OrthoLogger;  schedule.py, target.py: OrthoSchedule, OrthoTarget
    plotting.py      plot_errors;  report.py, _command.py: the `keras-ortho` command
Beneath them:
    _math.py         the five norms, their gradients and the polar factor, in keras.ops
    _backend/        per backend: Gram, custom gradient, compiled measuring
    _slicing.py      how a weight becomes a stack of matrices (a plan)
    _conv.py         a convolution kernel as its operator: polyphase plan, offsets, singular values
    _lipschitz.py    bounds on operator norms (zero padding, Gram iteration) and activations' constants
    _rules.py        which matrices each Keras layer's weights hold
    _binding.py      each weight's rule recorded, its regularizer bound
    _watch.py        which weights to measure, and one compiled probe
    _records.py, _tensorboard.py   what the logger keeps and writes
    _scale.py        the scale the schedule callbacks put on a model during fit
    _validation.py   argument checks and their error messages
    _keras_compat.py every reliance on Keras beyond its public API
"""

from keras_ortho._command import import_keras, running_as_command

__version__ = "0.2.0"

__all__ = [
    "LipschitzConstraint",
    "OrthoConstraint",
    "OrthoLogger",
    "OrthoRegularizer",
    "OrthoSchedule",
    "OrthoTarget",
    "certified_accuracy",
    "certified_radius",
    "constrain",
    "conv_singular_values",
    "lipschitz_bound",
    "lipschitz_factors",
    "ortho_gradient",
    "ortho_penalty",
    "plot_errors",
    "regularize",
    "slice_errors",
    "starting_factor",
]


if not running_as_command():
    import_keras()
    from keras_ortho.constraint import OrthoConstraint
    from keras_ortho.conv import conv_singular_values
    from keras_ortho.lipschitz import (
        LipschitzConstraint,
        certified_accuracy,
        certified_radius,
        lipschitz_bound,
        lipschitz_factors,
    )
    from keras_ortho.logger import OrthoLogger
    from keras_ortho.models import constrain, regularize, starting_factor
    from keras_ortho.ops import ortho_gradient, ortho_penalty, slice_errors
    from keras_ortho.plotting import plot_errors
    from keras_ortho.regularizer import OrthoRegularizer
    from keras_ortho.schedule import OrthoSchedule
    from keras_ortho.target import OrthoTarget
else:
    # The `keras-ortho` command parses its arguments and checks its file
    # before Keras loads (seconds, with TensorFlow): the names load on first use.
    _PUBLIC_MODULES = (
        "constraint",
        "conv",
        "lipschitz",
        "logger",
        "models",
        "ops",
        "plotting",
        "regularizer",
        "schedule",
        "target",
    )

    def __getattr__(name):
        if name not in __all__:
            raise AttributeError(f"module 'keras_ortho' has no attribute {name!r}")
        import_keras()
        import importlib

        for module in _PUBLIC_MODULES:
            value = getattr(importlib.import_module(f"keras_ortho.{module}"), name, None)
            if value is not None:
                globals()[name] = value
                return value
        raise AttributeError(f"module 'keras_ortho' has no attribute {name!r}")
