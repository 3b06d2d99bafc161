"""`OrthoSchedule`: the strength of every OrthoRegularizer of a model, set per epoch."""

import numbers
from collections.abc import Callable, Mapping

from keras_ortho import _scale, _validation


class OrthoSchedule(_scale.ScaleCallback):
    """Scales every OrthoRegularizer of the model by `schedule(epoch)` during `fit`.

    While attached, each regularizer's loss is `factor * scale * sum_i |G_i|`,
    with the scale of the running epoch; it takes effect inside compiled
    training on every backend (graph, XLA, `jax.jit`, `torch.compile`,
    `steps_per_execution > 1`, MirroredStrategy). The regularizers' configs
    never change, and after `fit` they act with their own factor again. The
    scale of each epoch is written to `logs["ortho/scale"]` at its end, for
    History, CSVLogger and TensorBoard listed after this callback.

    Args:
        schedule: either `{epoch: scale}`, piecewise constant: epoch `e` (counted
            from 0, as `fit` counts) takes the value of the largest key `<= e`,
            and 1.0 before the first key; or a callable `epoch -> scale`.
            Scales are real numbers >= 0; 0 switches the penalty off. None
            (default): 1.0 throughout.
        every: lazy regularization, as StyleGAN2's lazy R1 (Karras et al.
            2020): the penalty is evaluated on one training step in `every`
            (the first of the fit and every `every`-th after it), with `every`
            times the scale, and not computed at all on the others. The
            expected gradient is the same; the penalty's cost per step is
            divided by `every`. Evaluation (`validation_data`) sees the plain
            scale. Defaults to 1 (every step).

    Raises:
        ValueError: for an argument out of its range or choices, naming it and the value received.
        TypeError: for an argument of the wrong type, likewise.

    Examples:

        >>> # The step decay of Bansal et al. 2018: times 1e-3 from epoch 20, ..., off from 120.
        >>> import keras_ortho
        >>> schedule = keras_ortho.OrthoSchedule({20: 1e-3, 50: 1e-4, 70: 1e-6, 120: 0.0})
        >>> [schedule.scale_at(epoch) for epoch in (0, 20, 60, 130)]
        [1.0, 0.001, 0.0001, 0.0]
        >>> # Lazy regularization: the penalty on one step in 16, with 16 times its weight.
        >>> lazy = keras_ortho.OrthoSchedule(every=16)  # model.fit(..., callbacks=[lazy])
    """

    def __init__(self, schedule: None | Mapping[int, float] | Callable[[int], float] = None, every: int = 1):
        self._schedule = _check_schedule({} if schedule is None else schedule)
        every = _validation.check_positive_int("every", every)
        super().__init__(initial=self.scale_at(0), every=every)

    def scale_at(self, epoch):
        """The scale of epoch `epoch` (0-based)."""
        if callable(self._schedule):
            value = self._schedule(epoch)
            return _validation.check_non_negative(f"schedule({epoch})", value)
        scale = 1.0
        for start, value in self._schedule:
            if start > epoch:
                break
            scale = value
        return scale

    def on_epoch_begin(self, epoch, logs=None):
        self._set_scale(self.scale_at(epoch))


def _check_schedule(schedule):
    """A callable as given, or a dict as `[(epoch, scale)]` sorted by epoch."""
    if callable(schedule):
        return schedule
    if not isinstance(schedule, dict):
        raise TypeError(
            "Argument `schedule` must be a dict {epoch: scale} or a callable "
            f"epoch -> scale. Received: schedule={schedule!r}"
        )
    steps = []
    for epoch, scale in schedule.items():
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"Argument `schedule`: each key is an epoch, an int >= 0. Received: schedule={schedule!r}")
        steps.append((int(epoch), _validation.check_non_negative(f"schedule[{epoch}]", scale)))
    return sorted(steps)
