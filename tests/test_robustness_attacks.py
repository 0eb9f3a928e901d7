"""FGSM and PGD (nsladv.robustness.attacks) and the attackers' bookkeeping: adversarial inputs computed by hand on a
known linear model."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from robustness_helpers import DIRECTION
from robustness_helpers import W
from robustness_helpers import X
from robustness_helpers import Y
from robustness_helpers import hidden_corner_classifier
from robustness_helpers import honest_linear_task
from robustness_helpers import linear_classifier

from nsladv import FGSM
from nsladv import Attack
from nsladv import ThreatModel
from nsladv import evaluate_robustness
from nsladv import pgd
from nsladv.robustness import fgsm
from nsladv.robustness.attacks import BatchAttacker
from nsladv.robustness.attacks import adversarial_examples


def test_fgsm_by_hand():
    x_adv = adversarial_examples(linear_classifier(), tf.constant(X), tf.constant(Y), FGSM, 0.1)
    np.testing.assert_allclose(x_adv, np.clip(X + 0.1 * DIRECTION, 0, 1), atol=1e-6)


def test_pgd_reaches_the_same_corner_on_a_linear_model():
    x_adv = adversarial_examples(linear_classifier(), tf.constant(X), tf.constant(Y), pgd(steps=20, restarts=1), 0.1)
    np.testing.assert_allclose(x_adv, np.clip(X + 0.1 * DIRECTION, 0, 1), atol=1e-6)


def test_l2_fgsm_by_hand():
    attack = fgsm(name="fgsm_l2", norm="l2", clip_range=None)
    x_adv = adversarial_examples(linear_classifier(), tf.constant(X), tf.constant(Y), attack, 0.5)
    unit = (W[:, 1] - W[:, 0]) / np.linalg.norm(W[:, 1] - W[:, 0])
    np.testing.assert_allclose(x_adv, X + 0.5 * unit, atol=1e-6)


def test_robust_accuracy_counts_by_hand():
    # Margins (logit 0 - logit 1): x @ (W0 - W1) = 2 x0 + 0.25 x1 - 3 x2. FGSM
    # at eps lowers it by eps * (2 + 0.25 + 3) = 5.25 eps.
    x = np.array([[0.5, 0.0, 0.2], [0.5, 0.0, 0.1], [0.1, 0.0, 0.5]], "float32")  # margins 0.4, 0.7, -1.3
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(3, "int64"))).batch(2)
    clean, robust, total = BatchAttacker(linear_classifier(), FGSM).accuracy(dataset, 0.1)
    assert (clean, robust, total) == (2 / 3, 1 / 3, 3)  # 0.4 - 0.525 < 0 falls, 0.7 - 0.525 > 0 holds


def test_attack_settings_are_validated():
    with pytest.raises(ValueError, match=r"`restarts` must be an integer >= 1. Received: restarts=0"):
        Attack(restarts=0)
    with pytest.raises(ValueError, match=r"FGSM \(steps=1\) starts from x and has nothing to restart"):
        Attack(threat=ThreatModel(epsilon=1.0, steps=1), restarts=3)
    with pytest.raises(ValueError, match=r"Unknown norm"):
        pgd(norm="l7")
    with pytest.raises(ValueError, match=r"`epsilons` must name at least one radius > 0\. Received: epsilons=\[\]"):
        evaluate_robustness(linear_classifier(), tf.data.Dataset.from_tensor_slices((X, Y)).batch(2), epsilons=[])


@pytest.mark.parametrize("restarts, low, high", [(1, 0.84, 0.96), (10, 0.25, 0.45)])
def test_robust_means_robust_after_every_restart(restarts, low, high):
    # 400 copies of x = 0.5: each restart fools about 10% of them independently,
    # so the worst case over R restarts leaves about 0.9 ** R of them.
    dataset = tf.data.Dataset.from_tensor_slices((np.full((400, 1), 0.5, "float32"), np.zeros(400, "int64"))).batch(400)
    attack = pgd(steps=5, restarts=restarts)
    clean, robust, _ = BatchAttacker(hidden_corner_classifier(), attack).accuracy(dataset, 0.1)
    assert clean == 1.0 and low < robust < high


def test_random_starts_repeat_under_a_seed():
    dataset = tf.data.Dataset.from_tensor_slices((np.full((400, 1), 0.5, "float32"), np.zeros(400, "int64"))).batch(400)
    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        runs.append(BatchAttacker(hidden_corner_classifier(), pgd(steps=5, restarts=2)).masks(dataset, 0.1)[1])
    np.testing.assert_array_equal(runs[0], runs[1])


def test_square_returns_the_points_it_fools_with():
    from nsladv.robustness.square import Square

    model, dataset = honest_linear_task(seed=0, examples=20)
    x, y = next(iter(dataset))
    clean, robust, points = Square(queries=300).batch_attacker(model, seed=0).perturb(x, y, 0.1)
    assert (~robust).any()
    assert np.abs(points - x.numpy()).max() <= 0.1 + 1e-6 and points.min() >= 0 and points.max() <= 1
    predicted = np.argmax(model.predict(points, verbose=0), 1)
    np.testing.assert_array_equal(predicted[clean & ~robust] != y.numpy()[clean & ~robust], True)


def overshooting_classifier():
    """Correct at x = 0.5 and 0.78, wrong in a narrow band around 0.65.

    logits = [0, 5 - 2000 (x - 0.65)^2]: the class-1 logit is 4.8 at 0.64 and
    -28.8 at 0.78, and the cross-entropy's gradient points up everywhere below
    0.65, so PGD-2 from x = 0.5 with steps of 0.14 passes through 0.64 (fooled)
    and ends at 0.78 (correct).
    """
    inputs = keras.Input((1,))
    logits = keras.layers.Lambda(lambda x: tf.concat([0.0 * x, 5.0 - 2000.0 * tf.square(x - 0.65)], axis=-1))(inputs)
    return keras.Model(inputs, logits)


def test_pgd_keeps_the_iterate_that_fools_not_only_the_last():
    """Robust means robust at every iterate (the best iterate kept, as APGD and AutoAttack do).

    A PGD that judged only its last iterate would call this digit robust although its first step fooled the model.
    """
    model = overshooting_classifier()
    x, y = np.array([[0.5]], "float32"), np.array([0])
    assert np.argmax(model(x + 0.14), axis=-1)[0] == 1 and np.argmax(model(x + 0.28), axis=-1)[0] == 0
    threat = ThreatModel(epsilon=1.0, steps=2, step_size=0.14 / 0.3, random_start=False, clip_range=(0.0, 1.0))
    attack = Attack(name="pgd2", threat=threat)
    x_adv = adversarial_examples(model, tf.constant(x), tf.constant(y), attack, 0.3)
    np.testing.assert_allclose(x_adv, x + 0.14, atol=1e-6)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(1)
    assert BatchAttacker(model, attack).accuracy(dataset, 0.3) == (1.0, 0.0, 1)


def test_an_example_wrong_clean_keeps_its_own_input():
    """The start counts as an iterate: FGSM leaves x as it is where the model already errs (AutoAttack does too)."""
    wrong = np.array([1])  # the linear model says class 0 for X[0]
    x_adv = adversarial_examples(linear_classifier(), tf.constant(X[:1]), tf.constant(wrong), FGSM, 0.1)
    np.testing.assert_array_equal(x_adv, X[:1])


def exported_and_reloaded(folder):
    """A small CNN with max pooling, exported and reloaded as `nsladv evaluate saved_models/...` reloads it: the
    restored max pooling's gradient has no static batch size, so neither has the input gradient."""
    from nsladv.classifier import SignatureModel
    from nsladv.export import export_model

    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.MaxPooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(h)))
    images = np.random.default_rng(2).random((40, 8, 8, 1)).astype("float32")
    labels = np.argmax(model.predict(images, verbose=0), 1)
    path = export_model(model, folder, "cnn", input_shape=(8, 8, 1), write_models_config=False)
    return SignatureModel(path), tf.data.Dataset.from_tensor_slices((images, labels)).batch(20)


def _one_example_attacks():
    from nsladv.robustness import apgd_ce
    from nsladv.robustness import apgd_t
    from nsladv.robustness import fab_t

    return {
        "pgd": pgd(5, 2),
        "fgsm": FGSM,
        "apgd-ce": apgd_ce(steps=10),
        "apgd-t": apgd_t(steps=10, target_classes=2),
        "fab-t": fab_t(steps=10, target_classes=2),
    }


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd-ce", "apgd-t", "fab-t"])
def test_a_batch_of_one_example_is_attacked(name, tmp_path):
    """The black-box retry attacks the few digits only Square fooled, often one: a fresh attacker's first call then
    traces its loop with a static batch of 1, which a per-example state of unknown length used to broadcast away
    ("enters the loop with shape (1, 28, 28, 1), but has shape (None, 28, 28, 1) after one iteration")."""
    model, dataset = exported_and_reloaded(tmp_path)
    x, y = next(iter(dataset.unbatch().batch(40)))
    one = tf.data.Dataset.from_tensor_slices((x[:1], y[:1])).batch(1)
    attacker = _one_example_attacks()[name].batch_attacker(model, seed=0)
    clean, robust, count = attacker.accuracy(one, 0.05)
    assert count == 1 and robust <= clean
    assert attacker.accuracy(dataset, 0.05)[2] == 40  # and then batches of another size
