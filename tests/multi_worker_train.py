"""One worker of a MultiWorkerMirroredStrategy run, or the single-process baseline.

    python tests/multi_worker_train.py OUT.npz LOG_DIR   (TF_CONFIG set: one worker
                                                         of the cluster; unset: one process)

Keras 3's `fit` does not run under MultiWorkerMirroredStrategy (upstream
keras-team/keras#20585), so this is the custom training loop TensorFlow's guide
describes: the model's losses include the OrthoRegularizer penalty, scaled once
per global step with `tf.nn.scale_regularization_loss`, and OrthoLogger's hooks
are called at each epoch end, with TensorBoard summaries to LOG_DIR (which only
the chief writes). Writes the final weights and the logger's record.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_ortho  # noqa: E402

GLOBAL_BATCH, EPOCHS = 16, 2


def main(out_path, log_dir):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    y = rng.normal(size=(64, 3)).astype("float32")

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((12,)),
                keras.layers.Dense(8, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1), name="hidden"),
                keras.layers.Dense(3, kernel_regularizer=keras_ortho.OrthoRegularizer(0.1), name="out"),
            ],
            name="model",
        )
        optimizer = keras.optimizers.SGD(0.05)
        optimizer.build(model.trainable_variables)

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    batches = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(xb, yb):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(replica_step, args=(xb, yb))

    logger = keras_ortho.OrthoLogger(log_dir=log_dir)
    logger.set_model(model)
    logger.on_train_begin()
    for epoch in range(EPOCHS):
        for xb, yb in batches:
            train_step(xb, yb)
        logs = {}
        logger.on_epoch_end(epoch, logs)
    logger.on_train_end()

    np.savez(
        out_path,
        replicas=strategy.num_replicas_in_sync,
        epochs=np.array(logger.epochs),
        **{f"weight_{v.path}": v.numpy() for v in model.weights},
        **{f"errors_{path}": errors for path, errors in logger.errors.items()},
        **{f"logs_{key}": value for key, value in logs.items()},
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
