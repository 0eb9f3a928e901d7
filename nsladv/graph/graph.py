"""Graphs over samples: built from embeddings by NSL's graph builder, or from edge lists and NSL TSV files."""

import dataclasses
import math
import pathlib
import tempfile

import keras
import numpy as np
import tensorflow as tf

from nsladv import _nsl
from nsladv.settings_checks import integer


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
        integer("num_nodes", num_nodes, numpy=True)
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

    @classmethod
    def read_tsv_over(cls, path, ids):
        """A graph over the examples named by `ids`, from an NSL TSV file that may name others too.

        For a user's edge file over a whole dataset, of which a job trains on
        a part: edges whose ends are not both among `ids` (other splits, or
        ids no example has) are left out and counted, never dropped in silence.

        Args:
            path: the TSV file (`source<TAB>target<TAB>weight` lines).
            ids: the node id of each feature row (an image's path relative to
                its data folder, or its row number).

        Returns:
            `(graph, counts)`: counts has `edges` (read), `kept`, `unknown_ids`
            (distinct ids not among `ids`), `edges_left_out` and up to five
            `unknown_examples`.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No graph file at {path}. Received: path={str(path)!r}")
        nsl_graph = _nsl.read_tsv_graph(path)
        index = {str(node_id): row for row, node_id in enumerate(ids)}
        edges, unknown, total = [], set(), 0
        for source, targets in nsl_graph.items():
            for target, weight in targets.items():
                total += 1
                missing = [str(n) for n in (source, target) if str(n) not in index]
                if missing:
                    unknown.update(missing)
                elif str(source) != str(target):
                    edges.append((index[str(source)], index[str(target)], weight))
        counts = {
            "edges": total,
            "kept": len(edges),
            "unknown_ids": len(unknown),
            "edges_left_out": total - len(edges),
            "unknown_examples": sorted(unknown)[:5],
        }
        return cls.from_edges(edges, num_nodes=len(ids)), counts

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
        integer("max_neighbors", max_neighbors, numpy=True)
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
        raise ValueError(f"`embeddings` must be [num_samples >= 2, dim]. Received: shape {embeddings.shape}")
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
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(row).encode()])),
                            "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=vector)),
                        }
                    )
                )
                writer.write(example.SerializeToString())
        _nsl.build_graph_from_config(
            [str(records)],
            str(tsv),
            similarity_threshold=float(similarity_threshold),
            lsh_splits=lsh_splits,
            lsh_rounds=lsh_rounds,
            random_seed=seed,
        )
        return Graph.from_nsl(_nsl.read_tsv_graph(tsv), [str(i) for i in range(len(embeddings))])


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
