"""Warm-up schedules for epsilon and the multiplier, as Keras callbacks.

Adversarial training at a large epsilon from scratch can collapse to chance
accuracy; ramping epsilon up over the first epochs avoids it. The callbacks
set the wrapper's `epsilon_scale` / `multiplier_scale` (read inside the
compiled train step, so nothing is retraced) before every batch, from the
epoch and batch numbers alone: a run resumed by `BackupAndRestore` continues
the ramp where it was.
"""

import keras

from nsladv.settings_checks import number


class _LinearWarmup(keras.callbacks.Callback):
    attribute = None

    def __init__(self, epochs, *, start=0.0):
        super().__init__()
        number("epochs", epochs, finite=False)
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"`start` must be in [0, 1]. Received: start={start!r}")
        self.epochs = epochs
        self.start = start
        self._epoch = 0

    def scale_at(self, epoch, fraction=0.0):
        """The scale at `epoch` plus `fraction` of the next epoch."""
        if self.epochs == 0:
            return 1.0
        progress = min(1.0, (epoch + fraction) / self.epochs)
        return self.start + (1.0 - self.start) * progress

    def on_train_begin(self, logs=None):
        if not hasattr(self.model, self.attribute):
            raise TypeError(
                f"{type(self).__name__} drives an nsladv AdversarialModel's `{self.attribute}`. "
                f"Received: a model of type {type(self.model).__name__}"
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        setattr(self.model, self.attribute, self.scale_at(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        steps = self.params.get("steps") if self.params else None
        if steps and self._epoch < self.epochs:
            setattr(self.model, self.attribute, self.scale_at(self._epoch, batch / steps))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.attribute] = getattr(self.model, self.attribute)


class EpsilonWarmup(_LinearWarmup):
    """Ramps epsilon linearly from `start * epsilon` to epsilon over `epochs` epochs.

    Example:

    ```python
    hardened.fit(train, epochs=20, callbacks=[nsladv.EpsilonWarmup(5)])
    ```
    """

    attribute = "epsilon_scale"


class MultiplierWarmup(_LinearWarmup):
    """Ramps the regularization multiplier linearly over `epochs` epochs."""

    attribute = "multiplier_scale"
