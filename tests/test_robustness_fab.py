"""FAB-T: the L-inf projection onto a hyperplane in the box, the boundary of a linear model, settings, the sets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nsladv.robustness import FAB
from nsladv.robustness import attack_set
from nsladv.robustness import evaluate_robustness
from nsladv.robustness import fab_t
from nsladv.robustness.fab import project_linf


def _reach(t, w, needed_sign, budget):
    """How far w . t can move towards the hyperplane with steps of at most `budget`, inside [0, 1]."""
    room = np.where(needed_sign * np.sign(w) > 0, 1 - t, t)
    room = np.where(w != 0, room, 0.0)
    return np.sum(np.abs(w) * np.minimum(budget, room)), room


def test_the_projection_is_the_smallest_step_onto_the_hyperplane_inside_the_box():
    """Against a bisection on the step size, an independent reading of the same problem."""
    rng = np.random.default_rng(0)
    t = rng.random((120, 30)).astype(np.float32)
    w = (rng.normal(size=(120, 30)) * (rng.random((120, 30)) > 0.3)).astype(np.float32)
    # Offsets near and far: the far ones lie beyond what the box can reach.
    b = (np.sum(w * t, 1) + rng.normal(size=120) * np.where(np.arange(120) % 3 == 0, 20.0, 1.5)).astype(np.float32)
    d = project_linf(tf.constant(t), tf.constant(w), tf.constant(b)).numpy()
    z = t + d
    assert z.min() >= -1e-6 and z.max() <= 1 + 1e-6
    assert np.all(d[w == 0] == 0)  # a coordinate the hyperplane does not weigh does not move
    feasible = infeasible = 0
    for i in range(len(t)):
        needed = float(b[i] - w[i] @ t[i])
        total, room = _reach(t[i], w[i], np.sign(needed), 2.0)
        if total < abs(needed):  # out of the box's reach: every coordinate at its bound, towards the hyperplane
            infeasible += 1
            np.testing.assert_allclose(d[i], np.sign(needed) * np.sign(w[i]) * room, atol=1e-6)
            continue
        feasible += 1
        low, high = 0.0, 1.0
        for _ in range(50):
            middle = (low + high) / 2
            low, high = (
                (low, middle) if _reach(t[i], w[i], np.sign(needed), middle)[0] >= abs(needed) else (middle, high)
            )
        assert abs(np.abs(d[i]).max() - high) < 1e-4
        assert abs(w[i] @ z[i] - b[i]) < 1e-3 * max(1.0, abs(needed))
    assert feasible > 30 and infeasible > 10


def test_a_point_on_its_hyperplane_stays():
    t = tf.constant([[0.2, 0.7, 0.5]])
    w = tf.constant([[1.0, -2.0, 0.5]])
    d = project_linf(t, w, tf.reduce_sum(w * t, axis=1)).numpy()
    np.testing.assert_allclose(d, 0.0, atol=1e-7)


def linear_task(examples=120, seed=1):
    """A linear classifier on 8x8 images near mid-grey, where the box does not bind: its exact L-inf distance to the
    nearest other class's boundary is min_j (z_y - z_j) / ||W_y - W_j||_1."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    x = (0.4 + 0.2 * np.random.default_rng(seed).random((examples, 8, 8, 1))).astype(np.float32)
    logits = model(x).numpy()
    y = logits.argmax(1)
    weights = model.layers[-1].get_weights()[0]
    distance = np.full(examples, np.inf)
    for j in range(10):
        gap = logits[np.arange(examples), y] - logits[:, j]
        norm = np.abs(weights[:, y] - weights[:, [j]]).sum(0)
        distance = np.minimum(distance, np.where(y == j, np.inf, gap / np.where(y == j, 1.0, norm)))
    assert distance.max() < 0.35  # every pixel has 0.4 of room each way: the box does not bind
    return model, x, y, distance


def test_fab_t_finds_the_exact_boundary_of_a_linear_model():
    """On a linear model the linearization is exact: FAB-T lands on the nearest boundary (eta overshoots it by 5%,
    and the steps back after each success bring it within a fraction of a percent); it never claims less than the
    true distance, which no attack can beat."""
    model, x, y, distance = linear_task()
    found = FAB(steps=50).batch_attacker(model, seed=0).distances(tf.constant(x), tf.constant(y), 0.1).numpy()
    assert np.all(found >= distance * (1 - 1e-4))
    assert np.all(found <= distance * 1.01)


def test_fab_t_counts_as_fooled_only_within_the_radius():
    model, x, y, distance = linear_task(examples=60, seed=3)
    radius = float(np.median(distance))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(30)
    clean, robust, count = FAB(steps=50).batch_attacker(model, seed=0).accuracy(dataset, radius)
    assert clean == 1.0 and count == 60
    # fooled: those whose boundary lies within the radius (FAB-T's distance is at most 1% over the true one)
    assert np.mean(distance > radius) <= robust <= np.mean(distance * 1.01 > radius)
    assert 0.3 < robust < 0.7


def test_fab_t_targets_only_as_many_classes_as_asked():
    """With one target class FAB-T only looks at the highest-scoring wrong class; an example whose nearest boundary
    is with another class is then farther for it than for FAB-T on every class."""
    model, x, y, distance = linear_task()
    one = FAB(steps=50, target_classes=1).batch_attacker(model, seed=0).distances(tf.constant(x), tf.constant(y), 0.1)
    assert np.all(one.numpy() >= distance * (1 - 1e-4))
    assert np.any(one.numpy() > distance * 1.05)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"steps": 0}, r"`steps` must be an integer >= 1. Received: steps=0"),
        ({"target_classes": True}, r"`target_classes` must be an integer >= 1. Received: target_classes=True"),
        ({"restarts": 1.5}, r"`restarts` must be an integer >= 1. Received: restarts=1.5"),
        ({"alpha_max": 2.0}, r"`alpha_max` must be in \[0.0, 1.0\]. Received: alpha_max=2.0"),
        ({"beta": -0.1}, r"`beta` must be in \[0.0, 1.0\]. Received: beta=-0.1"),
        ({"eta": 0.9}, r"`eta` \(the overshoot\) must be >= 1. Received: eta=0.9"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FAB(**settings)


def test_the_full_set_is_autoattacks_standard_version():
    """AutoAttack's standard version runs APGD-CE, APGD-T, FAB-T and Square, in that order (fra31/auto-attack)."""
    attacks = attack_set("full")
    assert [a.name for a in attacks] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # nothing before, between or after
    # fra31/auto-attack's standard version: n_iter 100 and n_restarts 1 for every attack, 9 target classes,
    # FAB's alpha_max 0.1, eta 1.05, beta 0.9; Square's n_queries 5000, p_init 0.8, resc_schedule False.
    autoattack = {
        "apgd-ce": {"loss": "ce", "steps": 100, "restarts": 1, "random_start": True, "odi_steps": 0},
        "apgd-t": {"loss": "dlr-targeted", "steps": 100, "restarts": 1, "target_classes": 9, "odi_steps": 0},
        "fab-t": {"steps": 100, "restarts": 1, "target_classes": 9, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
        "square": {"queries": 5000, "p_init": 0.8, "rescale_schedule": False},
    }
    for attack in attacks:
        config = attack.get_config()
        assert {k: config[k] for k in autoattack[attack.name]} == autoattack[attack.name], attack.name
    assert fab_t().get_config() == attacks[2].get_config()


def test_fab_t_runs_in_the_cascade_and_is_reported():
    model, x, y, distance = linear_task(examples=40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(20)
    radius = float(np.median(distance))
    result = evaluate_robustness(model, dataset, epsilons=[radius], attacks=[fab_t(steps=30)], black_box_retry=None)
    assert result["attacks"]["fab-t"]["config"]["steps"] == 30
    robust = result["worst_case"][f"{radius:g}"]
    assert np.mean(distance > radius) <= robust <= np.mean(distance * 1.01 > radius)
