"""Used by subprocess tests: record each epoch a harden run starts, die with SIGKILL at a chosen point."""

import os
import signal

import keras

from nsladv import AdversarialModel


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class EpochRecorder(keras.callbacks.Callback):
    """Logs every epoch a model starts to `log_path`; kills the process after `kill_after_epoch`.

    `only` limits both to the hardened models ("adversarial") or the baseline ("plain").
    """

    def __init__(self, log_path, kill_after_epoch=-1, only=None):
        super().__init__()
        self.log = open(log_path, "a")  # noqa: SIM115 - open for the life of the process
        self.kill_after_epoch = kill_after_epoch
        self.only = only

    def _mine(self):
        if self.only is None:
            return True
        return isinstance(self.model, AdversarialModel) == (self.only == "adversarial")

    def on_epoch_begin(self, epoch, logs=None):
        if self._mine():
            self.log.write(f"{epoch}\n")
            self.log.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self._mine() and epoch == self.kill_after_epoch:
            die()
