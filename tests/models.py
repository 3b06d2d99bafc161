"""Small models used by several tests."""

import keras

from keras_ortho import OrthoRegularizer


def mixed_layers_model(seed=0):
    """Conv2D, EinsumDense, MultiHeadAttention and Dense, each regularized differently.

    Layers are named, so weight paths are the same in every process.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, kernel_regularizer=OrthoRegularizer(0.01), name="conv")(inputs)
    x = keras.layers.Reshape((6, 24))(x)
    x = keras.layers.EinsumDense(
        "abc,cde->abde",
        output_shape=(None, 3, 4),
        kernel_regularizer=OrthoRegularizer(0.02, mode="columns"),
        name="einsum",
    )(x)
    x = keras.layers.Reshape((6, 12))(x)
    x = keras.layers.MultiHeadAttention(
        num_heads=3, key_dim=4, kernel_regularizer=OrthoRegularizer(0.03), name="attention"
    )(x, x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(5, kernel_regularizer=OrthoRegularizer(0.04, slice_axis=0), name="dense")(x)
    return keras.Model(inputs, outputs)


def regularizer_configs(model):
    """`{variable path: regularizer config}` for every regularized weight."""
    return {v.path: v.regularizer.get_config() for v in model.trainable_weights if v.regularizer is not None}
