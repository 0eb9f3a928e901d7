"""NSL's packed-neighbor format, in one place: each sample's neighbors as extra features.

A batch of samples with graph neighbors is one dict of features:

    {feature: x,
     "NL_nbr_<j>_<feature>": neighbor j's feature,   for j < max_neighbors
     "NL_nbr_<j>_weight": neighbor j's edge weight, shape [batch, 1]}

the format `nsl.tools.pack_nbrs` writes and NSL's `unpack_neighbor_features`
reads. A missing neighbor has weight 0 (and zeros for features). The prefix
and suffix default to NSL's own (`nsl.configs.GraphNeighborConfig`).
`PackedFormat` writes, recognizes and unpacks the names; `NeighborTable`
(in memory), `pack_nbrs` and `packed_dataset` (TFRecords) make the batches;
the wrapper reads them.
"""

import dataclasses
import math
import pathlib
import re

import tensorflow as tf

from nsladv import _nsl
from nsladv.datasets import batching

DEFAULT_PREFIX = _nsl.nsl.configs.GraphNeighborConfig().prefix
DEFAULT_WEIGHT_SUFFIX = _nsl.nsl.configs.GraphNeighborConfig().weight_suffix


@dataclasses.dataclass(frozen=True)
class PackedFormat:
    """The names of neighbor features: `{prefix}{j}_{feature}` and `{prefix}{j}{weight_suffix}`."""

    prefix: str = DEFAULT_PREFIX
    weight_suffix: str = DEFAULT_WEIGHT_SUFFIX

    def feature(self, j, name):
        """The name of neighbor `j`'s copy of feature `name`."""
        return f"{self.prefix}{j}_{name}"

    def weight(self, j):
        """The name of neighbor `j`'s edge weight."""
        return f"{self.prefix}{j}{self.weight_suffix}"

    def is_neighbor(self, key):
        return key.startswith(self.prefix)

    def is_weight(self, key):
        return self.is_neighbor(key) and key.endswith(self.weight_suffix)

    def slot(self, key):
        """The neighbor index j of a neighbor feature's name (infinity if it has none, as NSL ignores those)."""
        match = re.match(r"(\d+)", key[len(self.prefix) :])
        return int(match.group(1)) if match else math.inf

    def carries(self, features):
        """Whether `features` (model inputs) carry packed neighbors."""
        return isinstance(features, dict) and any(self.is_neighbor(k) for k in features)

    def slots(self, features):
        """How many neighbor slots, 0 .. n - 1, have a weight feature."""
        found = {self.slot(k) for k in features if self.is_weight(k)}
        carried = 0
        while carried in found:
            carried += 1
        return carried

    def samples(self, features):
        """The samples' own features: every feature that is not a neighbor's."""
        return {k: v for k, v in features.items() if not self.is_neighbor(k)}

    def unpack(self, features, count):
        """NSL's `unpack_neighbor_features` over the first `count` neighbors.

        Returns:
            `(samples, neighbors, weights)`: the sample features, every
            sample's `count` neighbors' features, sample-major
            (`[batch * count, ...]`), and their weights `[batch * count, 1]`.

        Raises:
            KeyError: a sample feature lacks a neighbor copy.
        """
        wanted = {k: v for k, v in features.items() if not self.is_neighbor(k) or self.slot(k) < count}
        for key, value in list(wanted.items()):
            if self.is_weight(key) and value.shape.rank == 1:
                wanted[key] = tf.expand_dims(value, -1)  # [batch] -> [batch, 1], as NSL expects
        config = _nsl.graph_neighbor_config(max_neighbors=count, prefix=self.prefix, weight_suffix=self.weight_suffix)
        return _nsl.unpack_neighbor_features(wanted, config)

    def parse_spec(self, feature_spec, *, label_key, max_neighbors):
        """A `tf.io.parse_example` spec for samples and `max_neighbors` neighbor slots (missing: zeros, weight 0)."""
        spec = dict(feature_spec)
        for j in range(max_neighbors):
            for name, feature in feature_spec.items():
                if name == label_key:
                    continue
                if not isinstance(feature, tf.io.FixedLenFeature):
                    raise ValueError(
                        f"Neighbor features need fixed shapes (tf.io.FixedLenFeature). Received: {name!r}: {feature!r}"
                    )
                spec[self.feature(j, name)] = tf.io.FixedLenFeature(
                    feature.shape, feature.dtype, default_value=tf.zeros(feature.shape, feature.dtype)
                )
            spec[self.weight(j)] = tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])
        return spec


def pack_nbrs(
    labeled_examples_path,
    unlabeled_examples_path,
    graph_path,
    output_path,
    *,
    max_neighbors,
    add_undirected_edges=False,
    id_feature_name="id",
):
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
    for name, path in (
        ("labeled_examples_path", labeled_examples_path),
        ("graph_path", graph_path),
        ("unlabeled_examples_path", unlabeled_examples_path),
    ):
        if path is not None and not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"No file at {path}. Received: {name}={str(path)!r}")
    _nsl.pack_nbrs(
        labeled_examples_path,
        unlabeled_examples_path,
        graph_path,
        output_path,
        max_nbrs=max_neighbors,
        add_undirected_edges=add_undirected_edges,
        id_feature_name=id_feature_name,
    )


def packed_dataset(
    paths,
    feature_spec,
    *,
    label_key,
    max_neighbors,
    batch_size,
    training,
    seed=None,
    prefix=DEFAULT_PREFIX,
    weight_suffix=DEFAULT_WEIGHT_SUFFIX,
):
    """A batched tf.data pipeline of `(packed features, label)` from `pack_nbrs` TFRecords.

    Args:
        paths: the TFRecord file(s) `pack_nbrs` wrote.
        feature_spec: `{name: tf.io.FixedLenFeature}` of the sample features
            to keep, including the label.
        label_key: the label's name in `feature_spec`.
        max_neighbors: neighbor slots to parse; an example with fewer gets
            zeros and weight 0 (a missing neighbor).
        batch_size, training, seed: as for `nsladv.datasets.pipeline`.
    """
    if label_key not in feature_spec:
        raise ValueError(
            f"`label_key` must be one of the feature_spec's keys {sorted(feature_spec)}. "
            f"Received: label_key={label_key!r}"
        )
    spec = PackedFormat(prefix, weight_suffix).parse_spec(
        feature_spec, label_key=label_key, max_neighbors=max_neighbors
    )

    def parse(serialized):
        features = tf.io.parse_example(serialized, spec)
        return features, features.pop(label_key)

    records = tf.data.TFRecordDataset([str(p) for p in ([paths] if isinstance(paths, (str, pathlib.Path)) else paths)])
    return batching.input_pipeline(records, batch_size=batch_size, training=training, seed=seed, batch_map=parse)
