"""TensorBoard summaries of the monitor, written with `tf.summary` on every backend.

As Keras's own TensorBoard callback, this needs TensorFlow and the tensorboard
package installed, whatever the Keras backend, and only the chief process of a
multi-process run writes.
"""

import importlib.util
import os

from keras_ortho import _backend


def check_packages(log_dir):
    """Raises ImportError, naming what to install, unless TensorFlow and tensorboard are there."""
    for package, install in (("tensorflow", "tensorflow"), ("tensorboard", "'keras-ortho[tensorboard]'")):
        if importlib.util.find_spec(package) is None:
            raise ImportError(
                f"OrthoLogger(log_dir={log_dir!r}) writes TensorBoard summaries with tf.summary "
                f"and needs the {package} package, on every Keras backend (as Keras's TensorBoard "
                f"callback does): `pip install {install}`."
            )


def writer_for(log_dir, model):
    """A `SummaryWriter` for `log_dir/ortho`, or None in a process that is not the chief."""
    return SummaryWriter(log_dir) if _backend.current().is_chief(model) else None


class SummaryWriter:
    """A `tf.summary` file writer for the run `log_dir/ortho`."""

    def __init__(self, log_dir):
        import tensorflow as tf

        self._tf = tf
        run_dir = os.path.join(log_dir, "ortho")
        try:
            os.makedirs(run_dir, exist_ok=True)
            if not os.access(run_dir, os.W_OK):
                raise PermissionError(f"no write permission on {run_dir}")
            self._writer = tf.summary.create_file_writer(run_dir)
        except (OSError, tf.errors.OpError) as error:
            raise ValueError(f"OrthoLogger cannot write TensorBoard logs to log_dir={log_dir!r}: {error}") from error

    def write(self, step, scalars, histograms=None):
        """Writes scalars (and histograms) at `step`; flushes with histograms, at epoch ends."""
        tf = self._tf
        with self._writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)
            for tag, values in (histograms or {}).items():
                tf.summary.histogram(tag, values)
        if histograms:
            self._writer.flush()

    def close(self):
        self._writer.flush()
        self._writer.close()
