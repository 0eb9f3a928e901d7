"""Guards on adversarial training: a diverging loss, and robustness that collapses (catastrophic overfitting).

`StopOnNonFiniteLoss` stops a training whose loss is NaN or infinite with an
error that says what to try. `RobustnessMonitor` attacks a fixed batch of
held-out examples with PGD after every epoch, keeps the weights of the epoch
with the best robust accuracy (never chosen by clean accuracy alone), and
stops training when robust accuracy collapses while the model still looks
fine on clean data, the signature of catastrophic overfitting in single-step
(FGSM) adversarial training. `averaged_weights` lends the model an optimizer's
moving average of its weights (Keras' `use_ema=True`) for a measurement.
"""

import contextlib
import json
import math
import pathlib
import shutil

import keras
import numpy as np
import tensorflow as tf

from nsladv import _keras
from nsladv._files import replace_file
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


@contextlib.contextmanager
def averaged_weights(optimizer):
    """Within the block, the variables `optimizer` trains hold its moving average of them; the raw values come back.

    The average is Keras' (an optimizer built with `use_ema=True`, updated
    after every step: Polyak averaging). Unlike
    `keras.callbacks.SwapEMAWeights(swap_on_epoch=True)`, nothing stays swapped
    after the block: the callbacks after it (a backup) and the next epoch see
    the raw weights; `fit` ends with the average (`finalize_variable_values`).

    Example:

    ```python
    model.compile(optimizer=keras.optimizers.Adam(use_ema=True, ema_momentum=0.99), loss=...)
    model.fit(...)  # ends with the averaged weights
    with nsladv.guards.averaged_weights(model.optimizer):
        ...  # measure the average in the middle of training
    ```
    """
    optimizer = _averaging(optimizer, "Averaged weights need")
    variables, averages = _keras.averaged_variables(optimizer)
    if not averages:
        raise ValueError(
            "The optimizer has no moving average yet: it is built by the first training step. "
            f"Received: {type(optimizer).__name__} after {int(optimizer.iterations)} steps"
        )
    raw = [variable.numpy() for variable in variables]
    try:
        for variable, average in zip(variables, averages):
            if average is not None:
                variable.assign(average)
        yield
    finally:
        for variable, value in zip(variables, raw):
            variable.assign(value)


def keeps_weight_average(optimizer):
    """Whether `optimizer` (a LossScaleOptimizer's inner one) keeps a moving average of the weights (`use_ema`)."""
    return bool(getattr(getattr(optimizer, "inner_optimizer", optimizer), "use_ema", False))


def _averaging(optimizer, who):
    """The optimizer (a LossScaleOptimizer's inner one) if it keeps a moving average of the weights; else an error."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    if not keeps_weight_average(optimizer):
        raise ValueError(
            f"{who} an optimizer built with `use_ema=True`. "
            f"Received: {type(optimizer).__name__} with use_ema={getattr(optimizer, 'use_ema', None)!r}"
        )
    return optimizer


class RobustnessMonitor(keras.callbacks.Callback):
    """PGD on a fixed held-out batch after every epoch; keeps the most robust epoch; stops on a collapse.

    After each epoch it logs `robust_accuracy` (correct clean and under the
    attack at `epsilon`) and `monitor_clean_accuracy` on `x, y`. The best
    epoch is the one with the highest robust accuracy (clean accuracy never
    decides; ties go to the later, longer-trained epoch). A *collapse* is an
    epoch whose robust accuracy is more than `collapse_drop` below the best
    so far: training stops there, as robustness rarely comes back after
    catastrophic overfitting. When training ends with `restore_best`, the
    last epoch's weights stay if its robust accuracy is within `tolerance` of
    the best's (a difference the monitor's few examples cannot tell apart),
    and the best epoch's weights come back otherwise; `kept_epoch` says which.

    Args:
        model: the base model to attack (for `nsladv.AdversarialModel`, its
            `base`), whose weights are kept and restored.
        x, y: the held-out examples (a batch or two: the attack runs on all).
        attack: an `nsladv.Attack` (default PGD-10, one random start).
        epsilon: the radius (default: the model's training epsilon is not
            known here, so it is required).
        from_logits: whether the model outputs logits.
        collapse_drop: the fall in robust accuracy, from the best so far, that
            counts as a collapse (0.3: thirty points).
        restore_best: restore the best epoch's weights when training ends
            (see `tolerance`).
        tolerance: how far below the best the last epoch's robust accuracy
            may be and still be kept (0.01: one point).
        seed: the attack's seed (the same random starts every epoch).
        log: where the collapse message goes.
        backup_dir: a folder where the monitor keeps its readings and the
            best epoch's weights after every epoch, so that a fit resumed by
            `keras.callbacks.BackupAndRestore` compares its epochs with those
            before the interruption (and can bring back an earlier best).
            An epoch that runs again replaces its reading. As Keras' backup,
            the folder is removed when training ends, and a fit that finds one
            continues from it: give each training a folder of its own. None
            (the default): a resumed fit starts the readings afresh.
        writer: whether this process writes and removes `backup_dir` (in a
            multi-worker cluster only the chief does; every worker reads it,
            so that all take the same decisions).
        averaged_weights: measure (and keep, for the best epoch) the fitted
            model's optimizer's moving average of the weights rather than the
            raw weights: for an optimizer with `use_ema=True`, whose average
            `fit` ends with (see `averaged_weights`). Training continues from
            the raw weights.
        measured_model: the model the attack measures, given the fitted
            model's weights before each reading: e.g. a float32 copy
            (`nsladv.precision.float32_copy`) of a model trained in mixed
            precision, so that every epoch is measured as the model will be
            evaluated. Default: the fitted model itself.

    After training, `history` holds one dict per epoch, `best_epoch` the best
    (0-based), `kept_epoch` the one whose weights the model ends with and
    `collapsed_at` the epoch of a collapse (or None).
    """

    def __init__(
        self,
        model,
        x,
        y,
        *,
        epsilon,
        attack=None,
        from_logits=True,
        collapse_drop=0.3,
        restore_best=True,
        tolerance=0.01,
        seed=0,
        log=print,
        backup_dir=None,
        writer=True,
        averaged_weights=False,
        measured_model=None,
    ):
        super().__init__()
        from nsladv.robustness.attacks import pgd

        if not 0 < collapse_drop <= 1:
            raise ValueError(f"`collapse_drop` must be in (0, 1]. Received: collapse_drop={collapse_drop!r}")
        self.base = model
        self.measured = model if measured_model is None else measured_model
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y).reshape(-1).astype(np.int64)
        self.epsilon = float(epsilon)
        self.attack = attack or pgd(10, 1)
        self.from_logits = from_logits
        self.collapse_drop = collapse_drop
        self.restore_best = restore_best
        if not 0 <= tolerance < 1:
            raise ValueError(f"`tolerance` must be in [0, 1). Received: tolerance={tolerance!r}")
        self.tolerance = tolerance
        self.kept_epoch = None
        self.seed = seed
        self.log = log
        self.backup_dir = None if backup_dir is None else pathlib.Path(backup_dir)
        self.writer = writer
        self.averaged_weights = bool(averaged_weights)
        self.history, self.best_epoch, self.collapsed_at = [], None, None
        self._best, self._best_weights, self._attacker = None, None, None

    def measure(self):
        """(clean accuracy, robust accuracy) of the model now, on the monitor's examples."""
        if self.measured is not self.base:
            self.measured.set_weights(self.base.get_weights())
        if self._attacker is None:
            self._attacker = self.attack.batch_attacker(self.measured, from_logits=self.from_logits, seed=self.seed)
        attacker = self._attacker
        attacker.reseed(self.seed)  # The same random starts every epoch.
        batch = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(_MONITOR_BATCH)
        clean, robust, _ = attacker.accuracy(batch, self.epsilon)
        return clean, robust

    @property
    def best(self):
        """The best epoch's reading (a dict like those of `history`), or None."""
        return self._best

    def on_train_begin(self, logs=None):
        if self.averaged_weights:
            _averaging(
                self.model.optimizer,
                "RobustnessMonitor(averaged_weights=True) measures the moving average of the weights: compile with",
            )
        self.history, self.best_epoch, self.collapsed_at = [], None, None
        self._best = self._best_weights = self.kept_epoch = None
        if self.backup_dir is not None and (self.backup_dir / _MONITOR_STATE).is_file():
            self._restore_state()

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed fit may run an epoch again (killed after this monitor saved its reading, before the backup).
        # The best's reading stays: it describes the weights kept with it.
        self.history = [h for h in self.history if h["epoch"] < epoch]

    def on_epoch_end(self, epoch, logs=None):
        best = self.best
        with averaged_weights(self.model.optimizer) if self.averaged_weights else contextlib.nullcontext():
            clean, robust = self.measure()
            improved = best is None or robust >= best["robust_accuracy"]
            weights = self.base.get_weights() if improved else None
        reading = {"epoch": epoch, "clean_accuracy": clean, "robust_accuracy": robust}
        self.history.append(reading)
        if logs is not None:
            logs["robust_accuracy"], logs["monitor_clean_accuracy"] = robust, clean
        if improved:
            self.best_epoch, self._best, self._best_weights = epoch, reading, weights
            self._save_state(weights=True)
            return
        self._save_state(weights=False)
        if robust < best["robust_accuracy"] - self.collapse_drop:
            self.collapsed_at = epoch
            self.model.stop_training = True
            self.log(
                f"robust accuracy collapsed at epoch {epoch + 1}: {100 * robust:.1f}% under "
                f"{self.attack.name} at epsilon {self.epsilon:g}, from {100 * best['robust_accuracy']:.1f}% at "
                f"epoch {best['epoch'] + 1} (clean {100 * clean:.1f}%): catastrophic overfitting; training stops"
                + (" and the best epoch's weights come back" if self.restore_best else "")
            )

    def on_train_end(self, logs=None):
        if not self.history:
            return
        last, best = self.history[-1], self.best
        self.kept_epoch = last["epoch"]
        if self.restore_best and last["robust_accuracy"] < best["robust_accuracy"] - self.tolerance:
            self.base.set_weights(self._best_weights)
            self.kept_epoch = best["epoch"]
        if self.backup_dir is not None and self.writer:
            shutil.rmtree(self.backup_dir, ignore_errors=True)

    def _save_state(self, *, weights):
        """Writes the readings (and the best weights) to `backup_dir`, each file whole or not at all."""
        if self.backup_dir is None or not self.writer:
            return
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        if weights:
            replace_file(self.backup_dir / _MONITOR_WEIGHTS, lambda f: np.savez(f, *self._best_weights))
        state = {"history": self.history, "best": self._best}
        replace_file(self.backup_dir / _MONITOR_STATE, json.dumps(state))

    def _restore_state(self):
        state = json.loads((self.backup_dir / _MONITOR_STATE).read_text())
        with np.load(self.backup_dir / _MONITOR_WEIGHTS) as saved:
            self._best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        self.history, self._best = state["history"], state["best"]
        self.best_epoch = self._best["epoch"]


_MONITOR_STATE = "monitor.json"
_MONITOR_BATCH = 500  # attacked at once: a harden job's monitor reads 500; larger sets come in batches
_MONITOR_WEIGHTS = "best_weights.npz"
