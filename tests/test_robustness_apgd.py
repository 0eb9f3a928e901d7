"""Auto-PGD: its checkpoints, its iterates against a NumPy transcription of the paper, and exact answers on linear models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nsladv.robustness import APGD
from nsladv.robustness import apgd_ce
from nsladv.robustness import apgd_t
from nsladv.robustness import evaluate_robustness
from nsladv.robustness import pgd
from nsladv.robustness.apgd import checkpoints


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, then p_j + max(p_j - p_{j-1} - 0.03, 0.06): 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]


A, B, C = 20.0, -0.5, 0.63  # logits [0, B - A (x - C)^2]: label 0 everywhere, the loss peaks at x = C


def bump_model():
    inputs = keras.Input((1,))
    shifted = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-C))(inputs)
    logits = keras.layers.Dense(2)(keras.ops.square(shifted))
    model = keras.Model(inputs, logits)
    model.layers[-1].set_weights([np.array([[0.0, -A]], "float32"), np.array([0.0, B], "float32")])
    return model


def reference_apgd(x, epsilon, steps):
    """APGD-CE for the bump model in NumPy, from the paper's equations; returns the best-loss point."""

    def loss_and_gradient(v):
        z = B - A * (v - C) ** 2
        return np.logaddexp(0.0, z), (1.0 / (1.0 + np.exp(-z))) * (-2.0 * A * (v - C))

    def project(v):
        return np.clip(np.clip(v, x - epsilon, x + epsilon), 0.0, 1.0)

    eta, previous, current = 2.0 * epsilon, x, x
    loss, grad = loss_and_gradient(current)
    best, best_loss, best_grad = current, loss, grad
    check, rises, since, last_best, halved_last = set(checkpoints(steps)), 0, 0, loss, True
    for k in range(steps):
        z = project(current + eta * np.sign(grad))
        alpha = 0.75 if k > 0 else 1.0
        new = project(current + alpha * (z - current) + (1 - alpha) * (current - previous))
        previous, current = current, new
        new_loss, grad = loss_and_gradient(current)
        rises += new_loss > loss
        loss = new_loss
        since += 1
        if loss > best_loss:
            best, best_loss, best_grad = current, loss, grad
        if k in check:
            halve = rises <= 0.75 * since or (not halved_last and last_best >= best_loss)
            if halve:
                eta, current, grad = eta / 2.0, best, best_grad
            rises, since, last_best, halved_last = 0, 0, best_loss, halve
    return best


# The last two reach a checkpoint where the loss rose often enough but the best loss did not improve.
@pytest.mark.parametrize(
    "x0, epsilon, steps", [(0.5, 0.3, 30), (0.3, 0.4, 30), (0.55, 0.1, 30), (0.5, 0.4, 20), (0.45, 0.4, 30)]
)
def test_iterates_match_the_papers_algorithm(x0, epsilon, steps):
    attack = APGD(steps=steps, random_start=False)
    attacker = attack.batch_attacker(bump_model())
    x, y, no_seed = tf.constant([[x0]], tf.float32), tf.constant([0], tf.int64), tf.constant([0, 0], tf.int64)
    fooled, found, _ = attacker._run(x, y, tf.constant(epsilon, tf.float32), y, no_seed)
    assert not bool(fooled[0])  # B < 0: the model is right everywhere, so the best-loss point comes back
    np.testing.assert_allclose(found.numpy()[0, 0], reference_apgd(x0, epsilon, steps), atol=1e-5)


def linear_problem(classes=5, n=300, seed=1):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, classes)).astype("float32")
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(classes, use_bias=False)])
    model.set_weights([w])
    x = rng.random((n, 6)).astype("float32")
    return model, w, x, np.argmax(x @ w, 1)


def exact_robust_accuracy(w, x, y, epsilon):
    """A linear classifier's exact worst case in the L-inf ball and [0, 1]: each margin at its box minimum."""
    low, high = np.maximum(-epsilon, -x), np.minimum(epsilon, 1 - x)
    robust = np.ones(len(x), bool)
    for j in range(w.shape[1]):
        c = (w[:, y] - w[:, [j]]).T  # margin of the true class over class j, per example
        worst = (c * x).sum(1) + np.minimum(c * low, c * high).sum(1)
        robust &= (y == j) | (worst > 0)
    return robust.mean()


def test_apgd_t_finds_a_linear_models_exact_worst_case():
    model, w, x, y = linear_problem()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(100)
    exact = exact_robust_accuracy(w, x, y, 0.05)
    _, every_target, _ = apgd_t(steps=30, target_classes=4).batch_attacker(model).accuracy(data, 0.05)
    _, one_target, _ = apgd_t(steps=30, target_classes=1).batch_attacker(model).accuracy(data, 0.05)
    assert every_target == pytest.approx(exact, abs=1e-9)
    assert one_target > every_target  # the worst case needs every target: the union over them counts


def test_apgd_in_the_evaluation_is_no_weaker_than_pgd():
    model, w, x, y = linear_problem()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(150)
    result = evaluate_robustness(model, data, epsilons=[0.05], attacks=[pgd(20, 1), apgd_ce(steps=30)], cascade=False)
    accuracy = {name: a["accuracy"]["0.05"] for name, a in result["attacks"].items()}
    assert accuracy["apgd-ce"] <= accuracy["pgd20"] + 1e-9
    assert accuracy["apgd-ce"] >= exact_robust_accuracy(w, x, y, 0.05) - 1e-9  # no attack beats the exact answer


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss="hinge"), r"Unknown APGD loss. Expected one of \['ce', 'dlr-targeted'\]. Received: loss='hinge'"),
        (dict(steps=0), r"`steps` must be an integer >= 1. Received: steps=0"),
        (dict(restarts=1.5), r"`restarts` must be an integer >= 1. Received: restarts=1.5"),
        (dict(odi_steps=-1), r"`odi_steps` must be an integer >= 0. Received: odi_steps=-1"),
        (dict(odi_steps=True), r"`odi_steps` must be an integer >= 0. Received: odi_steps=True"),
    ],
)
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APGD(**kwargs)


def test_the_targeted_loss_needs_four_classes():
    model, _, x, y = linear_problem(classes=3)
    with pytest.raises(ValueError, match=r"needs at least 4 classes. Received: 3 classes"):
        apgd_t(steps=2).batch_attacker(model).accuracy(tf.data.Dataset.from_tensor_slices((x, y)).batch(50), 0.1)


@pytest.mark.parametrize("attack", [apgd_ce(steps=10), apgd_t(steps=10, target_classes=2)], ids=["ce", "t"])
def test_a_model_without_an_input_gradient_is_attacked_not_crashed(attack):
    """Rounding the input first leaves no gradient path (tape.gradient gives None): APGD moves nowhere and reports
    every example robust, as PGD and FGSM do, instead of failing in its loop."""
    inputs = keras.Input((6,))
    rounded = keras.ops.round(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(rounded))
    x = np.full((8, 6), 0.3, "float32")
    y = np.argmax(model.predict(x, verbose=0), 1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    clean, robust, count = attack.batch_attacker(model, seed=0).accuracy(dataset, 0.1)
    assert (clean, robust, count) == (1.0, 1.0, 8)


def pocket_model(dims=10, pocket=7.99):
    """Two classes, logits [0, -1 - s + 1000 relu(s - pocket)] with s the sum of the inputs: class 0 wherever s is
    below about pocket + 0.009, class 1 in the corner of the ball beyond. The cross-entropy rises towards smaller s
    everywhere outside that corner, so gradient ascent from a random start walks away from the only wrong region."""
    inputs = keras.Input((dims,))
    total = keras.ops.sum(inputs, axis=-1, keepdims=True)
    wrong = -1.0 - total + 1000.0 * keras.ops.relu(total - pocket)
    return keras.Model(inputs, keras.ops.concatenate([keras.ops.zeros_like(wrong), wrong], axis=-1))


def test_diversified_starts_reach_a_pocket_the_loss_ascent_walks_away_from():
    """Output Diversified Initialization (Tashiro et al., 2020): with w . logits for a random w, about half the
    restarts step every pixel towards the upper corner (sum 8 > 7.999), where APGD-CE's random starts (sum about 5)
    never land and from where the loss would not lead them."""
    model = pocket_model()
    x, y = np.full((40, 10), 0.5, "float32"), np.zeros(40, "int64")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(20)
    plain = APGD(steps=10, restarts=5).batch_attacker(model, seed=0).accuracy(dataset, 0.3)
    diversified = APGD(steps=10, restarts=5, odi_steps=2).batch_attacker(model, seed=0).accuracy(dataset, 0.3)
    assert plain == (1.0, 1.0, 40)
    assert diversified[0] == 1.0 and diversified[1] < 0.2  # all 5 restarts miss with odds 1/32 per example


def test_a_diversified_start_without_an_input_gradient_is_the_random_start():
    """ODI moves along sign(grad (w . logits)); with no gradient path (a rounding first layer) it stays at the random
    start APGD draws without it from the same seed (ODI's w comes from a stream of its own), in the ball."""
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.ops.round(inputs)))
    x = tf.fill([5, 6], 0.3)
    y = tf.argmax(model(x), -1)
    seed, epsilon = tf.constant([3, 4], tf.int64), tf.constant(0.1, tf.float32)
    _, plain, _ = APGD(steps=3).batch_attacker(model)._run(x, y, epsilon, y, seed)
    _, diversified, _ = APGD(steps=3, odi_steps=2).batch_attacker(model)._run(x, y, epsilon, y, seed)
    np.testing.assert_array_equal(diversified.numpy(), plain.numpy())
    assert not np.allclose(plain.numpy(), 0.3) and np.all(np.abs(plain.numpy() - 0.3) <= 0.1 + 1e-6)


def test_apgd_reports_the_smallest_margin_its_iterates_reached():
    """Two classes, linear logits: from x, the first step of 2 epsilon along the loss's sign lands on the box corner
    where the margin is smallest, so the margin APGD reports is that exact minimum, fooled or not."""
    model, w, x, y = linear_problem(classes=2, n=40)
    epsilon = 0.05
    d = (w[:, y] - w[:, 1 - y]).T  # the margin's direction per example: margin = x . d
    low, high = np.maximum(-epsilon, -x), np.minimum(epsilon, 1 - x)
    exact = (d * x).sum(1) + np.minimum(d * low, d * high).sum(1)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    attacker = APGD(steps=5, random_start=False).batch_attacker(model)
    clean, robust, margin = attacker.masks_and_margins(data, epsilon)
    assert clean.all() and 0 < robust.sum() < len(y)  # some fooled, some not: both kinds are checked
    np.testing.assert_allclose(margin, exact, atol=1e-5)
    np.testing.assert_array_equal(robust, exact > 0)


class CountedDense(keras.layers.Dense):
    """A Dense layer that counts the examples it is called on (inside compiled loops too)."""

    def build(self, input_shape):
        super().build(input_shape)
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32", name="calls")

    def call(self, x):
        self.calls.assign_add(tf.cast(tf.shape(x)[0], tf.float32))
        return super().call(x)


def test_a_batch_stops_iterating_once_every_example_is_fooled():
    """At a radius that fools everything at the first step, 100 steps and 3 restarts cost a few passes, not 300:
    the answer (every example fooled, the exact one here) cannot change after that."""
    model, w, x, y = linear_problem(n=64)
    layer = CountedDense(w.shape[1], use_bias=False)
    counted = keras.Sequential([keras.Input((6,)), layer])
    counted.set_weights([w, np.zeros((), "float32")])
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    _, robust, _ = APGD(steps=100, restarts=3).batch_attacker(counted, seed=0).masks_and_margins(data, 2.0)
    assert not robust.any() and exact_robust_accuracy(w, x, y, 2.0) == 0
    # Per batch of 32: the clean pass, the random start, one step (every example fooled), then no more restarts.
    assert float(layer.calls.numpy()) <= 64 * 4
