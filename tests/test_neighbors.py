"""Neighbors x -> x': hand-computed steps, the ball, the clip range, structures."""

from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from conftest import tf_function_unknown_batch

from nsladv import NeighborBuilder
from nsladv import ThreatModel
from nsladv import _nsl
from nsladv.neighbors import project_l1
from nsladv.neighbors import random_in_ball

W = np.array([[0.5, -2.0, 1.0, 0.0]], "float32")  # the gradient of a linear loss
X = np.array([[0.2, 0.4, 0.6, 0.8], [0.1, 0.9, 0.5, 0.3]], "float32")


def linear_loss(pred):
    return tf.reduce_sum(pred * W)


def build(x, **threat):
    random_start = threat.pop("random_start", False)
    builder = NeighborBuilder(ThreatModel(**threat), random_start=random_start)
    return builder(tf.constant(x) if isinstance(x, np.ndarray) else x, model_fn=lambda v: v, loss_fn=linear_loss)


def test_fgsm_linf_by_hand():
    # sign(w) = [1, -1, 1, 0]: the zero gradient leaves its coordinate alone.
    expected = X + 0.1 * np.array([1, -1, 1, 0], "float32")
    np.testing.assert_allclose(build(X, epsilon=0.1), expected, atol=1e-6)


def test_fgsm_l2_by_hand():
    expected = X + 0.3 * W / np.linalg.norm(W)
    np.testing.assert_allclose(build(X, epsilon=0.3, norm="l2"), expected, atol=1e-6)


def test_fgsm_l1_by_hand():
    # The steepest L1 step moves the largest-gradient coordinate only.
    expected = X + np.array([0, -0.3, 0, 0], "float32")
    np.testing.assert_allclose(build(X, epsilon=0.3, norm="l1"), expected, atol=1e-6)


def test_clip_range_by_hand():
    expected = np.clip(X + 0.25 * np.array([1, -1, 1, 0], "float32"), 0, 1)
    np.testing.assert_allclose(build(X, epsilon=0.25, clip_range=(0, 1)), expected, atol=1e-6)


def test_pgd_on_a_linear_loss_goes_to_the_corner_of_the_ball():
    # Steps of 0.04 toward sign(w), projected to |delta| <= 0.1: 3 steps reach the corner.
    np.testing.assert_allclose(
        build(X, epsilon=0.1, steps=3, step_size=0.04),
        X + 0.1 * np.array([1, -1, 1, 0], "float32"),
        atol=1e-6,
    )


def _norm(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return {"linf": np.abs(flat).max(1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(1)}[norm]


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_ball_and_clip_range_in_graph_mode(norm, random_start):
    rng = np.random.default_rng(3)
    x = rng.random((5, 4, 3)).astype("float32")
    weights = tf.constant(rng.normal(size=(12, 2)).astype("float32"))
    epsilon = {"linf": 0.1, "l2": 0.5, "l1": 1.0}[norm]
    builder = NeighborBuilder(
        ThreatModel(epsilon=epsilon, norm=norm, steps=5, step_size=epsilon / 2, clip_range=(0, 1)),
        random_start=random_start,
    )

    def model_fn(v):
        return tf.reshape(v, [-1, 12]) @ weights

    def attack(v):
        return builder(v, model_fn=model_fn, loss_fn=lambda p: tf.reduce_sum(tf.square(p)))

    x_adv = tf_function_unknown_batch(attack, x).numpy()
    assert np.all(_norm(x_adv - x, norm) <= epsilon * (1 + 1e-5))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(_norm(x_adv - x, norm) > 0)  # it did attack
    # The loss went up for every example.
    before = np.square(x.reshape(5, 12) @ weights.numpy()).sum(1)
    after = np.square(x_adv.reshape(5, 12) @ weights.numpy()).sum(1)
    assert np.all(after > before)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_in_ball_unknown_batch(norm):
    x = np.zeros((64, 3, 2), "float32")
    sample = tf_function_unknown_batch(lambda v: random_in_ball({"v": v}, 0.5, norm)["v"], x).numpy()
    norms = _norm(sample, norm)
    assert np.all(norms <= 0.5 + 1e-6) and norms.mean() > 0.2
    assert len({tuple(np.round(s.ravel(), 6)) for s in sample}) == 64


def test_l1_projection_by_hand():
    # |3| + |1| = 4 > 2: theta = 1 brings [3, -1] to [2, 0].
    projected = project_l1({"a": tf.constant([[3.0, -1.0], [0.5, 0.5]])}, 2.0)["a"].numpy()
    np.testing.assert_allclose(projected, [[2.0, 0.0], [0.5, 0.5]], atol=1e-6)
    joint = project_l1({"a": tf.constant([[3.0]]), "b": tf.constant([[-1.0, 0.0]])}, 2.0)
    np.testing.assert_allclose(joint["a"], [[2.0]], atol=1e-6)
    np.testing.assert_allclose(joint["b"], [[0.0, 0.0]], atol=1e-6)


def test_nsl_takes_every_step():
    spy = mock.Mock(wraps=_nsl.nsl.lib.gen_adv_neighbor)
    with mock.patch.object(_nsl.nsl.lib, "gen_adv_neighbor", spy):
        build(X, epsilon=0.1, steps=4, step_size=0.04)
    assert spy.call_count == 4  # eagerly: one call a step
    with mock.patch.object(_nsl.nsl.lib, "gen_adv_neighbor", spy):
        tf_function_unknown_batch(lambda v: build(v, epsilon=0.1, steps=4), X)
    assert spy.call_count == 5  # traced: the while-loop body once


def test_a_different_nsl_step_changes_the_neighbor():
    def shifted(features, loss, config, **kwargs):
        return {k: v + 0.01 for k, v in features.items()}, None

    with mock.patch.object(_nsl.nsl.lib, "gen_adv_neighbor", shifted):
        x_adv = build(X, epsilon=0.1)
    # NSL works in the scaled space z = x / epsilon: +0.01 there is +0.001 here.
    np.testing.assert_allclose(x_adv, X + 0.001, atol=1e-6)


def test_matches_nsl_own_fgsm():
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = linear_loss(tf.sin(x))
    config = _nsl.nsl.configs.AdvNeighborConfig(
        adv_step_size=0.1, adv_grad_norm="infinity", clip_value_min=0.0, clip_value_max=1.0
    )
    expected, _ = _nsl.nsl.lib.gen_adv_neighbor(x, loss, config, gradient_tape=tape)
    builder = NeighborBuilder(ThreatModel(epsilon=0.1, clip_range=(0, 1)), random_start=False)
    ours = builder(x, model_fn=tf.sin, loss_fn=linear_loss)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_first_gradient_replaces_the_first_pass():
    calls = []

    def model_fn(v):
        calls.append(1)
        return v

    builder = NeighborBuilder(ThreatModel(epsilon=0.1), random_start=False)
    gradient = {"": tf.constant(np.tile(-W, (2, 1)))}  # opposite to the loss's own
    x_adv = builder(tf.constant(X), model_fn=model_fn, loss_fn=linear_loss, first_gradient=gradient)
    assert not calls
    np.testing.assert_allclose(x_adv, X - 0.1 * np.array([1, -1, 1, 0], "float32"), atol=1e-6)


def test_epsilon_scale_zero_leaves_inputs_unchanged():
    builder = NeighborBuilder(ThreatModel(epsilon=0.1, steps=3), random_start=True)
    x_adv = builder(tf.constant(X), model_fn=lambda v: v, loss_fn=linear_loss, epsilon_scale=tf.constant(0.0))
    np.testing.assert_allclose(x_adv, X, atol=1e-7)


def dict_batch():
    return {
        "a": tf.constant(X[:, :2]),
        "b": tf.constant(X[:, 2:]),
        "ids": tf.constant([[1], [2]], tf.int32),
    }


def dict_loss(pred):
    return (
        tf.reduce_sum(pred["a"] * W[:, :2])
        + tf.reduce_sum(pred["b"] * W[:, 2:])
        + tf.cast(tf.reduce_sum(pred["ids"]), tf.float32)
    )


def test_dict_inputs_skip_non_float_and_honor_masks():
    builder = NeighborBuilder(
        ThreatModel(epsilon=0.1, feature_mask={"a": np.array([1.0, 0.0]), "b": False}), random_start=False
    )
    x_adv = builder(dict_batch(), model_fn=lambda v: v, loss_fn=dict_loss)
    np.testing.assert_allclose(x_adv["a"], X[:, :2] + [0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(x_adv["b"], X[:, 2:])
    assert x_adv["ids"].dtype == tf.int32 and x_adv["ids"].numpy().tolist() == [[1], [2]]


def test_per_feature_epsilon():
    builder = NeighborBuilder(ThreatModel(epsilon={"a": 0.1, "b": 0.02}), random_start=False)
    x_adv = builder(dict_batch(), model_fn=lambda v: v, loss_fn=dict_loss)
    np.testing.assert_allclose(x_adv["a"], X[:, :2] + 0.1 * np.array([1, -1]), atol=1e-6)
    np.testing.assert_allclose(x_adv["b"], X[:, 2:] + 0.02 * np.array([1, 0]), atol=1e-6)


def test_sparse_and_ragged_inputs_are_left_alone():
    batch = {
        "a": tf.constant(X[:, :2]),
        "s": tf.sparse.from_dense(tf.constant([[1.0, 0.0], [0.0, 2.0]])),
        "r": tf.ragged.constant([[1.0], [2.0, 3.0]]),
    }
    builder = NeighborBuilder(ThreatModel(epsilon=0.1), random_start=False)
    x_adv = builder(batch, model_fn=lambda v: v["a"], loss_fn=lambda p: tf.reduce_sum(p * W[:, :2]))
    assert x_adv["s"] is batch["s"] and x_adv["r"] is batch["r"]
    np.testing.assert_allclose(x_adv["a"], X[:, :2] + 0.1 * np.array([1, -1]), atol=1e-6)


def test_asking_to_perturb_a_non_float_input_is_an_error():
    builder = NeighborBuilder(ThreatModel(feature_mask={"ids": True}), random_start=False)
    with pytest.raises(
        ValueError, match=r"Cannot perturb input 'ids': it is of dtype int32.*Received: feature_mask entry=True"
    ):
        builder(dict_batch(), model_fn=lambda v: v, loss_fn=dict_loss)
    builder = NeighborBuilder(ThreatModel(epsilon={"a": 0.1, "ids": 1.0}), random_start=False)
    with pytest.raises(ValueError, match=r"Cannot perturb input 'ids'"):
        builder(dict_batch(), model_fn=lambda v: v, loss_fn=dict_loss)
    ragged = {"r": tf.ragged.constant([[1.0], [2.0, 3.0]])}
    builder = NeighborBuilder(ThreatModel(feature_mask={"r": True}), random_start=False)
    with pytest.raises(ValueError, match=r"Cannot perturb input 'r': it is a tf.RaggedTensor"):
        builder.select(ragged)


@pytest.mark.parametrize(
    "mask, inputs, message",
    [
        (
            {"c": True},
            "dict",
            r"`feature_mask` names features the inputs do not have: \['c'\]. The inputs have \['a', 'b', 'ids'\]",
        ),
        ({"a": True}, "tensor", r"`feature_mask` is a mapping of feature names, so the model inputs must be a dict"),
        (
            [True, False, True],
            "list",
            r"`feature_mask` must have the structure of the model inputs.*3 entries for inputs with 2 entries",
        ),
        ([True, False], "tensor", r"`feature_mask` must have the structure of the model inputs"),
    ],
)
def test_mask_structure_must_match_inputs(mask, inputs, message):
    x = {"dict": dict_batch(), "tensor": tf.constant(X), "list": [tf.constant(X), tf.constant(X)]}[inputs]
    builder = NeighborBuilder(ThreatModel(feature_mask=mask), random_start=False)
    with pytest.raises(ValueError, match=message):
        builder.select(x)


def test_float16_inputs_keep_their_dtype_and_stay_finite():
    x = tf.constant(X, tf.float16)
    builder = NeighborBuilder(ThreatModel(epsilon=0.1, steps=3, clip_range=(0, 1)), random_start=True)
    x_adv = builder(x, model_fn=lambda v: tf.cast(v, tf.float32) * 1e4, loss_fn=lambda p: tf.reduce_sum(tf.exp(p)))
    assert x_adv.dtype == tf.float16
    assert np.all(np.isfinite(x_adv.numpy()))


# Issue 11, item 1: an array mask holds through the random start and the projection.
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_array_mask_freezes_its_zeros_from_a_random_start(norm):
    x = np.full((64, 4), 0.5, "float32")
    builder = NeighborBuilder(
        ThreatModel(epsilon=0.1, norm=norm, steps=3, random_start=True, feature_mask=np.array([1, 1, 0, 0])),
        random_start=True,
    )
    x_adv = tf_function_unknown_batch(
        lambda v: builder(v, model_fn=lambda u: u, loss_fn=lambda p: tf.reduce_sum(p * [[1.0, -1.0, 3.0, -3.0]])),
        x,
    ).numpy()
    np.testing.assert_array_equal(x_adv[:, 2:], x[:, 2:])
    assert np.abs(x_adv[:, :2] - x[:, :2]).max() > 0.01  # the unmasked features do move


# Issue 11, item 4: L1 steps choose among the coordinates that can move.
SATURATED = np.array([[1.0, 0.5, 0.5, 0.5]], "float32")  # the largest-gradient input sits at the clip bound
L1_GRADIENT = np.array([[3.0, 2.0, -1.0, 0.5]], "float32")


@pytest.mark.parametrize("steps", [1, 10])
def test_l1_moves_when_the_largest_gradient_sits_at_the_clip_bound(steps):
    builder = NeighborBuilder(ThreatModel(epsilon=0.5, norm="l1", steps=steps, clip_range=(0, 1)), random_start=False)
    x_adv = builder(
        tf.constant(SATURATED), model_fn=lambda v: v, loss_fn=lambda p: tf.reduce_sum(p * L1_GRADIENT)
    ).numpy()
    assert x_adv[0, 0] == 1.0
    if steps == 1:  # The steepest feasible step: all of epsilon on the second coordinate.
        np.testing.assert_allclose(x_adv, [[1.0, 1.0, 0.5, 0.5]], atol=1e-6)
    # The loss rises by (nearly) the whole budget times the best feasible gradient.
    gain = float(np.sum((x_adv - SATURATED) * L1_GRADIENT))
    assert gain >= 0.95 * 0.5 * 2.0
    assert np.abs(x_adv - SATURATED).sum() <= 0.5 + 1e-5


def test_l1_steps_toward_the_bound_from_below_are_kept():
    # A coordinate at the lower bound with a positive gradient can still move.
    x = np.array([[0.0, 0.5]], "float32")
    builder = NeighborBuilder(ThreatModel(epsilon=0.2, norm="l1", clip_range=(0, 1)), random_start=False)
    x_adv = builder(tf.constant(x), model_fn=lambda v: v, loss_fn=lambda p: tf.reduce_sum(p * [[2.0, 1.0]]))
    np.testing.assert_allclose(x_adv, [[0.2, 0.5]], atol=1e-6)


# Issue 11, item 3: float16 gradients of confident predictions do not underflow.
def test_float16_attack_perturbs_confident_examples():
    import keras

    keras.config.set_dtype_policy("mixed_float16")
    kernel = np.array([[7.0, 0.0, 0.0]] * 4, "float32")  # logit 0 is 7 * sum(x), 14 to 16.8 here
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant(kernel))]
    )
    keras.config.set_dtype_policy("float32")
    x = np.random.default_rng(0).uniform(0.5, 0.6, (200, 4)).astype("float32")
    y = np.zeros(200, "int64")
    # The batch mean, as the training neighbors' loss: each gradient is 1e-7 / 200 or less, 0 in float16.
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    builder = NeighborBuilder(ThreatModel(epsilon=0.1, clip_range=(0, 1)), random_start=False)
    x_adv = builder(
        tf.constant(x), model_fn=lambda v: model(v, training=False), loss_fn=lambda p: loss(y, tf.cast(p, tf.float32))
    ).numpy()
    # Every coordinate lowers the true class's logit: all move by -epsilon.
    np.testing.assert_allclose(x_adv, x - 0.1, atol=1e-6)
