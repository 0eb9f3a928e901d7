"""The robustness monitor: best epoch by robust accuracy, and a staged catastrophic-overfitting collapse."""

import keras
import numpy as np
import pytest

from nsladv import precision
from nsladv.guards import RobustnessMonitor
from nsladv.guards import averaged_weights

# The label is x0 > 0.5; features 1 and 2 are equal in the data, so weight on
# x1 - x2 changes nothing clean but lets an attacker push the logits freely.
N = 200
RNG = np.random.default_rng(0)
X0 = (np.arange(N) + 0.5) / N
TWIN = RNG.random(N)
X = np.stack([X0, TWIN, TWIN], axis=1).astype("float32")
Y = (X0 > 0.5).astype("int64")
EPSILON = 0.1


def weights(threshold, twin):
    """logit1 - logit0 = 10 (x0 - threshold) + twin (x1 - x2)."""
    kernel = np.zeros((3, 2), "float32")
    kernel[:, 1] = [10.0, twin, -twin]
    return [kernel, np.array([0.0, -10.0 * threshold], "float32")]


# At epsilon 0.1 (robust: correct and |margin| > 0.1 * (10 + 2 * twin)):
ROBUST = weights(0.55, 0.0)  # clean 95%, robust 80%: the best epoch
CLEANER = weights(0.5, 4.0)  # clean 100%, robust 64%
COLLAPSED = weights(0.5, 100.0)  # clean 100%, robust 0%: catastrophic overfitting


class Stage(keras.callbacks.Callback):
    """Sets the weights each epoch starts from (the learning rate is 0, so training keeps them)."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.model.set_weights(self.schedule[epoch])


class Interrupt(keras.callbacks.Callback):
    """Kills the fit at the end of one epoch, after the callbacks before it (the backup) saved it."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"interrupted after epoch {epoch + 1}")


def staged_fit(schedule, *, optimizer=None, extra_callbacks=(), trained_in="float32", **monitor_args):
    with precision.policy_scope(trained_in):
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = optimizer or keras.optimizers.SGD(0.0)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if trained_in != "float32":  # As the harden job measures a mixed-precision model: a float32 copy.
        monitor_args["measured_model"] = precision.float32_copy(model)
    monitor = RobustnessMonitor(model, X, Y, epsilon=EPSILON, **monitor_args)
    history = model.fit(
        X,
        Y,
        batch_size=50,
        epochs=len(schedule),
        verbose=0,
        callbacks=[Stage(schedule), monitor, *extra_callbacks],
    )
    return model, monitor, history


def test_the_best_epoch_is_the_most_robust_not_the_cleanest():
    model, monitor, history = staged_fit([CLEANER, ROBUST, CLEANER])
    clean = [h["clean_accuracy"] for h in monitor.history]
    robust = [h["robust_accuracy"] for h in monitor.history]
    assert clean == pytest.approx([1.0, 0.95, 1.0])
    assert robust == pytest.approx([0.64, 0.80, 0.64])
    assert monitor.best_epoch == monitor.kept_epoch == 1 and monitor.collapsed_at is None
    for got, want in zip(model.get_weights(), ROBUST):
        np.testing.assert_array_equal(got, want)  # restored: the cleaner last epoch is not kept
    assert history.history["robust_accuracy"] == pytest.approx(robust)


@pytest.mark.parametrize("trained_in", ["float32", "bfloat16"])
def test_a_collapse_stops_training_and_brings_back_the_best_epoch(trained_in):
    """Under bfloat16 too: the monitor reads a float32 copy, so its readings are the float32 ones."""
    messages = []
    schedule = [CLEANER, ROBUST, CLEANER, COLLAPSED, CLEANER, ROBUST]
    model, monitor, history = staged_fit(schedule, log=messages.append, trained_in=trained_in)
    assert precision.of_model(model) == trained_in
    robust = [h["robust_accuracy"] for h in monitor.history]
    assert robust[:3] == pytest.approx([0.64, 0.80, 0.64]) and robust[3] < 0.05
    assert monitor.collapsed_at == 3 and len(history.history["loss"]) == 4  # stopped at the collapse
    assert "collapsed at epoch 4: " in messages[0] and "from 80.0% at epoch 2" in messages[0]
    for got, want in zip(model.get_weights(), ROBUST):
        np.testing.assert_array_equal(got, want)


def test_the_last_epoch_stays_when_it_is_within_the_tolerance_of_the_best():
    # The same robust accuracy at the end: ties go to the later epoch, whatever the clean accuracy says.
    model, monitor, _ = staged_fit([ROBUST, CLEANER, ROBUST])
    assert monitor.best_epoch == monitor.kept_epoch == 2
    # A last epoch 16 points below the best is restored away at tolerance 0.2 only when it exceeds it.
    _, lenient, _ = staged_fit([ROBUST, CLEANER], tolerance=0.2)
    assert lenient.best_epoch == 0 and lenient.kept_epoch == 1


def test_a_fall_smaller_than_the_threshold_is_no_collapse():
    _, monitor, history = staged_fit([ROBUST, CLEANER, ROBUST], collapse_drop=0.2)
    assert monitor.collapsed_at is None and len(history.history["loss"]) == 3


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"`collapse_drop` must be in \(0, 1\]. Received: collapse_drop=0"):
        RobustnessMonitor(
            keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), X, Y, epsilon=0.1, collapse_drop=0
        )


def test_a_resumed_fit_compares_with_the_epochs_before_the_interruption(tmp_path):
    """A collapse right after a resume is still a collapse: the monitor's best epoch survives the interruption.

    Without its state, the resumed monitor would see only the collapsed epoch, call it the best, and keep it.
    """
    schedule = [CLEANER, ROBUST, CLEANER, COLLAPSED, ROBUST]
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):
        staged_fit(schedule, backup_dir=tmp_path / "monitor", extra_callbacks=[backup, Interrupt(2)])
    messages = []
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    model, monitor, history = staged_fit(
        schedule, backup_dir=tmp_path / "monitor", extra_callbacks=[backup], log=messages.append
    )
    assert len(history.history["loss"]) == 1  # resumed at epoch 4, stopped there
    assert [h["epoch"] for h in monitor.history] == [0, 1, 2, 3]
    assert monitor.collapsed_at == 3 and monitor.best_epoch == monitor.kept_epoch == 1
    assert "from 80.0% at epoch 2" in messages[0]
    for got, want in zip(model.get_weights(), ROBUST):
        np.testing.assert_array_equal(got, want)
    assert not (tmp_path / "monitor").exists()  # a finished fit leaves nothing to resume, like the backup


def test_an_epoch_run_again_after_a_resume_replaces_its_first_reading(tmp_path):
    """Killed after the monitor read epoch 3 but before the backup saved it: epoch 3 runs again, read once."""
    schedule = [CLEANER, ROBUST, CLEANER, ROBUST]
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(KeyboardInterrupt):  # the interruption comes before the backup in the callbacks
        staged_fit(schedule, backup_dir=tmp_path / "monitor", extra_callbacks=[Interrupt(2), backup])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    _, monitor, history = staged_fit(schedule, backup_dir=tmp_path / "monitor", extra_callbacks=[backup])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4
    assert [h["epoch"] for h in monitor.history] == [0, 1, 2, 3]
    assert monitor.best_epoch == monitor.kept_epoch == 3


# With this momentum the average barely leaves the first step's weights (Keras copies them at step 0).
STILL = 0.999999


def averaged_fit(schedule, **kwargs):
    """`staged_fit` with a weight-averaging optimizer and a monitor that reads the average."""
    optimizer = keras.optimizers.SGD(0.0, use_ema=True, ema_momentum=STILL)
    return staged_fit(schedule, optimizer=optimizer, averaged_weights=True, **kwargs)


class Probe(keras.callbacks.Callback):
    """The weights each epoch ends with, as the callbacks after the monitor (a backup) see them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(self.model.get_weights())


def test_the_monitor_reads_and_keeps_the_averaged_weights_and_training_goes_on_from_the_raw_ones():
    """The raw weights collapse from epoch 2; their average stays at the first epoch's: no collapse is read."""
    probe = Probe()
    model, monitor, history = averaged_fit([ROBUST, COLLAPSED, COLLAPSED], extra_callbacks=[probe])
    assert [h["robust_accuracy"] for h in monitor.history] == pytest.approx([0.80, 0.80, 0.80])
    assert monitor.collapsed_at is None and len(history.history["loss"]) == 3
    for seen, raw in zip(probe.seen, [ROBUST, COLLAPSED, COLLAPSED]):  # the raw weights, back after each reading
        for got, want in zip(seen, raw):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(model.get_weights(), ROBUST):  # fit ends with the average
        np.testing.assert_allclose(got, want, atol=1e-3)
    # The same raw weights read as they are: a collapse at epoch 2.
    _, raw_monitor, _ = staged_fit([ROBUST, COLLAPSED, COLLAPSED])
    assert raw_monitor.collapsed_at == 1


class StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


def test_a_fit_stopped_early_ends_with_the_average_not_the_raw_weights():
    """Stopped after epoch 2 of 3 (as a collapse stops it), the model holds the average (the robust weights),
    not the raw (cleaner) ones its last epoch trained."""
    model, monitor, history = averaged_fit([ROBUST, CLEANER, CLEANER], extra_callbacks=[StopAt(1)])
    assert len(history.history["loss"]) == 2 and monitor.kept_epoch == 1
    for got, want in zip(model.get_weights(), ROBUST):
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_averaged_weights_need_an_averaging_optimizer_that_has_trained():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    with (
        pytest.raises(ValueError, match=r"`use_ema=True`. Received: SGD with use_ema=False"),
        averaged_weights(model.optimizer),
    ):
        pass
    monitor = RobustnessMonitor(model, X, Y, epsilon=EPSILON, averaged_weights=True)
    with pytest.raises(ValueError, match=r"RobustnessMonitor\(averaged_weights=True\).*Received: SGD with use_ema="):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[monitor])
    fresh = keras.optimizers.SGD(0.1, use_ema=True)
    with (
        pytest.raises(ValueError, match=r"no moving average yet.*Received: SGD after 0 steps"),
        averaged_weights(fresh),
    ):
        pass


def test_averaged_weights_put_the_raw_weights_back_even_after_an_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.0, use_ema=True, ema_momentum=STILL), "sparse_categorical_crossentropy")
    model.set_weights(ROBUST)
    model.fit(X, Y, batch_size=200, epochs=1, verbose=0)  # the average: ROBUST
    model.set_weights(CLEANER)
    with pytest.raises(RuntimeError, match="inside"), averaged_weights(model.optimizer):
        for got, want in zip(model.get_weights(), ROBUST):
            np.testing.assert_allclose(got, want, atol=1e-6)
        raise RuntimeError("inside")
    for got, want in zip(model.get_weights(), CLEANER):
        np.testing.assert_array_equal(got, want)
