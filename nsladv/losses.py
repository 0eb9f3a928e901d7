"""Neighbor-consistency losses between clean and neighbor predictions.

The `label` distance is the user's compiled Keras loss applied to the
neighbor's predictions (the wrapper owns that path); the divergences here
compare f(x) with f(x') through NSL's `pairwise_distance_wrapper`.
"""

import keras
import tensorflow as tf

from nsladv import _nsl


def scale_for_distribution(loss):
    """Divides a batch-mean loss by the replicas in sync.

    Keras loss objects do this themselves inside a replica context; NSL's
    distances do not, and gradients are summed across replicas.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def unscale_for_distribution(loss):
    """Undoes `scale_for_distribution`, for logging (as Keras does)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss * replicas if replicas > 1 else loss


def divergence(distance, clean, neighbor, *, from_logits, sample_weight=None):
    """Mean over the batch of D(f(x), f(x')), summed over outputs.

    Args:
        distance: `"kl"`, `"js"`, `"l2"` or `"cosine"`.
        clean: the clean predictions f(x) (a tensor or a structure of them).
        neighbor: the neighbor predictions f(x'), same structure.
        from_logits: whether predictions are logits (softmax is applied
            before `kl` and `js`).
        sample_weight: optional per-example weights, shape `[batch]`.

    Returns:
        A float32 scalar: sum over outputs of
        `sum_i w_i * D(clean_i, neighbor_i) / batch`, where D sums over the
        last axis (KL(p||q) = sum_c p_c log(p_c / q_c); L2 = sum_c (a_c - b_c)^2;
        cosine = 1 - a.b / (|a| |b|)).
    """
    config = _nsl.distance_config(distance, from_logits=from_logits)
    keras.tree.assert_same_structure(clean, neighbor)
    total = []
    for c, n in zip(keras.tree.flatten(clean), keras.tree.flatten(neighbor)):
        c = tf.cast(c, tf.float32)
        n = tf.cast(n, tf.float32)
        if sample_weight is None:
            weights = 1.0
        else:
            weights = tf.reshape(tf.cast(sample_weight, tf.float32), [-1] + [1] * (c.shape.rank - 1))
        total.append(_nsl.pairwise_distance(c, n, weights, config))
    return scale_for_distribution(tf.add_n(total))


def graph_divergence(distance, samples, neighbors, weights, count, *, from_logits):
    """NSL's graph term: edge-weighted D(f(x_i), f(n_ij)), summed over outputs.

    Args:
        distance: `"kl"`, `"js"`, `"l2"` or `"cosine"`.
        samples: the samples' predictions f(x), `[batch, ...]` (or a structure).
        neighbors: the neighbors' predictions, `[batch * count, ...]`,
            sample-major (the neighbors of sample 0 first).
        weights: edge weights (times sample weights), `[batch * count]`.
        count: neighbors per sample.
        from_logits: whether predictions are logits.

    Returns:
        A float32 scalar: per output, `sum_ij w_ij D(f(x_i), f(n_ij)) /
        #{w_ij != 0}` (0 when no edge has weight), computed by NSL's
        `pairwise_distance_wrapper` on `replicate_embeddings(f(x), count)`,
        as NSL's `GraphRegularization` does.
    """
    config = _nsl.graph_distance_config(distance, from_logits=from_logits)
    keras.tree.assert_same_structure(samples, neighbors)
    total = []
    for s, n in zip(keras.tree.flatten(samples), keras.tree.flatten(neighbors)):
        s = _nsl.replicate_embeddings(tf.cast(s, tf.float32), count)
        n = tf.cast(n, tf.float32)
        w = tf.reshape(tf.cast(weights, tf.float32), [-1] + [1] * (s.shape.rank - 1))
        total.append(_nsl.pairwise_distance(s, n, w, config))
    return scale_for_distribution(tf.add_n(total))


def resolve_from_logits(from_logits, loss):
    """from_logits as set, else as every compiled loss says (they must agree)."""
    if from_logits is not None:
        return from_logits
    found = {loss_from_logits(leaf) for leaf in keras.tree.flatten(loss) if leaf is not None}
    if len(found) != 1 or None in found:
        raise ValueError(
            "The kl and js distances need to know whether the model outputs "
            "logits or probabilities, and the compiled loss does not say (or its "
            "outputs disagree). Pass from_logits=True or False to the "
            f"regularization. Received: loss={loss!r}"
        )
    return found.pop()


def loss_from_logits(loss):
    if isinstance(loss, str):
        return False  # Keras' string losses take probabilities.
    found = getattr(loss, "from_logits", None)
    if found is None and hasattr(loss, "get_config"):
        found = loss.get_config().get("from_logits")
    return None if found is None else bool(found)
