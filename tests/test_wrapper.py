"""The wrapper: hand-computed training step, every model kind, Keras contracts."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import MODEL_KINDS
from conftest import SCCE
from conftest import as_inputs
from conftest import as_labels
from conftest import toy_data

import nsladv
from nsladv import AdversarialModel
from nsladv import Regularization
from nsladv import ThreatModel

X = np.array([[0.2, 0.4], [0.6, 0.1]], "float32")
Y = np.array([[1.0], [0.0]], "float32")
W = np.array([[0.5], [-1.0]], "float32")
B = np.array([0.1], "float32")


def linear_model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([W, B])
    return model


def hand_computed_step(eps, multiplier, lr, sample_weight=None):
    """One FGSM (L-inf) step on f(x) = x.w + b with the mean squared error."""
    sw = np.ones(len(X), "float32") if sample_weight is None else sample_weight
    n = len(X)
    r = X @ W + B - Y  # residuals, [2, 1]
    clean = np.sum(sw * r[:, 0] ** 2) / n
    x_adv = X + eps * np.sign(r * W.T)  # sign of d loss / d x = 2 r w / n
    r_adv = x_adv @ W + B - Y
    neighbor = np.sum(sw * r_adv[:, 0] ** 2) / n
    grad_w = (2 / n) * (X.T @ (sw[:, None] * r)) + multiplier * (2 / n) * (x_adv.T @ (sw[:, None] * r_adv))
    grad_b = (2 / n) * np.sum(sw[:, None] * r) + multiplier * (2 / n) * np.sum(sw[:, None] * r_adv)
    return {
        "clean_loss": clean,
        "neighbor_loss": neighbor,
        "loss": clean + multiplier * neighbor,
        "kernel": W - lr * grad_w,
        "bias": B - lr * grad_b,
    }


@pytest.mark.parametrize("sample_weight", [None, np.array([2.0, 0.5], "float32")])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_one_step_matches_hand_computation(sample_weight, jit_compile):
    base = linear_model()
    model = nsladv.wrap(base, epsilon=0.1, multiplier=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=jit_compile)
    logs = model.train_on_batch(X, Y, sample_weight=sample_weight, return_dict=True)
    expected = hand_computed_step(0.1, 0.5, 0.1, sample_weight)
    for key in ("loss", "clean_loss", "neighbor_loss"):
        assert logs[key] == pytest.approx(expected[key], rel=1e-5), key
    np.testing.assert_allclose(base.get_weights()[0], expected["kernel"], rtol=1e-5)
    np.testing.assert_allclose(base.get_weights()[1], expected["bias"], rtol=1e-5)


def test_random_start_step_matches_hand_computation():
    # From a random start u (|u| <= eps), a step of 2 * eps is always clipped
    # back to the corner x + eps * sign(g): on this quadratic loss the sign of
    # the gradient is the same anywhere in the ball, so the step is FGSM's,
    # here through the path where clean and neighbor passes share a backward.
    base = linear_model()
    model = nsladv.wrap(base, epsilon=0.1, step_size=0.2, multiplier=0.5, random_start=True)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    logs = model.train_on_batch(X, Y, return_dict=True)
    expected = hand_computed_step(0.1, 0.5, 0.1)
    for key in ("loss", "clean_loss", "neighbor_loss"):
        assert logs[key] == pytest.approx(expected[key], rel=1e-5), key
    np.testing.assert_allclose(base.get_weights()[0], expected["kernel"], rtol=1e-5)
    np.testing.assert_allclose(base.get_weights()[1], expected["bias"], rtol=1e-5)


def test_logit_pairing_step_matches_hand_computation():
    # D = mean_i (f(x_i) - f(x'_i))^2 with f linear. The neighbor is
    # x' = x + eps * s * sign(w) for a random sign s, so f(x) - f(x') =
    # -s * eps * |w|_1 and D = (eps * |w|_1)^2, whatever s. Its gradient
    # flows through both passes: dD/dw = 2 eps^2 |w|_1 sign(w), dD/db = 0.
    eps, multiplier, lr = 0.1, 0.5, 0.1
    base = linear_model()
    model = nsladv.wrap(base, epsilon=eps, step_size=2 * eps, multiplier=multiplier, distance="l2")
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    logs = model.train_on_batch(X, Y, return_dict=True)
    l1 = np.abs(W).sum()
    r = X @ W + B - Y
    clean = np.mean(r**2)
    assert logs["clean_loss"] == pytest.approx(clean, rel=1e-5)
    assert logs["neighbor_loss"] == pytest.approx((eps * l1) ** 2, rel=1e-5)
    assert logs["loss"] == pytest.approx(clean + multiplier * (eps * l1) ** 2, rel=1e-5)
    grad_w = (2 / len(X)) * X.T @ r + multiplier * 2 * eps**2 * l1 * np.sign(W)
    grad_b = (2 / len(X)) * np.sum(r)
    np.testing.assert_allclose(base.get_weights()[0], W - lr * grad_w, rtol=1e-5)
    np.testing.assert_allclose(base.get_weights()[1], B - lr * grad_b, rtol=1e-5)


def compile_for(model, kind, **kwargs):
    loss = {"cls": SCCE, "aux": SCCE} if kind == "two_outputs" else SCCE
    metrics = {"cls": ["accuracy"], "aux": ["accuracy"]} if kind == "two_outputs" else ["accuracy"]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=metrics, **kwargs)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("distance, steps", [("label", 1), ("kl", 3)])
def test_every_model_kind_trains(kind, distance, steps):
    x, y = toy_data()
    base = MODEL_KINDS[kind]()
    model = nsladv.wrap(base, epsilon=0.05, steps=steps, distance=distance, multiplier=0.5, clip_range=(0, 1))
    compile_for(model, kind)
    history = model.fit(as_inputs(kind, x), as_labels(kind, y), epochs=8, batch_size=32, verbose=0).history
    assert history["clean_loss"][-1] < 0.8 * history["clean_loss"][0]
    assert history["loss"][-1] < history["loss"][0]
    assert all(np.isfinite(history["neighbor_loss"]))
    assert len(model.weights) == len(base.weights)
    np.testing.assert_allclose(
        model.predict(as_inputs(kind, x[:5]), verbose=0)["cls"]
        if kind == "two_outputs"
        else model.predict(as_inputs(kind, x[:5]), verbose=0),
        base.predict(as_inputs(kind, x[:5]), verbose=0)["cls"]
        if kind == "two_outputs"
        else base.predict(as_inputs(kind, x[:5]), verbose=0),
    )


def test_tf_data_with_sample_weights_and_evaluate_reports_clean_metrics():
    x, y = toy_data()
    w = np.where(y == 0, 2.0, 1.0).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)
    model = nsladv.wrap(MODEL_KINDS["functional"](), epsilon=0.05)
    compile_for(model, "functional")
    history = model.fit(dataset, epochs=2, verbose=0).history
    assert {"loss", "clean_loss", "neighbor_loss", "accuracy"} <= set(history)
    results = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    model.base_model.compile(loss=SCCE, metrics=["accuracy"])
    base_results = model.base_model.evaluate(x, y, verbose=0, return_dict=True)
    assert results["loss"] == pytest.approx(base_results["loss"], rel=1e-5)
    assert results["accuracy"] == pytest.approx(base_results["accuracy"])


def test_sample_weights_scale_both_loss_terms():
    x, y = toy_data(32)
    logs = []
    for weight in (1.0, 2.0):
        keras.utils.set_random_seed(7)
        model = nsladv.wrap(MODEL_KINDS["sequential"](), epsilon=0.05)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCCE)
        logs.append(model.train_on_batch(x, y, sample_weight=np.full(32, weight, "float32"), return_dict=True))
    assert logs[1]["clean_loss"] == pytest.approx(2 * logs[0]["clean_loss"], rel=1e-5)
    assert logs[1]["neighbor_loss"] == pytest.approx(2 * logs[0]["neighbor_loss"], rel=1e-5)


def test_per_output_loss_metrics_see_clean_inputs_only():
    x, y = toy_data(32)
    base = MODEL_KINDS["two_outputs"]()
    model = nsladv.wrap(base, epsilon=0.2, multiplier=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss={"cls": SCCE, "aux": SCCE})
    logs = model.train_on_batch(x, {"cls": y, "aux": y}, return_dict=True)
    base.compile(loss={"cls": SCCE, "aux": SCCE})
    clean = base.evaluate(x, {"cls": y, "aux": y}, verbose=0, return_dict=True)
    assert logs["cls_loss"] == pytest.approx(clean["cls_loss"], rel=1e-5)
    assert logs["clean_loss"] == pytest.approx(clean["loss"], rel=1e-5)
    assert logs["neighbor_loss"] > logs["clean_loss"]


class TrainingFlagRecorder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flags = []

    def call(self, inputs, training=None):
        self.flags.append(training)
        return inputs


class PassCounter(keras.layers.Layer):
    """Counts the passes through it; takes no `training` argument, so it computes the same in both modes."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.passes = 0

    def call(self, inputs):
        self.passes += 1
        return inputs


@pytest.mark.parametrize("steps, passes", [(1, 2), (3, 4)])
def test_a_plain_model_reuses_the_clean_gradient_for_the_first_step(steps, passes):
    counter = PassCounter()
    base = keras.Sequential([keras.Input((6,)), counter, keras.layers.Dense(3)])
    model = nsladv.wrap(base, epsilon=0.05, steps=steps)
    model.compile(optimizer="sgd", loss=SCCE, run_eagerly=True)
    x, y = toy_data(8)
    counter.passes = 0
    model.train_on_batch(x, y)
    assert counter.passes == passes  # clean, PGD steps after the first, neighbor


@pytest.mark.parametrize(
    "settings, expected",
    [
        # A layer that takes `training` may use it: the first step takes its own inference pass.
        ({"steps": 1}, [True, False, True]),
        # Each PGD step is an inference pass.
        ({"steps": 3}, [True, False, False, False, True]),
        # Random start: every step is a pass of its own.
        ({"steps": 2, "random_start": True}, [True, False, False, True]),
        ({"steps": 2, "distance": "kl"}, [True, False, False, True]),
    ],
)
def test_training_flag_and_passes_per_step(settings, expected):
    recorder = TrainingFlagRecorder()
    base = keras.Sequential([keras.Input((6,)), recorder, keras.layers.Dense(3)])
    model = nsladv.wrap(base, epsilon=0.05, **settings)
    model.compile(optimizer="sgd", loss=SCCE, run_eagerly=True)
    x, y = toy_data(8)
    recorder.flags.clear()
    model.train_on_batch(x, y)
    assert recorder.flags == expected


@pytest.mark.parametrize("jit_compile", [False, True])
def test_dropout_and_batchnorm(jit_compile):
    x, y = toy_data()
    base = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(32),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(3),
        ]
    )
    model = nsladv.wrap(base, epsilon=0.05, steps=3)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=SCCE, metrics=["accuracy"], jit_compile=jit_compile)
    moving_mean = base.layers[1].moving_mean.numpy().copy()
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0).history
    assert history["clean_loss"][-1] < history["clean_loss"][0]
    assert not np.allclose(base.layers[1].moving_mean.numpy(), moving_mean)


@pytest.mark.parametrize("distance", ["label", "kl"])
def test_mixed_precision_stays_finite_and_close_to_float32(distance):
    x, y = toy_data()
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(3)
        base = keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, dtype="float32")]
        )
        model = nsladv.wrap(base, epsilon=0.05, steps=2, distance=distance, clip_range=(0, 1))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SCCE)
        history = model.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0).history
        assert all(np.isfinite(v) for values in history.values() for v in values)
        results[policy] = history["clean_loss"][-1]
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert results["mixed_float16"] == pytest.approx(results["float32"], rel=0.05)


def test_epsilon_and_multiplier_scales():
    x, y = toy_data(32)
    model = nsladv.wrap(MODEL_KINDS["sequential"](), epsilon=0.3, multiplier=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCCE)
    model.epsilon_scale = 0.0
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["neighbor_loss"] == pytest.approx(logs["clean_loss"], rel=1e-6)
    model.epsilon_scale, model.multiplier_scale = 1.0, 0.0
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["neighbor_loss"] > logs["clean_loss"]
    assert logs["loss"] == pytest.approx(logs["clean_loss"], rel=1e-6)
    with pytest.raises(ValueError, match=r"`epsilon_scale` must be in \[0, 1\]. Received: epsilon_scale=1.5"):
        model.epsilon_scale = 1.5


def test_save_load_and_config_round_trip(tmp_path):
    x, y = toy_data()
    base = MODEL_KINDS["functional"]()
    threat = ThreatModel(epsilon=0.07, norm="l2", steps=3, clip_range=(0, 1))
    regularization = Regularization(multiplier=0.3, distance="js", from_logits=True)
    model = AdversarialModel(base, threat=threat, regularization=regularization)
    compile_for(model, "functional")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)

    path = tmp_path / "hardened.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert not isinstance(restored, AdversarialModel)
    for batch in (x[:3], x[:17]):
        np.testing.assert_allclose(restored.predict(batch, verbose=0), base.predict(batch, verbose=0), rtol=1e-6)

    config = json.loads(json.dumps(model.get_config()))
    clone = AdversarialModel.from_config(config)
    assert clone.threat == threat and clone.regularization == regularization
    assert [w.shape for w in clone.weights] == [w.shape for w in base.weights]
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert isinstance(again, AdversarialModel) and again.threat == threat
    assert again.compiled and isinstance(again.optimizer, keras.optimizers.Adam)
    again.fit(x, y, epochs=1, batch_size=64, verbose=0)


def test_export_goes_to_the_base_model(tmp_path):
    x, _ = toy_data(8)
    base = MODEL_KINDS["sequential"]()
    model = nsladv.wrap(base)
    model.export(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export"))
    np.testing.assert_allclose(served.serve(x), base.predict(x, verbose=0), rtol=1e-5)


# Errors ---------------------------------------------------------------------


def test_settings_passed_positionally():
    with pytest.raises(
        TypeError,
        match=r"nsladv.wrap\(\) takes the model positionally.*Received: 1 positional setting\(s\) after the model: \(0.1,\)",
    ):
        nsladv.wrap(MODEL_KINDS["sequential"](), 0.1)
    with pytest.raises(
        TypeError, match=r"AdversarialModel takes the base model positionally.*Received: 1 extra positional"
    ):
        AdversarialModel(MODEL_KINDS["sequential"](), ThreatModel())


def test_unknown_and_conflicting_settings():
    with pytest.raises(TypeError, match=r"unknown settings \['epsilom'\]"):
        nsladv.wrap(MODEL_KINDS["sequential"](), epsilom=0.1)
    with pytest.raises(TypeError, match=r"Pass either `threat=` or its settings \['epsilon'\], not both"):
        nsladv.wrap(MODEL_KINDS["sequential"](), threat=ThreatModel(), epsilon=0.1)


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"epsilon": 0.0}, ValueError, r"`epsilon` must be a finite number > 0. Received: epsilon=0.0"),
        ({"norm": "l0"}, ValueError, r"Unknown norm.*Received: norm='l0'"),
        ({"distance": "mse"}, ValueError, r"Unknown distance.*Received: distance='mse'"),
        ({"distance": "kl", "random_start": False}, ValueError, r"Received: random_start=False"),
    ],
)
def test_invalid_settings_through_wrap(settings, error, message):
    with pytest.raises(error, match=message):
        nsladv.wrap(MODEL_KINDS["sequential"](), **settings)


def test_not_a_keras_model():
    with pytest.raises(
        TypeError, match=r"Expected a Keras 3 `keras.Model` to wrap. Received: base_model of type builtins.str"
    ):
        nsladv.wrap("model.keras")
    inner = nsladv.wrap(MODEL_KINDS["sequential"]())
    with pytest.raises(TypeError, match=r"already an AdversarialModel"):
        nsladv.wrap(inner)


def test_compile_without_loss():
    model = nsladv.wrap(MODEL_KINDS["sequential"]())
    with pytest.raises(ValueError, match=r"compile\(\) needs a `loss`.*Received: loss=None"):
        model.compile(optimizer="adam")


def test_kl_needs_to_know_logits():
    model = nsladv.wrap(MODEL_KINDS["sequential"](), distance="kl")
    with pytest.raises(ValueError, match=r"whether the model outputs logits or probabilities.*Pass from_logits"):
        model.compile(optimizer="adam", loss=lambda y, p: keras.ops.mean(p))
    model.compile(optimizer="adam", loss=SCCE)
    assert model._from_logits is True


def test_data_without_labels():
    x, _ = toy_data(32)
    model = nsladv.wrap(MODEL_KINDS["sequential"]())
    model.compile(optimizer="adam", loss=SCCE)
    with pytest.raises(ValueError, match=r"trains on labelled data.*Received: data without labels \(y=None\)"):
        model.fit(x, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "mask, message",
    [
        ({"ids": True}, r"Cannot perturb input 'ids': it is of dtype int32"),
        ({"image": True}, r"`feature_mask` names features the inputs do not have: \['image'\]"),
    ],
)
def test_bad_feature_masks_fail_in_fit(mask, message):
    x, y = toy_data(32)
    model = nsladv.wrap(MODEL_KINDS["dict"](), feature_mask=mask)
    model.compile(optimizer="adam", loss=SCCE)
    with pytest.raises(ValueError, match=message):
        model.fit(as_inputs("dict", x), y, epochs=1, verbose=0)


def _first_step_spy(monkeypatch):
    """Records the scaled-space neighbor NSL returns at each step."""
    from nsladv import _nsl

    steps, real = [], _nsl.gen_adv_neighbor

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        steps.append(next(iter(result[0].values())))
        return result

    monkeypatch.setattr(_nsl, "gen_adv_neighbor", spy)
    return steps


@pytest.mark.parametrize(
    "layer",
    [
        None,
        keras.layers.Dropout(0.5),
        keras.layers.ActivityRegularization(l2=5.0),
        keras.layers.BatchNormalization(),
    ],
    ids=["plain", "dropout", "activity_regularizer", "batchnorm"],
)
def test_the_first_step_follows_the_inference_mode_attack_loss(layer, monkeypatch):
    """FGSM's neighbor is x + eps * sign(grad_x L(y, f(x, training=False))) whatever the model holds."""
    x, y = toy_data(64)
    layers = [keras.Input((6,)), keras.layers.Dense(32, activation="relu")]
    base = keras.Sequential(layers + ([layer] if layer is not None else []) + [keras.layers.Dense(3)])
    base(x[:2])
    if isinstance(layer, keras.layers.BatchNormalization):  # Batch statistics far from the moving ones.
        layer.moving_mean.assign(np.full(32, 3.0, "float32"))
    sample_weight = np.where(np.arange(64) % 2 == 0, 1.0, 3.0).astype("float32")
    with tf.GradientTape() as tape:
        inputs = tf.constant(x)
        tape.watch(inputs)
        loss = SCCE(y, base(inputs, training=False))
    expected = x + 0.1 * np.sign(tape.gradient(loss, inputs).numpy())
    steps = _first_step_spy(monkeypatch)
    model = nsladv.wrap(base, epsilon=0.1, multiplier=1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCCE, run_eagerly=True)
    model.train_on_batch(x, y, sample_weight=sample_weight)
    np.testing.assert_allclose(steps[0].numpy() * 0.1, expected, atol=1e-6)


class TrainingInputRecorder(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.training_inputs = []

    def call(self, inputs, training=None):
        if training:
            self.training_inputs.append(np.array(inputs))
        return inputs


@pytest.mark.parametrize("settings", [{"steps": 3}, {"steps": 2, "random_start": True}, {"steps": 2, "distance": "kl"}])
def test_batchnorm_statistics_move_with_the_two_training_passes_only(settings):
    """Neighbor-building passes leave BatchNorm's moving statistics alone; clean and neighbor passes update them."""
    recorder = TrainingInputRecorder()
    norm = keras.layers.BatchNormalization(momentum=0.5)
    base = keras.Sequential([keras.Input((6,)), recorder, norm, keras.layers.Dense(3)])
    model = nsladv.wrap(base, epsilon=0.2, **settings)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=SCCE, run_eagerly=True)
    x, y = toy_data(32)
    expected = norm.moving_mean.numpy().copy()
    model.train_on_batch(x, y)
    assert len(recorder.training_inputs) == 2  # the clean batch and its neighbors
    np.testing.assert_array_equal(recorder.training_inputs[0], x)
    assert not np.allclose(recorder.training_inputs[1], x)
    for batch in recorder.training_inputs:
        expected = 0.5 * expected + 0.5 * batch.mean(axis=0)
    np.testing.assert_allclose(norm.moving_mean.numpy(), expected, atol=1e-5)
