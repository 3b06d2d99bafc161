import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    import tensorflow as tf

    # Two logical CPUs, so that MirroredStrategy tests have two replicas. This must
    # happen before TensorFlow initializes its devices, hence at conftest import.
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
    )
elif BACKEND == "jax":
    import jax

    # The float64 tests compare with the float64 reference at rtol 1e-12: JAX
    # keeps float64 only with x64 on (it would silently compute them in float32).
    jax.config.update("jax_enable_x64", True)


def pytest_report_header(config):
    return f"Keras backend: {BACKEND} (KERAS_BACKEND)"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    Two strategy instances in one process reuse collective instance keys and
    abort each other's all-reduces, so the tests share this one.
    """
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _restore_keras_globals():
    """Tests that change the dtype policy or floatx leave them as they were."""
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    yield
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
