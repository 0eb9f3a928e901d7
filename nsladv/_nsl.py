"""The NSL bridge: the only module of nsladv that imports Neural Structured Learning.

NSL 1.4.0's package `__init__` imports its `estimator` subpackage, which imports
`tf.estimator`, removed in TensorFlow 2.16. Nothing nsladv uses depends on that
subpackage, so when (and only when) the plain import fails for that reason, a
placeholder module is registered under its name and the import is retried. The
framework-level functions (`nsl.lib`, `nsl.configs`, `nsl.tools`) then load and
work with Keras 3 models.

Everything else in nsladv reaches NSL through the names defined here, so that
tests can observe (or replace) exactly what NSL is asked to do.
"""

import sys
import types

import numpy as np

_ESTIMATOR_MODULE = "neural_structured_learning.estimator"


def _import_nsl():
    try:
        import neural_structured_learning as nsl

        return nsl
    except ImportError as error:
        if "estimator" not in str(error):
            raise
    # Drop the half-imported package before retrying with the placeholder.
    for name in [m for m in sys.modules if m.startswith("neural_structured_learning")]:
        del sys.modules[name]
    placeholder = types.ModuleType(_ESTIMATOR_MODULE)
    placeholder.__doc__ = (
        "Placeholder registered by nsladv: NSL's estimator API needs "
        "tf.estimator, which TensorFlow >= 2.16 no longer has."
    )
    sys.modules[_ESTIMATOR_MODULE] = placeholder
    import neural_structured_learning as nsl

    return nsl


nsl = _import_nsl()
NormType = nsl.configs.NormType
DistanceType = nsl.configs.DistanceType

# nsladv names -> NSL enums.
NORMS = {"linf": NormType.INFINITY, "l2": NormType.L2, "l1": NormType.L1}
DISTANCES = {
    "kl": DistanceType.KL_DIVERGENCE,
    "js": DistanceType.JENSEN_SHANNON_DIVERGENCE,
    "l2": DistanceType.L2,
    "cosine": DistanceType.COSINE,
}


def gen_adv_neighbor(*args, **kwargs):
    """`nsl.lib.gen_adv_neighbor`, looked up at call time (tests may spy on it)."""
    return nsl.lib.gen_adv_neighbor(*args, **kwargs)


def project_to_ball(tensors, radius, norm):
    """`nsl.lib.project_to_ball` for an nsladv norm name (`linf` or `l2`)."""
    return nsl.lib.project_to_ball(tensors, radius, NORMS[norm])


def pairwise_distance(sources, targets, weights, config):
    """`nsl.lib.pairwise_distance_wrapper`."""
    return nsl.lib.pairwise_distance_wrapper(sources, targets, weights=weights, distance_config=config)


def adv_neighbor_config(*, norm, step_size, feature_mask=None, clip_min=None, clip_max=None):
    """One steepest-ascent step as an `nsl.configs.AdvNeighborConfig`.

    nsladv runs the PGD loop itself (it projects around the clean input and
    does the random start, which NSL 1.4.0 cannot do with an unknown batch
    size inside `tf.function`); NSL takes each step.
    """
    return nsl.configs.AdvNeighborConfig(
        feature_mask=feature_mask,
        adv_step_size=step_size,
        adv_grad_norm=NORMS[norm],
        clip_value_min=clip_min,
        clip_value_max=clip_max,
        pgd_iterations=1,
        pgd_epsilon=None,
        random_init=False,
    )


def distance_config(distance, *, from_logits, reduction="weighted_sum_over_batch_size"):
    """An `nsl.configs.DistanceConfig` for a divergence between predictions.

    The distance is summed over the last (class) axis and, by default,
    averaged over the batch, the reduction Keras losses use by default.
    """
    if distance not in DISTANCES:
        raise ValueError(f"Unknown distance. Expected one of {sorted(DISTANCES)}. Received: distance={distance!r}")
    transform = "softmax" if from_logits and distance in ("kl", "js") else "none"
    return nsl.configs.DistanceConfig(
        distance_type=DISTANCES[distance],
        reduction=reduction,
        sum_over_axis=-1,
        transform_fn=transform,
    )


# Graph regularization ---------------------------------------------------------

GRAPH_REDUCTION = "weighted_sum_by_nonzero_weights"


def graph_neighbor_config(*, max_neighbors, prefix, weight_suffix):
    """An `nsl.configs.GraphNeighborConfig`: how neighbor features are named."""
    return nsl.configs.GraphNeighborConfig(prefix=prefix, weight_suffix=weight_suffix, max_neighbors=max_neighbors)


def unpack_neighbor_features(features, neighbor_config):
    """`nsl.lib.unpack_neighbor_features`: sample, neighbor features and weights."""
    return nsl.lib.unpack_neighbor_features(features, neighbor_config)


def replicate_embeddings(embeddings, times):
    """`nsl.lib.replicate_embeddings`: each row repeated `times` times in a row."""
    return nsl.lib.replicate_embeddings(embeddings, times)


def graph_distance_config(distance, *, from_logits):
    """NSL's graph-regularization distance: summed over the class axis and
    divided by the number of edges with a non-zero weight (NSL's default for
    `GraphRegularization`), so that missing neighbors (weight 0) count for
    nothing."""
    return distance_config(distance, from_logits=from_logits, reduction=GRAPH_REDUCTION)


def build_graph_from_config(
    embedding_files,
    output_graph_path,
    *,
    similarity_threshold,
    lsh_splits,
    lsh_rounds,
    random_seed,
    id_feature_name="id",
    embedding_feature_name="embedding",
):
    """`nsl.tools.build_graph_from_config`: a cosine-similarity graph as TSV."""

    config = nsl.configs.GraphBuilderConfig(
        id_feature_name=id_feature_name,
        embedding_feature_name=embedding_feature_name,
        similarity_threshold=similarity_threshold,
        lsh_splits=lsh_splits,
        lsh_rounds=lsh_rounds,
        random_seed=random_seed,
    )
    # NSL seeds NumPy's global generator (np.random.seed(random_seed), fresh
    # entropy for None); the caller's generator state is put back afterwards.
    state = np.random.get_state()
    try:
        nsl.tools.build_graph_from_config(list(embedding_files), output_graph_path, config)
    finally:
        np.random.set_state(state)


def read_tsv_graph(path):
    """NSL's `read_tsv_graph`: {source id: {target id: weight}}.

    NSL 1.4.0's own function opens the file with mode "rU", which Python 3.11
    removed; this reads the lines and lets NSL's `add_edge` combine them (an
    absent weight is 1.0; a repeated edge keeps its largest weight).
    """

    graph = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line:
                nsl.tools.add_edge(graph, line.split("\t"))
    return graph


def pack_nbrs(
    labeled_examples_path,
    unlabeled_examples_path,
    graph_path,
    output_path,
    *,
    max_nbrs,
    add_undirected_edges=False,
    id_feature_name="id",
):
    """`nsl.tools.pack_nbrs`, with the TSV reader above.

    NSL's pack_nbrs reads its graph with `graph_utils.read_tsv_graph`, whose
    mode "rU" Python 3.11 rejects; for the call, that one name points at
    `read_tsv_graph` here (same result), and is restored afterwards.
    """
    from neural_structured_learning.tools import graph_utils

    original = graph_utils.read_tsv_graph
    graph_utils.read_tsv_graph = read_tsv_graph
    try:
        nsl.tools.pack_nbrs(
            str(labeled_examples_path),
            str(unlabeled_examples_path or ""),
            str(graph_path),
            str(output_path),
            add_undirected_edges=add_undirected_edges,
            max_nbrs=max_nbrs,
            id_feature_name=id_feature_name,
        )
    finally:
        graph_utils.read_tsv_graph = original
