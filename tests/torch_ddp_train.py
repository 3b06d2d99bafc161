"""One step of a Keras-on-PyTorch model in a custom loop under DistributedDataParallel.

Run as `python torch_ddp_train.py RANK WORLD_SIZE PORT OUT KIND` by
`tests/test_distribute.py` (each rank a process, gloo on CPU), or imported for
the one-process reference. Each rank takes its equal share of the batch; DDP
averages the gradients, so the step equals one process's on the whole batch.
`KIND` is "regularized" (an attention model under `regularize`, stepped by
PyTorch's SGD) or "lipschitz" (a CNN whose kernels carry
`LipschitzConstraint(0.5)`, stepped by Keras's SGD, which applies the
constraints after the update as `fit` does).
"""

import datetime
import faulthandler
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import keras_ortho  # noqa: E402

LR = 0.1
BATCH = 8


def model_and_data(kind="regularized"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 6))
    if kind == "regularized":
        x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(inputs, inputs)
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(3, name="head")(x)
        model = keras.Model(inputs, outputs)
        keras_ortho.regularize(model, keras_ortho.OrthoRegularizer(0.05))
    else:
        constraint = keras_ortho.LipschitzConstraint(0.5)
        x = keras.layers.Conv1D(5, 3, padding="same", activation="relu", kernel_constraint=constraint, name="conv")(
            inputs
        )
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(3, kernel_constraint=constraint, name="head")(x)
        model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = 3 * rng.normal(size=(BATCH, 4, 6)).astype("float32")
    y = rng.normal(size=(BATCH, 3)).astype("float32")
    return model, torch.from_numpy(x), torch.from_numpy(y)


def step(model, module, x, y):
    """One SGD step of `module` (the model, or DDP around it); what it measured, as JSON-ready lists."""
    variables = model.trainable_weights
    constrained = any(v.constraint is not None for v in variables)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    optimizer.zero_grad()
    penalty = sum(model.losses, torch.zeros(()))
    loss = torch.mean((module(x) - y) ** 2) + penalty
    loss.backward()
    kernels = {v.path: v for v in variables if v.regularizer is not None or v.constraint is not None}
    grads = {path: v.value.grad.detach().numpy().tolist() for path, v in kernels.items()}
    if constrained:  # Keras's optimizer: the update, then each variable's constraint
        keras.optimizers.SGD(LR).apply([v.value.grad for v in variables], variables)
    else:
        optimizer.step()
    weights = {path: keras.ops.convert_to_numpy(v).tolist() for path, v in kernels.items()}
    return {"penalty": float(penalty.detach()), "grads": grads, "weights": weights}


def main(rank, world_size, port, out, kind):
    # A rank that hangs anywhere prints every thread's stack and exits, so the test shows where.
    faulthandler.dump_traceback_later(90, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A rank that waits for a peer gives up after a minute.
    torch.distributed.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60)
    )
    model, x, y = model_and_data(kind)
    share = BATCH // world_size
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    result = step(model, ddp, x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share])
    with open(out, "w") as f:
        json.dump(result, f)
    # Leave at once, while DDP's reducer and gloo's process group are still alive: freeing them
    # (as this frame's locals go, or in destroy_process_group) sometimes waits forever on gloo's
    # threads once the peer has left. The result is written; nothing is left to clean up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
