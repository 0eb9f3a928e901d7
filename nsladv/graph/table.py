"""Each sample's graph neighbors, gathered per batch from one in-memory copy of the features."""

import math

import numpy as np
import tensorflow as tf

from nsladv.datasets import batching
from nsladv.graph.graph import Graph
from nsladv.graph.packed import DEFAULT_PREFIX
from nsladv.graph.packed import DEFAULT_WEIGHT_SUFFIX
from nsladv.graph.packed import PackedFormat


class NeighborTable:
    """Each sample's neighbors in NSL's packed format, looked up per batch.

    The in-memory equivalent of `nsl.tools.pack_nbrs`: the features of all
    graph nodes are held once; `pack(rows)` gathers a batch of samples and
    their top `max_neighbors` neighbors (by weight) into

        {feature: x, "NL_nbr_<j>_<feature>": neighbor j, "NL_nbr_<j>_weight": [batch, 1]}

    which `AdversarialModel` with a `GraphRegularization` unpacks. Missing
    neighbors (a node with fewer edges) are zeros with weight 0, as parsed
    `pack_nbrs` output has them.

    Args:
        graph: a `Graph` over the rows of `features`.
        features: an array `[num_nodes, ...]` or a dict of them (one per
            model input), labelled or not: every row can be a neighbor.
        max_neighbors: neighbors per sample.
        feature_name: the name of a single-array feature (its base model
            input's name).
        prefix, weight_suffix: NSL's neighbor feature naming.
    """

    def __init__(
        self,
        graph,
        features,
        *,
        max_neighbors,
        feature_name="features",
        prefix=DEFAULT_PREFIX,
        weight_suffix=DEFAULT_WEIGHT_SUFFIX,
    ):
        if not isinstance(graph, Graph):
            raise TypeError(f"`graph` must be an nsladv.graph.Graph. Received: {type(graph).__name__}")
        features = dict(features) if isinstance(features, dict) else {feature_name: features}
        packed_format = PackedFormat(prefix, weight_suffix)
        for name, value in features.items():
            if packed_format.is_neighbor(name):
                raise ValueError(f"Feature names cannot start with the neighbor prefix {prefix!r}. Received: {name!r}")
            if len(value) != graph.num_nodes:
                raise ValueError(
                    f"Every feature needs one row per graph node ({graph.num_nodes}). "
                    f"Received: {name!r} with {len(value)} rows"
                )
        self.graph = graph
        self.max_neighbors = max_neighbors
        self.prefix = prefix
        self.weight_suffix = weight_suffix
        self.format = packed_format
        indices, weights = graph.top_neighbors(max_neighbors)
        self._pool = {name: tf.constant(value) for name, value in features.items()}
        self._indices = tf.constant(indices)
        self._weights = tf.constant(weights)

    @property
    def neighbor_counts(self):
        """How many real (non-zero weight) neighbors each node gets."""
        return np.count_nonzero(self._weights.numpy(), axis=1)

    def pack(self, rows):
        """Packed features of the samples at `rows` (an int tensor `[batch]`)."""
        rows = tf.cast(rows, tf.int64)
        packed = {name: tf.gather(pool, rows) for name, pool in self._pool.items()}
        neighbors = tf.gather(self._indices, rows)
        weights = tf.gather(self._weights, rows)
        for j in range(self.max_neighbors):
            present = weights[..., j] > 0
            for name, pool in self._pool.items():
                found = tf.gather(pool, neighbors[..., j])
                # A missing neighbor is zeros, as in parsed pack_nbrs output.
                mask = tf.reshape(
                    present,
                    tf.concat([tf.shape(present), tf.ones([found.shape.rank - present.shape.rank], tf.int32)], 0),
                )
                packed[self.format.feature(j, name)] = tf.where(mask, found, tf.zeros_like(found))
            packed[self.format.weight(j)] = weights[..., j : j + 1]
        return packed

    def features(self, rows):
        """The samples' own features at `rows` (the array itself for one feature)."""
        rows = tf.cast(rows, tf.int64)
        found = {name: tf.gather(pool, rows) for name, pool in self._pool.items()}
        return next(iter(found.values())) if len(found) == 1 else found

    def dataset(
        self,
        rows,
        labels,
        *,
        batch_size,
        training,
        seed=None,
        sample_weights=None,
        drop_remainder=False,
        neighbors=True,
        augment=None,
    ):
        """A batched tf.data pipeline of `(packed features, label[, weight])`.

        Rows (not features) are shuffled and batched; each batch's features
        and neighbors are gathered in one vectorized step after batching, so
        nothing is copied per neighbor into memory.

        Args:
            rows: the graph nodes to train on (e.g. the labelled ones).
            labels: their labels, same length.
            batch_size: the global batch size.
            training: shuffle every epoch.
            seed: the shuffle seed.
            sample_weights: optional per-row weights.
            drop_remainder: drop the last partial batch.
            neighbors: False gives the same batches (same seed) with the
                samples' own features only, for a model without the graph term.
            augment: a map applied, when training, to every gathered feature
                batch, sample and neighbor alike (not to the weights), e.g.
                `nsladv.datasets.random_shift_batch(2)`.
        """
        rows = np.asarray(rows, np.int64)
        if len(rows) != len(labels) or (sample_weights is not None and len(sample_weights) != len(rows)):
            raise ValueError(
                f"`rows`, `labels` (and `sample_weights`) must have the same length. Received: {len(rows)} rows, "
                f"{len(labels)} labels" + ("" if sample_weights is None else f", {len(sample_weights)} weights")
            )
        if rows.size and (rows.min() < 0 or rows.max() >= self.graph.num_nodes):
            raise ValueError(
                f"`rows` must be graph nodes in [0, {self.graph.num_nodes}). Received: {rows.min()}..{rows.max()}"
            )
        columns = (rows, np.asarray(labels)) + (
            () if sample_weights is None else (np.asarray(sample_weights, np.float32),)
        )
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        return batching.input_pipeline(
            dataset,
            batch_size=batch_size,
            training=training,
            seed=seed,
            drop_remainder=drop_remainder,
            batch_map=lambda r, *rest: (
                self._augmented(self.pack(r) if neighbors else self.features(r), augment if training else None),
                *rest,
            ),
        )

    def _augmented(self, features, augment):
        if augment is None:
            return features
        if not isinstance(features, dict):
            return augment(features)
        return {k: v if self.format.is_weight(k) else augment(v) for k, v in features.items()}


def semi_supervised_rows(num_nodes, labelled, *, labelled_share=0.25):
    """Training rows over every node, for few labels and a graph over all samples.

    The unlabelled nodes train through the graph term only (sample weight 0:
    no supervised or adversarial label loss), so the graph carries the labels
    beyond the labelled nodes' own neighbors. The labelled rows are repeated
    so that they make about `labelled_share` of an epoch, and weighted so that
    the supervised loss of a batch is, on average, the mean over its labelled
    examples.

    Args:
        num_nodes: the number of graph nodes (training examples).
        labelled: the labelled nodes' indices.
        labelled_share: the labelled share of the epoch to aim for, in (0, 1).

    Returns:
        `(rows, labelled_mask, sample_weights)`, one entry per training row.
    """
    labelled = np.unique(np.asarray(labelled, np.int64))
    if not 0 < labelled_share < 1:
        raise ValueError(f"`labelled_share` must be in (0, 1). Received: labelled_share={labelled_share!r}")
    if labelled.size == 0 or labelled[0] < 0 or labelled[-1] >= num_nodes:
        raise ValueError(
            f"`labelled` must hold node indices in [0, {num_nodes}). Received: {labelled.size} indices"
            + (f", {labelled[0]}..{labelled[-1]}" if labelled.size else "")
        )
    unlabelled = np.setdiff1d(np.arange(num_nodes), labelled)
    repeats = max(1, math.ceil(labelled_share * unlabelled.size / ((1 - labelled_share) * labelled.size)))
    rows = np.concatenate([unlabelled, np.tile(labelled, repeats)])
    mask = np.isin(rows, labelled)
    weights = mask.astype(np.float32) * (rows.size / mask.sum())
    return rows, mask, weights
