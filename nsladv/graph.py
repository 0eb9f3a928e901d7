"""Natural graph neighbors: a similarity graph, and each sample's neighbors in the batch.

NSL's graph regularization joins each sample to similar samples and asks the
model to agree with itself along those edges. This module

- builds the graph from embeddings (raw features, a pretrained encoder's
  outputs or a model's penultimate layer) with NSL's own graph builder,
  `nsl.tools.build_graph_from_config` (cosine similarity, optional LSH), or
  takes a user's weighted edge list or NSL TSV file (`Graph`);
- attaches each sample's top neighbors to a tf.data pipeline in NSL's packed
  format (`NL_nbr_<j>_<feature>`, `NL_nbr_<j>_weight`), the format
  `nsl.tools.pack_nbrs` writes, but looked up per batch from one in-memory
  copy of the features instead of copied into every example
  (`NeighborTable`).

`nsladv.wrap(model, graph=nsladv.GraphRegularization(...))` then adds the graph
term, alone or with the adversarial one.

Example:

```python
graph = nsladv.graph.build_graph(nsladv.graph.embed(images), similarity_threshold=0.9)
table = nsladv.graph.NeighborTable(graph, images, max_neighbors=3, feature_name="image")
train = table.dataset(labeled_rows, labels, batch_size=32, training=True)
model = nsladv.wrap(base, multiplier=0.0, graph=nsladv.GraphRegularization(multiplier=0.1))
```
"""

import dataclasses
import math
import pathlib
import tempfile

import keras
import numpy as np
import tensorflow as tf

from nsladv import _nsl
from nsladv import data as data_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """A weighted directed graph over nodes `0 .. num_nodes - 1`.

    Node `i` is row `i` of the features the graph was built from. Edge
    `k` goes from `sources[k]` to `targets[k]` with weight `weights[k] > 0`.
    Build one with `build_graph`, `Graph.from_edges` or `Graph.read_tsv`.
    """

    num_nodes: int
    sources: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_edges(cls, edges, *, num_nodes, undirected=False):
        """A graph from `(source, target, weight)` triples of node indices.

        Args:
            edges: an iterable of `(source, target, weight)`, or an array of
                shape `[num_edges, 3]`; weights must be finite and > 0.
            num_nodes: the number of nodes (rows of the features).
            undirected: also add each edge's reverse (NSL's
                `add_undirected_edges`); an existing reverse edge keeps its weight.

        Raises:
            ValueError: for a malformed edge, an out-of-range node, a
                self-loop, a weight that is not finite and positive, or an
                edge given twice.
        """
        if not isinstance(num_nodes, (int, np.integer)) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise ValueError(f"`num_nodes` must be an integer >= 1. Received: num_nodes={num_nodes!r}")
        rows = [tuple(e) for e in (edges.tolist() if isinstance(edges, np.ndarray) else edges)]
        bad = next((e for e in rows if len(e) != 3), None)
        if bad is not None:
            raise ValueError(f"Each edge must be (source, target, weight). Received: edge {bad!r}")
        sources = np.array([e[0] for e in rows], dtype=np.float64)
        targets = np.array([e[1] for e in rows], dtype=np.float64)
        weights = np.array([e[2] for e in rows], dtype=np.float64)
        for name, nodes in (("source", sources), ("target", targets)):
            wrong = np.flatnonzero((nodes != np.round(nodes)) | (nodes < 0) | (nodes >= num_nodes))
            if wrong.size:
                raise ValueError(
                    f"Edge {name}s must be node indices in [0, {num_nodes}). "
                    f"Received: edge {rows[wrong[0]]!r} ({wrong.size} such edge(s))"
                )
        wrong = np.flatnonzero(~np.isfinite(weights) | (weights <= 0))
        if wrong.size:
            raise ValueError(
                "Edge weights must be finite and > 0 (a missing edge is simply absent). "
                f"Received: edge {rows[wrong[0]]!r} ({wrong.size} such edge(s))"
            )
        sources, targets = sources.astype(np.int64), targets.astype(np.int64)
        loops = np.flatnonzero(sources == targets)
        if loops.size:
            raise ValueError(f"A node cannot be its own neighbor. Received: edge {rows[loops[0]]!r}")
        keys = sources * num_nodes + targets
        unique, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            twice = unique[counts > 1][0]
            raise ValueError(
                f"Edge ({twice // num_nodes}, {twice % num_nodes}) is given {counts.max()} times; give each "
                "directed edge once."
            )
        if undirected:
            reverse = targets * num_nodes + sources
            new = ~np.isin(reverse, keys)
            sources, targets = np.concatenate([sources, targets[new]]), np.concatenate([targets, sources[new]])
            weights = np.concatenate([weights, weights[new]])
        return cls(int(num_nodes), sources, targets, weights.astype(np.float32))

    @classmethod
    def from_nsl(cls, nsl_graph, ids):
        """A graph from NSL's `{source id: {target id: weight}}` (`read_tsv_graph`).

        Args:
            nsl_graph: the dict NSL's graph tools use.
            ids: the node id of each feature row (strings, as in the TSV);
                edges to ids not listed are an error.
        """
        index = {str(node_id): row for row, node_id in enumerate(ids)}
        if len(index) != len(ids):
            raise ValueError(f"Node ids must be unique. Received: {len(ids)} ids, {len(index)} distinct")
        edges = []
        for source, targets in nsl_graph.items():
            for target, weight in targets.items():
                unknown = next((n for n in (source, target) if str(n) not in index), None)
                if unknown is not None:
                    raise ValueError(
                        f"The graph has node {unknown!r}, which is not among the {len(ids)} ids given. "
                        f"Received: edge ({source!r}, {target!r}, {weight!r})"
                    )
                edges.append((index[str(source)], index[str(target)], weight))
        return cls.from_edges(edges, num_nodes=len(ids))

    @classmethod
    def read_tsv(cls, path, ids=None):
        """A graph from an NSL TSV file (`source<TAB>target<TAB>weight` lines).

        Args:
            path: the TSV file, e.g. written by `nsl.tools.build_graph`.
            ids: the node id of each feature row; default `"0", "1", ...`
                (the row numbers, as `build_graph` writes them).
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No graph file at {path}. Received: path={str(path)!r}")
        nsl_graph = _nsl.read_tsv_graph(path)
        if ids is None:
            nodes = {int(n) for s, targets in nsl_graph.items() for n in (s, *targets) if str(n).isdigit()}
            ids = [str(i) for i in range(max(nodes, default=-1) + 1)]
        return cls.from_nsl(nsl_graph, ids)

    def write_tsv(self, path, ids=None):
        """Writes NSL's TSV format (node ids default to the row numbers)."""
        ids = [str(i) for i in range(self.num_nodes)] if ids is None else [str(i) for i in ids]
        with open(path, "w") as f:
            for s, t, w in zip(self.sources, self.targets, self.weights):
                f.write(f"{ids[s]}\t{ids[t]}\t{w:f}\n")

    @property
    def num_edges(self):
        return int(self.sources.size)

    def degrees(self):
        """Out-degree of each node."""
        return np.bincount(self.sources, minlength=self.num_nodes)

    def top_neighbors(self, max_neighbors):
        """Each node's `max_neighbors` heaviest out-edges, as NSL's `pack_nbrs` picks them.

        Returns:
            `(indices, weights)`, both `[num_nodes, max_neighbors]`; a node
            with fewer neighbors has its remaining slots pointing at itself
            with weight 0 (a missing neighbor, which the graph term ignores).
            Ties in weight go to the lower node index (NSL's pack_nbrs
            prefers the larger id string).
        """
        if not isinstance(max_neighbors, (int, np.integer)) or isinstance(max_neighbors, bool) or max_neighbors < 1:
            raise ValueError(f"`max_neighbors` must be an integer >= 1. Received: max_neighbors={max_neighbors!r}")
        order = np.lexsort((self.targets, -self.weights, self.sources))
        sources, targets, weights = self.sources[order], self.targets[order], self.weights[order]
        first = np.searchsorted(sources, np.arange(self.num_nodes))
        rank = np.arange(sources.size) - first[sources]
        keep = rank < max_neighbors
        indices = np.repeat(np.arange(self.num_nodes, dtype=np.int64)[:, None], max_neighbors, axis=1)
        table = np.zeros((self.num_nodes, max_neighbors), np.float32)
        indices[sources[keep], rank[keep]] = targets[keep]
        table[sources[keep], rank[keep]] = weights[keep]
        return indices, table


def embed(features, encoder=None, *, batch_size=256):
    """Embeddings of `features` to build a graph from.

    Args:
        features: an array `[num_samples, ...]` (or a dict of arrays, for
            an encoder that takes dicts).
        encoder: `None` for the raw features, flattened; else a Keras model
            (a pretrained encoder, or `penultimate(model)`).
        batch_size: the encoder's batch size.

    Returns:
        A float32 array `[num_samples, dim]`.
    """
    if encoder is None:
        if isinstance(features, dict):
            raise ValueError(
                "Raw-feature embeddings need one array; for dict features pass an encoder. "
                f"Received: features with keys {sorted(features)}"
            )
        features = np.asarray(features, np.float32)
        return features.reshape(features.shape[0], -1)
    outputs = encoder.predict(features, batch_size=batch_size, verbose=0)
    if isinstance(outputs, (list, dict)):
        raise ValueError(f"The encoder must return one tensor. Received: {type(outputs).__name__} of outputs")
    return np.asarray(outputs, np.float32).reshape(len(outputs), -1)


def penultimate(model):
    """An encoder returning the input of `model`'s last layer (its penultimate layer).

    Works for sequential and functional models; for a subclassed model,
    pass an encoder of your own to `embed`.
    """
    if not getattr(model, "inputs", None) or not getattr(model, "layers", None) or len(model.layers) < 2:
        raise ValueError(
            "penultimate() needs a built sequential or functional model with at least two layers. "
            f"Received: {type(model).__name__} {getattr(model, 'name', '')!r}"
        )
    return keras.Model(model.inputs, model.layers[-1].input, name=f"{model.name}_penultimate")


def build_graph(embeddings, *, similarity_threshold=0.8, lsh_splits=0, lsh_rounds=1, seed=None):
    """A similarity graph over the rows of `embeddings`, built by NSL.

    Runs `nsl.tools.build_graph_from_config`: an undirected edge joins two
    rows whose cosine similarity is at least `similarity_threshold`, with that
    similarity as its weight; `lsh_splits > 0` compares only rows that share an
    LSH bucket (in any of `lsh_rounds` rounds) instead of all pairs.

    Args:
        embeddings: a float array `[num_samples, dim]` (see `embed`).
        similarity_threshold: the smallest cosine similarity of an edge, in (-1, 1].
        lsh_splits, lsh_rounds, seed: NSL's LSH settings.

    Returns:
        A `Graph` (both directions of every edge).
    """
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(
            f"`embeddings` must be [num_samples >= 2, dim]. Received: shape {embeddings.shape}"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("`embeddings` must be finite. Received: NaN or infinite values")
    if not (isinstance(similarity_threshold, (int, float)) and -1 < similarity_threshold <= 1):
        raise ValueError(
            f"`similarity_threshold` must be in (-1, 1]. Received: similarity_threshold={similarity_threshold!r}"
        )
    with tempfile.TemporaryDirectory(prefix="nsladv_graph_") as folder:
        records = pathlib.Path(folder) / "embeddings.tfrecord"
        tsv = pathlib.Path(folder) / "graph.tsv"
        with tf.io.TFRecordWriter(str(records)) as writer:
            for row, vector in enumerate(embeddings):
                example = tf.train.Example(features=tf.train.Features(feature={
                    "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(row).encode()])),
                    "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
                }))
                writer.write(example.SerializeToString())
        _nsl.build_graph_from_config(
            [str(records)], str(tsv), similarity_threshold=float(similarity_threshold),
            lsh_splits=lsh_splits, lsh_rounds=lsh_rounds, random_seed=seed,
        )
        return Graph.from_nsl(_nsl.read_tsv_graph(tsv), [str(i) for i in range(len(embeddings))])


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

    def __init__(self, graph, features, *, max_neighbors, feature_name="features", prefix="NL_nbr_",
                 weight_suffix="_weight"):
        if not isinstance(graph, Graph):
            raise TypeError(f"`graph` must be an nsladv.graph.Graph. Received: {type(graph).__name__}")
        features = dict(features) if isinstance(features, dict) else {feature_name: features}
        for name, value in features.items():
            if name.startswith(prefix):
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
                mask = tf.reshape(present, tf.concat([tf.shape(present), tf.ones([found.shape.rank - present.shape.rank], tf.int32)], 0))
                packed[f"{self.prefix}{j}_{name}"] = tf.where(mask, found, tf.zeros_like(found))
            packed[f"{self.prefix}{j}{self.weight_suffix}"] = weights[..., j : j + 1]
        return packed

    def features(self, rows):
        """The samples' own features at `rows` (the array itself for one feature)."""
        rows = tf.cast(rows, tf.int64)
        found = {name: tf.gather(pool, rows) for name, pool in self._pool.items()}
        return next(iter(found.values())) if len(found) == 1 else found

    def dataset(self, rows, labels, *, batch_size, training, seed=None, sample_weights=None, drop_remainder=False,
                neighbors=True, augment=None):
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
                `nsladv.data.random_shift_batch(2)`.
        """
        rows = np.asarray(rows, np.int64)
        if len(rows) != len(labels) or (sample_weights is not None and len(sample_weights) != len(rows)):
            raise ValueError(
                f"`rows`, `labels` (and `sample_weights`) must have the same length. Received: {len(rows)} rows, "
                f"{len(labels)} labels" + ("" if sample_weights is None else f", {len(sample_weights)} weights")
            )
        if rows.size and (rows.min() < 0 or rows.max() >= self.graph.num_nodes):
            raise ValueError(f"`rows` must be graph nodes in [0, {self.graph.num_nodes}). Received: {rows.min()}..{rows.max()}")
        columns = (rows, np.asarray(labels)) + (() if sample_weights is None else (np.asarray(sample_weights, np.float32),))
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        return data_lib.pipeline(
            dataset,
            batch_size=batch_size,
            training=training,
            seed=seed,
            drop_remainder=drop_remainder,
            batch_map=lambda r, *rest: (self._augmented(self.pack(r) if neighbors else self.features(r),
                                                         augment if training else None), *rest),
        )

    def _augmented(self, features, augment):
        if augment is None:
            return features
        if not isinstance(features, dict):
            return augment(features)
        return {k: v if k.startswith(self.prefix) and k.endswith(self.weight_suffix) else augment(v)
                for k, v in features.items()}


def pack_nbrs(labeled_examples_path, unlabeled_examples_path, graph_path, output_path, *, max_neighbors,
              add_undirected_edges=False, id_feature_name="id"):
    """NSL's `nsl.tools.pack_nbrs`: labelled examples with their neighbors merged in, as TFRecords.

    For data that does not fit in memory (`NeighborTable` holds the features
    once in memory): each labelled `tf.train.Example` gets the features of its
    `max_neighbors` heaviest out-edge neighbors as `NL_nbr_<j>_<feature>` and
    their weights as `NL_nbr_<j>_weight`. Read the output with
    `packed_dataset`.

    Args:
        labeled_examples_path: a TFRecord file of labelled `tf.train.Example`s,
            each with a bytes `id_feature_name` feature.
        unlabeled_examples_path: the same for unlabelled examples, or None.
        graph_path: an NSL TSV graph over those ids (`Graph.write_tsv`).
        output_path: the TFRecord file to write.
        max_neighbors: neighbors merged per example.
        add_undirected_edges: treat every edge as bi-directional.
        id_feature_name: the id feature's name.
    """
    for name, path in (("labeled_examples_path", labeled_examples_path), ("graph_path", graph_path),
                       ("unlabeled_examples_path", unlabeled_examples_path)):
        if path is not None and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"No file at {path}. Received: {name}={str(path)!r}")
    _nsl.pack_nbrs(
        labeled_examples_path, unlabeled_examples_path, graph_path, output_path, max_nbrs=max_neighbors,
        add_undirected_edges=add_undirected_edges, id_feature_name=id_feature_name,
    )


def packed_dataset(paths, feature_spec, *, label_key, max_neighbors, batch_size, training, seed=None,
                   prefix="NL_nbr_", weight_suffix="_weight"):
    """A batched tf.data pipeline of `(packed features, label)` from `pack_nbrs` TFRecords.

    Args:
        paths: the TFRecord file(s) `pack_nbrs` wrote.
        feature_spec: `{name: tf.io.FixedLenFeature}` of the sample features
            to keep, including the label.
        label_key: the label's name in `feature_spec`.
        max_neighbors: neighbor slots to parse; an example with fewer gets
            zeros and weight 0 (a missing neighbor).
        batch_size, training, seed: as for `nsladv.data.pipeline`.
    """
    if label_key not in feature_spec:
        raise ValueError(f"`label_key` must be one of the feature_spec's keys {sorted(feature_spec)}. "
                         f"Received: label_key={label_key!r}")
    spec = dict(feature_spec)
    for j in range(max_neighbors):
        for name, feature in feature_spec.items():
            if name == label_key:
                continue
            if not isinstance(feature, tf.io.FixedLenFeature):
                raise ValueError(f"Neighbor features need fixed shapes (tf.io.FixedLenFeature). Received: {name!r}: {feature!r}")
            spec[f"{prefix}{j}_{name}"] = tf.io.FixedLenFeature(
                feature.shape, feature.dtype, default_value=tf.zeros(feature.shape, feature.dtype)
            )
        spec[f"{prefix}{j}{weight_suffix}"] = tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        return features, features.pop(label_key)

    records = tf.data.TFRecordDataset([str(p) for p in ([paths] if isinstance(paths, (str, pathlib.Path)) else paths)])
    return data_lib.pipeline(records, batch_size=batch_size, training=training, seed=seed, batch_map=parse)


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


def neighbor_purity(graph, labels, max_neighbors=None, *, rows=None):
    """Share of edges (or of each node's top neighbors) that join equal labels.

    Args:
        graph: a `Graph`.
        labels: every node's label.
        max_neighbors: count only each node's top neighbors (as
            `NeighborTable` packs them); None counts every edge.
        rows: with `max_neighbors`, only these nodes' neighbors.

    Returns:
        The share in [0, 1], NaN when there is no edge to count.
    """
    labels = np.asarray(labels)
    if max_neighbors is None:
        same, total = labels[graph.sources] == labels[graph.targets], graph.num_edges
        return float(same.sum() / total) if total else math.nan
    indices, weights = graph.top_neighbors(max_neighbors)
    nodes = np.arange(graph.num_nodes) if rows is None else np.asarray(rows)
    real = weights[nodes] > 0
    same = (labels[indices[nodes]] == labels[nodes][:, None]) & real
    return float(same.sum() / real.sum()) if real.any() else math.nan
