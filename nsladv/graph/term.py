"""The graph term of a training step: each sample's natural neighbors, split from the features, and their loss.

Neighbors ride in the features in NSL's packed format (see `nsladv.graph.packed`); the wrapper
(`nsladv.AdversarialModel`) calls these functions with its `GraphRegularization` and base model.
"""

import keras
import tensorflow as tf

from nsladv import _keras
from nsladv import _nsl
from nsladv import losses as losses_lib


def split_neighbors(graph, base_model, x):
    """(sample inputs, graph neighbors or None) of a training batch.

    The neighbors are `(inputs, weights, count)`: the base model's inputs
    for every sample's `count` neighbors, sample-major (NSL's
    `unpack_neighbor_features`), and their edge weights, shape
    `[batch * count]`.
    """
    if graph is None:
        return x, None
    packed = graph.format
    if not packed.carries(x):
        received = sorted(x) if isinstance(x, dict) else f"features of type {type(x).__name__}"
        raise ValueError(
            "Graph regularization needs each sample's neighbors in the features, NSL's packed format: a dict "
            f"with {packed.feature('<j>', '<feature>')} and {packed.weight('<j>')} entries "
            "(nsladv.graph.NeighborTable or nsl.tools.pack_nbrs make them). Pass graph=None to train "
            f"without the graph term. Received: {received}"
        )
    carried = packed.slots(x)
    count = graph.max_neighbors if graph.max_neighbors is not None else carried
    if carried < count or carried == 0:
        raise ValueError(
            f"The graph term uses {count or 'at least 1'} neighbor(s) per sample, with weights "
            f"{packed.weight(0)} ... {packed.weight(max(count, 1) - 1)}. "
            f"Received: weights for {carried} neighbor(s) among features {sorted(x)}"
        )
    try:
        samples, neighbors, weights = packed.unpack(x, count)
    except KeyError as error:
        raise ValueError(
            f"Every sample feature needs its {count} neighbor feature(s) "
            f"{packed.feature('<j>', '<feature>')}. Missing: {error}. Received features: {sorted(x)}"
        ) from None
    neighbors = model_inputs(base_model, neighbors)
    return model_inputs(base_model, samples), (neighbors, tf.reshape(tf.cast(weights, tf.float32), [-1]), count)


def without_neighbors(graph, base_model, x):
    """The base model's inputs from features that may carry neighbors."""
    if graph is None or not graph.format.carries(x):
        return x
    return model_inputs(base_model, graph.format.samples(x))


def model_inputs(base_model, features):
    """A dict of sample features in the structure the base model takes."""
    struct = _keras.input_structure(base_model)
    if isinstance(struct, dict):
        return features
    if len(features) == 1:
        return next(iter(features.values()))
    if isinstance(struct, (list, tuple)):
        names = [t.name for t in struct]
        if set(names) == set(features):
            return [features[n] for n in names]
    return features


def graph_loss(graph, base_model, y, y_pred, graph_neighbors, sample_weight, label_loss, *, from_logits):
    inputs, weights, count = graph_neighbors
    neighbor_pred = base_model(inputs, training=True)
    if graph.distance == "label":
        # The sample's label is what the edge carries, so its weight counts.
        if sample_weight is not None:
            weights *= _nsl.replicate_embeddings(tf.reshape(tf.cast(sample_weight, tf.float32), [-1]), count)
        labels = keras.tree.map_structure(lambda t: _nsl.replicate_embeddings(t, count), y)
        # The compiled loss divides by every edge; NSL's graph reduction
        # by the edges of non-zero weight.
        loss = label_loss(labels, neighbor_pred, weights)
        present = tf.reduce_mean(tf.cast(tf.not_equal(weights, 0.0), tf.float32))
        return tf.math.divide_no_nan(loss, present)
    return losses_lib.graph_divergence(graph.distance, y_pred, neighbor_pred, weights, count, from_logits=from_logits)
