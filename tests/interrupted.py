"""The resume tests' protocol, run inside their fresh processes: train, crash, resume from the backup."""

import keras


class FailAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def uninterrupted_and_resumed(train, save, directory, crash_epoch):
    """Saves `train([])` as "uninterrupted", then a run that crashes at the start of
    `crash_epoch` under BackupAndRestore and its resumption as "resumed".

    `train(callbacks, seed=0)` builds a model (and its own callbacks), fits it and
    returns what `save(name, *returned)` writes.
    """
    save("uninterrupted", *train([]))
    backup = f"{directory}/backup"
    try:
        train([keras.callbacks.BackupAndRestore(backup), FailAtEpoch(crash_epoch)])
        raise AssertionError("the crash did not happen")
    except RuntimeError as error:
        assert "simulated crash" in str(error)
    # As after a restart: a new model, with other initial values, and new callbacks.
    save("resumed", *train([keras.callbacks.BackupAndRestore(backup)], seed=99))
