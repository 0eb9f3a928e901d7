"""nsladv.losses: the neighbor-consistency divergences, by hand (NSL computes them; these numbers check how)."""

import numpy as np
import pytest
import tensorflow as tf

from nsladv import losses

CLEAN = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], np.float32)
NEIGHBOR = np.array([[1.0, 1.0, -1.0], [0.0, 1.0, 0.0]], np.float32)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def by_hand(distance, a, b):
    """Per example D(a_i, b_i), as the docstring states it."""
    if distance == "kl":
        p, q = softmax(a), softmax(b)
        return (p * np.log(p / q)).sum(-1)
    if distance == "js":
        p, q = softmax(a), softmax(b)
        m = (p + q) / 2
        return 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    if distance == "l2":
        return ((a - b) ** 2).sum(-1)
    if distance == "cosine":
        return 1 - (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    raise ValueError(distance)


@pytest.mark.parametrize("distance", ["kl", "js", "l2", "cosine"])
def test_divergences_are_the_batch_mean_of_the_stated_formula(distance):
    found = float(losses.divergence(distance, tf.constant(CLEAN), tf.constant(NEIGHBOR), from_logits=True))
    assert found == pytest.approx(by_hand(distance, CLEAN, NEIGHBOR).mean(), rel=1e-5, abs=1e-6)


def test_sample_weights_weigh_each_example_over_the_batch_size():
    weights = np.array([3.0, 0.0], np.float32)
    found = float(losses.divergence("l2", CLEAN, NEIGHBOR, from_logits=True, sample_weight=weights))
    assert found == pytest.approx((weights * by_hand("l2", CLEAN, NEIGHBOR)).sum() / 2)


def test_several_outputs_add_up():
    clean = {"a": CLEAN, "b": 2 * CLEAN}
    neighbor = {"a": NEIGHBOR, "b": 2 * NEIGHBOR}
    found = float(losses.divergence("l2", clean, neighbor, from_logits=True))
    assert found == pytest.approx(5 * by_hand("l2", CLEAN, NEIGHBOR).mean())


def test_the_graph_term_averages_over_the_edges_that_have_weight():
    # Two samples with two neighbor slots each (sample-major); the second slot of sample 1 is empty (weight 0).
    neighbors = np.array([[1, 1, -1], [2, 0, -1], [0, 1, 0], [9, 9, 9]], np.float32)
    weights = np.array([1.0, 0.5, 2.0, 0.0], np.float32)
    found = float(losses.graph_divergence("l2", CLEAN, neighbors, weights, 2, from_logits=True))
    repeated = np.repeat(CLEAN, 2, axis=0)
    expected = (weights * by_hand("l2", repeated, neighbors)).sum() / 3
    assert found == pytest.approx(expected)


def test_an_unknown_distance_is_refused():
    with pytest.raises(
        ValueError,
        match=r"Unknown distance\. Expected one of \['cosine', 'js', 'kl', 'l2'\]\. Received: distance='hamming'",
    ):
        losses.divergence("hamming", CLEAN, NEIGHBOR, from_logits=True)
