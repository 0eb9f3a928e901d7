"""`nsladv.tuning`: keras-tuner searches against a robust objective: real trials, resume, divergence, warm-ups."""

import json
import pathlib
import signal
import subprocess
import sys
import textwrap

import keras
import keras_tuner
import numpy as np
import pytest
import tensorflow as tf

from nsladv import FGSM
from nsladv import datasets as data
from nsladv import tuning
from nsladv.errors import SettingsError

HERE = pathlib.Path(__file__).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(data_dir):
    splits = data.load(data_dir=data_dir)
    train = data.input_pipeline(splits.train.take(640), batch_size=128, training=True, seed=0)
    validation = data.input_pipeline(splits.validation.take(200), batch_size=100, training=False)
    return train, validation, data_dir


def tiny_base():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(h)))


def small_space(hp):
    return {
        "multiplier": hp.Choice("multiplier", [0.5, 2.0]),
        "distance": hp.Choice("distance", ["label", "kl"]),
        "steps": hp.Fixed("steps", 1),
        "relative_step_size": hp.Fixed("relative_step_size", 1.0),
        "warmup_epochs": hp.Fixed("warmup_epochs", 0),
    }


def hypermodel(**kwargs):
    return tuning.HardeningHyperModel(tiny_base, epsilon=0.1, attack=FGSM, search_space=small_space, **kwargs)


def test_search_objective_matches_an_independent_evaluation(tmp_path, digits):
    train, validation, _ = digits
    search = keras_tuner.RandomSearch(
        hypermodel(), objective=tuning.ROBUST_OBJECTIVE, max_trials=3, directory=str(tmp_path), seed=1
    )
    search.search(train, validation_data=validation, epochs=2, verbose=0)
    trials = [t for t in search.oracle.trials.values() if t.status == "COMPLETED"]
    assert len(trials) == 3
    best_trial = search.oracle.get_best_trials(1)[0]
    best = search.get_best_models(1)[0]
    clean, robust, total = hand_written_fgsm_accuracy(best.base_model, validation, 0.1)
    assert total == 200
    assert best_trial.score == pytest.approx(robust, abs=1e-9)
    assert best_trial.metrics.get_last_value("val_clean_accuracy") == pytest.approx(clean, abs=1e-9)
    table = tuning.results_table(search)
    assert "COMPLETED" in table and "val_robust" in table and "%" in table


def hand_written_fgsm_accuracy(model, dataset, epsilon):
    """Clean and FGSM accuracy with nothing of nsladv's: x' = clip(x + eps * sign(grad_x CE), 0, 1)."""
    clean = robust = total = 0
    for x, y in dataset:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(y, tf.int64), logits))
        x_adv = tf.clip_by_value(x + epsilon * tf.sign(tape.gradient(loss, x)), 0.0, 1.0)
        right = tf.argmax(logits, -1) == tf.cast(y, tf.int64)
        clean += int(tf.reduce_sum(tf.cast(right, tf.int32)))
        fooled = tf.argmax(model(x_adv, training=False), -1) != tf.cast(y, tf.int64)
        robust += int(tf.reduce_sum(tf.cast(right & ~fooled, tf.int32)))
        total += int(tf.shape(y)[0])
    return clean / total, robust / total, total


def test_trials_reproduce_from_the_seed():
    model = hypermodel()
    hp = keras_tuner.HyperParameters()
    first = model.build(hp).get_weights()
    second = model.build(hp).get_weights()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path, digits):
    train, validation, _ = digits

    def space(hp):
        return {
            "multiplier": hp.Choice("multiplier", [1.0, 1e30]),
            "distance": hp.Fixed("distance", "label"),
            "steps": hp.Fixed("steps", 1),
            "relative_step_size": hp.Fixed("relative_step_size", 1.0),
            "warmup_epochs": hp.Fixed("warmup_epochs", 0),
        }

    model = tuning.HardeningHyperModel(tiny_base, epsilon=0.1, attack=FGSM, search_space=space, learning_rate=0.5)
    search = keras_tuner.GridSearch(model, objective=tuning.ROBUST_OBJECTIVE, max_trials=2, directory=str(tmp_path))
    search.search(train, validation_data=validation, epochs=1, verbose=0)
    statuses = {t.hyperparameters.values["multiplier"]: t.status for t in search.oracle.trials.values()}
    assert statuses == {1.0: "COMPLETED", 1e30: "FAILED"}


def test_an_averaging_optimizer_is_measured_and_checkpointed_on_the_average(tmp_path, data_dir):
    """Each trial compiles a fresh copy of the given optimizer; with `use_ema`, the objective and the best-epoch
    checkpoint are of the weights' average (what `fit` ends with), not of the raw weights training goes on from."""
    splits = data.load(data_dir=data_dir)
    train = data.input_pipeline(splits.train.take(640), batch_size=128, training=False)  # the same order every time
    validation = data.input_pipeline(splits.validation.take(200), batch_size=100, training=False)
    model = hypermodel(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9))
    hp = keras_tuner.HyperParameters()
    first, second = model.build(hp).optimizer, model.build(hp).optimizer
    assert first is not second and second.use_ema and second.ema_momentum == 0.9
    assert float(second.learning_rate) == pytest.approx(1e-2) and int(second.iterations) == 0

    search = keras_tuner.GridSearch(model, objective=tuning.ROBUST_OBJECTIVE, max_trials=1, directory=str(tmp_path))
    search.search(train, validation_data=validation, epochs=1, verbose=0)
    best_trial = search.oracle.get_best_trials(1)[0]
    checkpointed = search.get_best_models(1)[0].base_model

    # The same trial by hand: the weights after its last step (raw) and those fit ends with (the average).
    direct = model.build(best_trial.hyperparameters)
    raw = []

    class AfterEachStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            raw[:] = direct.base_model.get_weights()

    model.fit(
        best_trial.hyperparameters,
        direct,
        train,
        validation_data=validation,
        epochs=1,
        verbose=0,
        callbacks=[AfterEachStep()],
    )
    for saved, average in zip(checkpointed.get_weights(), direct.base_model.get_weights()):
        np.testing.assert_allclose(saved, average, atol=1e-5)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(checkpointed.get_weights(), raw)) > 1e-3
    _, robust, _ = hand_written_fgsm_accuracy(checkpointed, validation, 0.1)
    assert best_trial.score == pytest.approx(robust, abs=1e-9)


def test_the_optimizer_or_a_learning_rate():
    with pytest.raises(ValueError, match=r"Give `learning_rate` \(for the default Adam\) or `optimizer`, not both"):
        hypermodel(learning_rate=1e-3, optimizer="adam")
    with pytest.raises(
        ValueError,
        match=r"`optimizer` must be a Keras optimizer, its name or its config. Received: "
        r"optimizer='nope'",
    ):
        hypermodel(optimizer="nope")
    assert hypermodel().learning_rate == 1e-3 and hypermodel().optimizer is None
    assert hypermodel(optimizer="sgd").build(keras_tuner.HyperParameters()).optimizer.__class__.__name__ == "SGD"


def test_trade_off_objective():
    assert tuning.tradeoff(0.9, 0.5, weight=0.5) == pytest.approx(0.7)
    assert tuning.tradeoff(0.8, 0.5, clean_floor=0.9) == pytest.approx(0.4)
    with pytest.raises(SettingsError, match=r"`weight` must be in \[0, 1\]. Received: weight=2"):
        tuning.RobustAccuracy(tiny_base(), np.zeros((2, 28, 28, 1)), [0, 1], attack=FGSM, epsilon=0.1, weight=2)
    with pytest.raises(SettingsError, match=r"Give exactly one of `build_base`"):
        tuning.HardeningHyperModel()
    with pytest.raises(SettingsError, match=r"`monitor_examples` must be an integer >= 1 or None. Received: .*=0"):
        hypermodel(monitor_examples=0)


def test_trials_warm_the_multiplier_up_and_measure_the_monitor_examples(tmp_path, digits):
    """As in `nsladv harden`: the multiplier ramps over `multiplier_warmup_epochs`, and the objective attacks
    `monitor_examples` validation digits spread evenly over the validation data."""
    train, validation, _ = digits
    model = hypermodel(multiplier_warmup_epochs=2, monitor_examples=50)
    search = keras_tuner.RandomSearch(model, objective=tuning.ROBUST_OBJECTIVE, max_trials=1, directory=str(tmp_path))
    search.search(train, validation_data=validation, epochs=1, verbose=0)
    trial = search.oracle.get_best_trials(1)[0]
    assert 0.0 < trial.metrics.get_last_value("multiplier_scale") < 0.5  # half-way through the ramp's first epoch
    images, labels = data.as_arrays(validation.unbatch())
    rows = np.linspace(0, len(labels) - 1, 50).round().astype(int)
    subset = tf.data.Dataset.from_tensor_slices((images[rows], labels[rows])).batch(50)
    clean, robust, total = hand_written_fgsm_accuracy(search.get_best_models(1)[0].base_model, subset, 0.1)
    assert total == 50 and trial.score == pytest.approx(robust, abs=1e-9)
    assert trial.metrics.get_last_value("val_clean_accuracy") == pytest.approx(clean, abs=1e-9)


KILLED_SEARCH = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[4])
    import keras, keras_tuner
    from nsladv import datasets as data, tuning, FGSM
    from test_tuning import tiny_base, small_space

    log = open(sys.argv[2], "a")
    kill_in_trial = int(sys.argv[3])

    class Built(tuning.HardeningHyperModel):
        count = 0
        searching = False  # keras-tuner also builds once to learn the space
        def build(self, hp):
            if not Built.searching:
                return super().build(hp)
            Built.count += 1
            log.write(f"build {hp.values['multiplier']} {hp.values['distance']}\\n"); log.flush()
            if Built.count == kill_in_trial:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().build(hp)

    splits = data.load(data_dir=sys.argv[5])
    train = data.input_pipeline(splits.train.take(256), batch_size=128, training=True, seed=0)
    val = data.input_pipeline(splits.validation.take(100), batch_size=100, training=False)
    model = Built(tiny_base, epsilon=0.1, attack=FGSM, search_space=small_space)
    search = keras_tuner.RandomSearch(model, objective=tuning.ROBUST_OBJECTIVE, max_trials=3,
                                      directory=sys.argv[1], seed=3)
    Built.searching = True
    search.search(train, validation_data=val, epochs=1, verbose=0)
    """
)


def test_an_interrupted_search_resumes_without_redoing_finished_trials(tmp_path, digits):
    log = tmp_path / "builds.txt"
    args = [sys.executable, "-c", KILLED_SEARCH, str(tmp_path / "search"), str(log)]
    tail = [str(HERE), digits[2]]
    killed = subprocess.run(args + ["2"] + tail, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = log.read_text().splitlines()
    assert len(first) == 2  # trial 1 finished, trial 2 killed while building
    resumed = subprocess.run(args + ["0"] + tail, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    builds = log.read_text().splitlines()[2:]
    # The killed trial is redone, then one new trial; the finished one is not.
    assert builds[0] == first[1] and len(builds) == 2
    trial_files = list((tmp_path / "search" / "untitled_project").glob("trial_*/trial.json"))
    statuses = sorted(json.loads(p.read_text())["status"] for p in trial_files)
    assert statuses.count("COMPLETED") == 3


def test_results_table_lists_a_custom_search_space(tmp_path, digits):
    train, validation, _ = digits

    def space(hp):
        return {
            "multiplier": hp.Fixed("multiplier", 0.5),
            "distance": hp.Fixed("distance", "label"),
            "steps": hp.Fixed("steps", 1),
            "relative_step_size": hp.Fixed("relative_step_size", 1.0),
            "warmup_epochs": hp.Fixed("warmup_epochs", 0),
            "my_own_knob": hp.Choice("my_own_knob", ["left", "right"]),
        }

    model = tuning.HardeningHyperModel(tiny_base, epsilon=0.1, attack=FGSM, search_space=space)
    search = keras_tuner.RandomSearch(model, objective=tuning.ROBUST_OBJECTIVE, max_trials=1, directory=str(tmp_path))
    search.search(train.take(1), validation_data=validation.take(1), epochs=1, verbose=0)
    header = tuning.results_table(search).splitlines()[0]
    assert "my_own_knob" in header and "relative_step_size" in header and "multiplier" in header
