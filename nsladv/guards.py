"""A guard against diverging training: a non-finite loss stops it with an error that says what to try."""

import math

import keras

from nsladv.errors import TrainingDivergedError

REMEDIES = (
    "a lower learning rate, a longer epsilon warm-up (epsilon_warmup_epochs), a smaller regularization "
    "multiplier, or float32 instead of mixed precision"
)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDivergedError` at the end of the first epoch whose loss is NaN or infinite.

    Keras' `TerminateOnNaN` stops quietly, and the NaN model goes on to be
    evaluated and exported. Put this callback before any that saves the
    epoch (e.g. `BackupAndRestore`), so a diverged epoch is never kept.

    Args:
        what: names the model in the message, e.g. "the hardened model".

    Example:

    ```python
    model.fit(train, epochs=10, callbacks=[nsladv.guards.StopOnNonFiniteLoss(), backup])
    ```
    """

    def __init__(self, what="the model"):
        super().__init__()
        self.what = what

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise self.error(
                f"Training {self.what} diverged: loss={float(loss)} at epoch {epoch + 1}"
                f"{'' if not self.params.get('epochs') else ' of ' + str(self.params['epochs'])}. Try {REMEDIES}."
            )

    def error(self, message):
        """The exception to raise (keras-tuner's failed-trial error in the tuner's subclass)."""
        return TrainingDivergedError(message)
