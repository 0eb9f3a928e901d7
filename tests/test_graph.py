"""Graph regularization: the graph term, graph building, neighbors in tf.data, the pipeline."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import nsladv
from nsladv import _nsl
from nsladv import graph as graph_lib
from nsladv.configs import GraphRegularization

# A linear model f(x) = x @ K, no bias, K fixed.
KERNEL = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
X = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
# Sample 0: one neighbor (weight 0.5) and a missing one (weight 0, junk features).
# Sample 1: two neighbors (weights 1.0 and 0.25).
NEIGHBORS = np.array([[[0.5, 0.0], [100.0, -100.0]], [[0.0, 0.0], [1.0, 1.0]]], np.float32)
EDGE_WEIGHTS = np.array([[0.5, 0.0], [1.0, 0.25]], np.float32)
Y_REGRESSION = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)


def linear_model():
    inputs = keras.Input((2,), name="x")
    dense = keras.layers.Dense(2, use_bias=False, kernel_initializer=keras.initializers.Constant(KERNEL))
    return keras.Model(inputs, dense(inputs))


def packed(x=X, neighbors=NEIGHBORS, weights=EDGE_WEIGHTS, name="x"):
    features = {name: x}
    for j in range(neighbors.shape[1]):
        features[f"NL_nbr_{j}_{name}"] = neighbors[:, j]
        features[f"NL_nbr_{j}_weight"] = weights[:, j : j + 1]
    return features


def one_step(model, features, y, sample_weight=None, loss="mse", lr=0.1):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)
    history = model.fit(features, y, sample_weight=sample_weight, batch_size=len(y), epochs=1, shuffle=False, verbose=0)
    return {k: v[0] for k, v in history.history.items()}


def hand_l2_graph_term(kernel=KERNEL):
    """sum_ij w_ij |f(x_i) - f(n_ij)|^2 / #{w_ij != 0}, and its gradient in the kernel."""
    total, grad, edges = 0.0, np.zeros_like(kernel), 0
    for i in range(2):
        for j in range(2):
            w = EDGE_WEIGHTS[i, j]
            if w == 0:
                continue
            d = X[i] - NEIGHBORS[i, j]  # f(x) - f(n) = d @ K
            total += w * np.sum((d @ kernel) ** 2)
            grad += w * 2 * np.outer(d, d @ kernel)
            edges += 1
    return total / edges, grad / edges


def test_graph_term_l2_on_a_toy_graph_by_hand():
    loss, grad_graph = hand_l2_graph_term()
    assert loss == pytest.approx((0.5 * 1.25 + 1.0 * 25.0 + 0.25 * 5.0) / 3)  # the numbers written out
    base = linear_model()
    model = nsladv.wrap(base, multiplier=0.0, graph=GraphRegularization(multiplier=0.5, distance="l2"))
    logs = one_step(model, packed(), Y_REGRESSION)
    clean = np.mean((X @ KERNEL - Y_REGRESSION) ** 2)
    assert logs["graph_loss"] == pytest.approx(loss, rel=1e-6)
    assert logs["clean_loss"] == pytest.approx(clean, rel=1e-6)
    assert logs["loss"] == pytest.approx(clean + 0.5 * loss, rel=1e-6)
    grad_clean = 2 * X.T @ (X @ KERNEL - Y_REGRESSION) / Y_REGRESSION.size
    expected = KERNEL - 0.1 * (grad_clean + 0.5 * grad_graph)
    np.testing.assert_allclose(base.get_weights()[0], expected, rtol=1e-5)


def test_missing_neighbors_count_for_nothing():
    junk = NEIGHBORS.copy()
    junk[0, 1] = [-7.0, 3.0]  # another value for the weight-0 neighbor
    results = []
    for neighbors in (NEIGHBORS, junk):
        base = linear_model()
        model = nsladv.wrap(base, multiplier=0.0, graph=GraphRegularization(multiplier=0.5, distance="l2"))
        results.append((one_step(model, packed(neighbors=neighbors), Y_REGRESSION), base.get_weights()[0]))
    assert results[0][0]["graph_loss"] == results[1][0]["graph_loss"]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_batch_without_edges_trains_as_without_the_graph():
    trained = []
    for graph in (GraphRegularization(multiplier=5.0, distance="kl", from_logits=True), None):
        base = linear_model()
        model = nsladv.wrap(base, multiplier=0.0, graph=graph)
        features = packed(weights=np.zeros_like(EDGE_WEIGHTS)) if graph else X
        logs = one_step(
            model, features, np.array([0, 1]), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        trained.append(base.get_weights()[0])
        if graph:
            assert logs["graph_loss"] == 0.0
    np.testing.assert_allclose(trained[0], trained[1], rtol=1e-6)


def test_label_distance_by_hand_weighs_edges_by_the_sample_weight():
    labels = np.array([1, 0])
    sample_weight = np.array([1.0, 0.0], np.float32)  # only sample 0's label propagates
    model = nsladv.wrap(linear_model(), multiplier=0.0, graph=GraphRegularization(multiplier=1.0, distance="label"))
    logs = one_step(
        model,
        packed(),
        labels,
        sample_weight=sample_weight,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logits = NEIGHBORS[0, 0] @ KERNEL  # sample 0's one real neighbor
    ce = -(logits[1] - np.log(np.exp(logits).sum()))
    assert logs["graph_loss"] == pytest.approx(0.5 * ce / 1, rel=1e-5)


def test_kl_distance_matches_numpy_and_ignores_sample_weights():
    labels = np.array([1, 0])

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p = softmax(X @ KERNEL)
    total = 0.0
    for i, j in [(0, 0), (1, 0), (1, 1)]:
        q = softmax(NEIGHBORS[i, j] @ KERNEL)
        total += EDGE_WEIGHTS[i, j] * np.sum(p[i] * np.log(p[i] / q))
    for sample_weight in (None, np.array([1.0, 0.0], np.float32)):
        model = nsladv.wrap(linear_model(), multiplier=0.0, graph=GraphRegularization(multiplier=1.0, distance="kl"))
        logs = one_step(
            model,
            packed(),
            labels,
            sample_weight=sample_weight,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        assert logs["graph_loss"] == pytest.approx(total / 3, rel=1e-5)


def test_nsl_builds_the_graph_term(monkeypatch):
    calls = []
    for name in ("unpack_neighbor_features", "replicate_embeddings", "pairwise_distance_wrapper"):
        original = getattr(_nsl.nsl.lib, name)
        monkeypatch.setattr(_nsl.nsl.lib, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model = nsladv.wrap(linear_model(), multiplier=0.0, graph=GraphRegularization(multiplier=1.0, distance="l2"))
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    model.fit(packed(), Y_REGRESSION, epochs=1, verbose=0)
    assert {"unpack_neighbor_features", "replicate_embeddings", "pairwise_distance_wrapper"} <= set(calls)


@pytest.mark.parametrize("adversarial_distance", ["label", "kl"])
@pytest.mark.parametrize("graph_distance", ["label", "l2"])
def test_the_combined_objective_is_the_sum_of_its_parts(adversarial_distance, graph_distance):
    """One step with both terms moves the weights by the sum of each term's move."""
    rng = np.random.default_rng(0)
    x = rng.random((6, 2)).astype("float32")
    neighbors = rng.random((6, 2, 2)).astype("float32")
    weights = rng.random((6, 2)).astype("float32")
    labels = rng.integers(0, 2, 6)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # The kl distance starts from a random point: same seed, same start.
    settings = dict(epsilon=0.1, distance=adversarial_distance)
    graph = GraphRegularization(multiplier=0.7, distance=graph_distance)
    runs = {}
    for label, multiplier, graph_term in [
        ("plain", 0.0, None),
        ("adversarial", 0.4, None),
        ("graph", 0.0, graph),
        ("both", 0.4, graph),
    ]:
        base = linear_model()
        model = nsladv.wrap(base, multiplier=multiplier, graph=graph_term, **settings)
        keras.utils.set_random_seed(7)
        features = packed(x, neighbors, weights) if graph_term else x
        logs = one_step(model, features, labels, loss=loss)
        runs[label] = (logs, base.get_weights()[0] - KERNEL)
    both, adversarial, graph_only, plain = (runs[k] for k in ("both", "adversarial", "graph", "plain"))
    np.testing.assert_allclose(both[1], adversarial[1] + graph_only[1] - plain[1], atol=1e-6)
    assert both[0]["clean_loss"] == pytest.approx(plain[0]["clean_loss"], rel=1e-6)
    assert both[0]["neighbor_loss"] == pytest.approx(adversarial[0]["neighbor_loss"], rel=1e-5)
    assert both[0]["graph_loss"] == pytest.approx(graph_only[0]["graph_loss"], rel=1e-6)
    assert both[0]["loss"] == pytest.approx(
        both[0]["clean_loss"] + 0.4 * both[0]["neighbor_loss"] + 0.7 * both[0]["graph_loss"], rel=1e-6
    )


def test_graph_training_lowers_the_loss_and_evaluates_clean(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((64, 2)).astype("float32")
    labels = (x[:, 0] > x[:, 1]).astype("int32")
    neighbors = np.clip(x[:, None, :] + rng.normal(0, 0.02, (64, 3, 2)), 0, 1).astype("float32")
    base = linear_model()
    model = nsladv.wrap(
        base,
        epsilon=0.05,
        multiplier=0.3,
        clip_range=(0, 1),
        graph=GraphRegularization(multiplier=0.5, distance="kl", max_neighbors=2),
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    history = model.fit(packed(x, neighbors, np.ones((64, 3), "float32")), labels, batch_size=16, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    plain = model.evaluate(x, labels, verbose=0, return_dict=True)
    with_neighbors = model.evaluate(
        packed(x, neighbors, np.ones((64, 3), "float32")), labels, verbose=0, return_dict=True
    )
    assert plain == with_neighbors and set(plain) == {"loss", "accuracy"}
    np.testing.assert_array_equal(
        model.predict(x, verbose=0), model.predict(packed(x, neighbors, np.ones((64, 3), "float32")), verbose=0)
    )
    restored = nsladv.AdversarialModel.from_config(json.loads(json.dumps(model.get_config())))
    assert restored.graph == model.graph


def test_graph_term_with_dict_inputs_and_a_dataset():
    inputs = {"a": keras.Input((2,), name="a"), "b": keras.Input((1,), name="b")}
    h = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    base = keras.Model(inputs, keras.layers.Dense(2)(h))
    rng = np.random.default_rng(2)
    features = {"a": rng.random((32, 2)).astype("float32"), "b": rng.random((32, 1)).astype("float32")}
    table = graph_lib.NeighborTable(
        graph_lib.Graph.from_edges([(i, (i + 1) % 32, 1.0) for i in range(32)], num_nodes=32), features, max_neighbors=2
    )
    dataset = table.dataset(np.arange(32), np.arange(32) % 2, batch_size=8, training=True, seed=0)
    model = nsladv.wrap(base, epsilon=0.05, graph=GraphRegularization(multiplier=1.0, distance="js"))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logs = model.fit(dataset, epochs=1, shuffle=False, verbose=0).history
    assert np.isfinite(logs["graph_loss"][0]) and logs["graph_loss"][0] > 0


# Errors ---------------------------------------------------------------------


def test_error_when_the_features_carry_no_neighbors():
    model = nsladv.wrap(linear_model(), graph=GraphRegularization())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"NSL's packed format.*NL_nbr_<j>_<feature>.*Received: features of type"):
        model.fit(X, Y_REGRESSION, verbose=0)


def test_error_when_fewer_neighbors_than_asked():
    model = nsladv.wrap(linear_model(), graph=GraphRegularization(max_neighbors=3))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"uses 3 neighbor\(s\).*Received: weights for 2 neighbor\(s\)"):
        model.fit(packed(), Y_REGRESSION, verbose=0)


def test_error_when_a_neighbor_feature_is_missing():
    features = packed()
    del features["NL_nbr_1_x"]
    model = nsladv.wrap(linear_model(), graph=GraphRegularization())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"needs its 2 neighbor feature\(s\).*NL_nbr_1_x"):
        model.fit(features, Y_REGRESSION, verbose=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_neighbors=0), r"`max_neighbors` must be an integer >= 1 or None.*Received: max_neighbors=0"),
        (dict(distance="hamming"), r"Unknown distance.*Received: distance='hamming'"),
        (dict(multiplier=-1.0), r"`multiplier` must be a finite number >= 0.*Received: multiplier=-1.0"),
        (dict(prefix=""), r"`prefix` must be a non-empty string"),
    ],
)
def test_graph_regularization_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GraphRegularization(**kwargs)
    with pytest.raises(TypeError, match="keyword arguments only"):
        GraphRegularization(0.1)


def test_wrap_rejects_a_graph_that_is_not_a_graph_regularization():
    with pytest.raises(TypeError, match=r"`graph` must be a nsladv.GraphRegularization. Received: graph=0.1"):
        nsladv.wrap(linear_model(), graph=0.1)


# Graphs ---------------------------------------------------------------------


def test_build_graph_gives_the_expected_edges():
    # Cosine similarities: a.b = 0.8, a.c = 0.6, b.c = 0.96 (all unit vectors), d is opposite to a.
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]], np.float32) * [[1], [2], [3], [4]]
    graph = graph_lib.build_graph(embeddings, similarity_threshold=0.7)
    edges = {(int(s), int(t)): float(w) for s, t, w in zip(graph.sources, graph.targets, graph.weights)}
    assert set(edges) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert edges[(0, 1)] == pytest.approx(0.8, abs=1e-6) and edges[(1, 2)] == pytest.approx(0.96, abs=1e-6)


def test_build_graph_leaves_numpys_generator_alone():
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    graph_lib.build_graph(np.eye(3, dtype=np.float32) + 0.5, similarity_threshold=0.5, lsh_splits=2, seed=9)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_build_graph_matches_all_pairs_and_calls_nsl(monkeypatch):
    calls = []
    original = _nsl.nsl.tools.build_graph_from_config
    monkeypatch.setattr(_nsl.nsl.tools, "build_graph_from_config", lambda *a, **k: calls.append(a) or original(*a, **k))
    embeddings = np.random.default_rng(3).normal(size=(30, 5)).astype("float32")
    graph = graph_lib.build_graph(embeddings, similarity_threshold=0.5)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    expected = {(i, j) for i in range(30) for j in range(30) if i != j and similarity[i, j] >= 0.5}
    assert calls and set(zip(graph.sources.tolist(), graph.targets.tolist())) == expected
    np.testing.assert_allclose(graph.weights, similarity[graph.sources, graph.targets], atol=1e-5)


def test_top_neighbors_and_the_packed_format():
    graph = graph_lib.Graph.from_edges([(0, 1, 0.5), (0, 2, 0.9), (0, 3, 0.5), (2, 0, 0.9)], num_nodes=4)
    indices, weights = graph.top_neighbors(2)
    np.testing.assert_array_equal(indices, [[2, 1], [1, 1], [0, 2], [3, 3]])  # ties: lower index; missing: itself
    np.testing.assert_allclose(weights, [[0.9, 0.5], [0, 0], [0.9, 0], [0, 0]])
    features = np.arange(4, dtype=np.float32)[:, None] * [[1.0, 10.0]]
    table = graph_lib.NeighborTable(graph, features, max_neighbors=2, feature_name="f")
    batch = table.pack(tf.constant([0, 2]))
    assert sorted(batch) == ["NL_nbr_0_f", "NL_nbr_0_weight", "NL_nbr_1_f", "NL_nbr_1_weight", "f"]
    samples, neighbors, edge_weights = _nsl.unpack_neighbor_features(
        batch, _nsl.graph_neighbor_config(max_neighbors=2, prefix="NL_nbr_", weight_suffix="_weight")
    )
    np.testing.assert_array_equal(neighbors["f"].numpy()[:, 0], [2, 1, 0, 0])  # node 2's missing neighbor: zeros
    np.testing.assert_allclose(edge_weights.numpy().ravel(), [0.9, 0.5, 0.9, 0.0])
    np.testing.assert_array_equal(table.neighbor_counts, [2, 0, 1, 0])


def test_edge_lists_and_tsv_files(tmp_path):
    graph = graph_lib.Graph.from_edges([(0, 1, 0.5), (1, 2, 2.0)], num_nodes=3, undirected=True)
    assert graph.num_edges == 4 and graph.degrees().tolist() == [1, 2, 1]
    path = tmp_path / "graph.tsv"
    graph.write_tsv(path, ids=["a", "b", "c"])
    restored = graph_lib.Graph.read_tsv(path, ids=["a", "b", "c"])
    assert sorted(zip(restored.sources, restored.targets, restored.weights)) == sorted(
        zip(graph.sources, graph.targets, graph.weights)
    )
    with pytest.raises(ValueError, match=r"node 'z', which is not among the 3 ids"):
        graph_lib.Graph.from_nsl({"a": {"z": 1.0}}, ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="No graph file"):
        graph_lib.Graph.read_tsv(tmp_path / "missing.tsv")


@pytest.mark.parametrize(
    "edges, message",
    [
        ([(0, 5, 1.0)], r"targets must be node indices in \[0, 3\). Received: edge \(0, 5, 1.0\)"),
        ([(1, 1, 1.0)], r"cannot be its own neighbor. Received: edge \(1, 1, 1.0\)"),
        ([(0, 1, 0.0)], r"weights must be finite and > 0.*Received: edge \(0, 1, 0.0\)"),
        ([(0, 1, float("nan"))], r"weights must be finite and > 0"),
        ([(0, 1)], r"Each edge must be \(source, target, weight\). Received: edge \(0, 1\)"),
        ([(0, 1, 1.0), (0, 1, 2.0)], r"Edge \(0, 1\) is given 2 times"),
    ],
)
def test_bad_edges(edges, message):
    with pytest.raises(ValueError, match=message):
        graph_lib.Graph.from_edges(edges, num_nodes=3)


def test_neighbor_table_errors():
    graph = graph_lib.Graph.from_edges([(0, 1, 1.0)], num_nodes=2)
    with pytest.raises(ValueError, match=r"one row per graph node \(2\). Received: 'f' with 3 rows"):
        graph_lib.NeighborTable(graph, np.zeros((3, 1)), max_neighbors=1, feature_name="f")
    table = graph_lib.NeighborTable(graph, np.zeros((2, 1), np.float32), max_neighbors=1)
    with pytest.raises(ValueError, match=r"same length. Received: 2 rows, 1 labels"):
        table.dataset([0, 1], [0], batch_size=2, training=False)
    with pytest.raises(ValueError, match=r"graph nodes in \[0, 2\). Received: 0..7"):
        table.dataset([0, 7], [0, 1], batch_size=2, training=False)


def test_semi_supervised_rows():
    rows, known, weights = graph_lib.semi_supervised_rows(100, [3, 7], labelled_share=0.25)
    assert sorted(set(rows.tolist())) == list(range(100))
    assert known.sum() / len(rows) == pytest.approx(0.25, abs=0.02)
    assert weights[~known].max() == 0 and weights.sum() == pytest.approx(len(rows))
    with pytest.raises(ValueError, match=r"`labelled_share` must be in \(0, 1\)"):
        graph_lib.semi_supervised_rows(10, [1], labelled_share=1.0)


def test_few_labels():
    from nsladv import datasets as data

    labels = np.repeat(np.arange(3), 5)
    rows = data.few_labels(labels, 2, seed=0)
    assert np.bincount(labels[rows]).tolist() == [2, 2, 2] and (np.diff(rows) > 0).all()
    with pytest.raises(ValueError, match=r"some classes have fewer examples. Received: \{class: examples\} = \{0: 1\}"):
        data.few_labels(np.array([0, 1, 1]), 2)


def test_embeddings():
    images = np.random.default_rng(0).random((5, 4, 4, 1)).astype("float32")
    assert graph_lib.embed(images).shape == (5, 16)
    inputs = keras.Input((4, 4, 1))
    h = keras.layers.Dense(3, name="hidden")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    encoder = graph_lib.penultimate(model)
    np.testing.assert_allclose(
        graph_lib.embed(images, encoder), model.get_layer("hidden")(images.reshape(5, 16)), rtol=1e-5
    )


def test_nsl_pack_nbrs_output_trains_like_the_neighbor_table(tmp_path):
    """NSL's on-disk packed format and the in-memory table give the same graph term."""
    rng = np.random.default_rng(4)
    x = rng.random((8, 2)).astype("float32")
    labels = np.arange(8) % 2
    graph = graph_lib.Graph.from_edges(
        [(0, 5, 0.9), (0, 6, 0.4), (1, 7, 0.8), (2, 4, 0.7), (2, 5, 0.3), (2, 6, 0.2)], num_nodes=8
    )

    def write(path, rows):
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in rows:
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(
                            feature={
                                "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(i).encode()])),
                                "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i])),
                                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[labels[i]])),
                            }
                        )
                    ).SerializeToString()
                )

    write(tmp_path / "labeled.tfr", range(4))
    write(tmp_path / "unlabeled.tfr", range(4, 8))
    graph.write_tsv(tmp_path / "graph.tsv")
    graph_lib.pack_nbrs(
        tmp_path / "labeled.tfr",
        tmp_path / "unlabeled.tfr",
        tmp_path / "graph.tsv",
        tmp_path / "packed.tfr",
        max_neighbors=2,
    )
    spec = {"x": tf.io.FixedLenFeature([2], tf.float32), "label": tf.io.FixedLenFeature([1], tf.int64)}
    from_disk = graph_lib.packed_dataset(
        tmp_path / "packed.tfr", spec, label_key="label", max_neighbors=2, batch_size=4, training=False
    )
    table = graph_lib.NeighborTable(graph, x, max_neighbors=2, feature_name="x")
    in_memory = table.dataset(np.arange(4), labels[:4, None], batch_size=4, training=False)
    disk_batch, memory_batch = next(iter(from_disk)), next(iter(in_memory))
    assert sorted(disk_batch[0]) == sorted(memory_batch[0])
    for key in memory_batch[0]:
        np.testing.assert_allclose(disk_batch[0][key], memory_batch[0][key], rtol=1e-6, err_msg=key)
    losses = []
    for dataset in (from_disk, in_memory):
        model = nsladv.wrap(linear_model(), multiplier=0.0, graph=GraphRegularization(multiplier=1.0, distance="l2"))
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses.append(model.fit(dataset, epochs=1, shuffle=False, verbose=0).history["graph_loss"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] > 0


def test_graph_term_under_xla_and_mixed_precision():
    rng = np.random.default_rng(1)
    x = rng.random((64, 2)).astype("float32")
    labels = (x[:, 0] > x[:, 1]).astype("int32")
    features = packed(x, rng.random((64, 3, 2)).astype("float32"), np.ones((64, 3), "float32"))
    found = {}
    for policy, jit in [("float32", False), ("float32", True), ("mixed_float16", False)]:
        keras.config.set_dtype_policy(policy)
        model = nsladv.wrap(
            linear_model(), epsilon=0.05, multiplier=0.3, graph=GraphRegularization(multiplier=0.5, distance="kl")
        )
        model.compile(
            optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit
        )
        found[(policy, jit)] = model.fit(features, labels, batch_size=16, epochs=2, shuffle=False, verbose=0).history[
            "graph_loss"
        ][-1]
    reference = found[("float32", False)]
    assert np.isfinite(list(found.values())).all() and reference > 0
    assert found[("float32", True)] == pytest.approx(reference, rel=1e-4)
    assert found[("mixed_float16", False)] == pytest.approx(reference, rel=0.02)


def test_random_shift_batch_shifts_each_image_by_its_own_whole_pixels():
    from nsladv import datasets as data

    images = np.random.default_rng(5).random((16, 6, 5, 1)).astype("float32")
    shifted = data.random_shift_batch(1)(tf.constant(images)).numpy()
    padded = np.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
    offsets = []
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if np.array_equal(shifted[i], padded[i, dy : dy + 6, dx : dx + 5])
        ]
        assert found, i  # an exact whole-pixel shift with zero fill
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # drawn per image


def test_neighbor_table_augments_samples_and_neighbors_when_training_only():
    graph = graph_lib.Graph.from_edges([(0, 1, 0.5), (1, 0, 0.5)], num_nodes=2)
    table = graph_lib.NeighborTable(graph, np.zeros((2, 3), np.float32), max_neighbors=1, feature_name="f")
    plus_one = lambda t: t + 1.0
    trained = next(iter(table.dataset([0, 1], [0, 1], batch_size=2, training=True, augment=plus_one)))[0]
    assert (trained["f"].numpy() == 1).all() and (trained["NL_nbr_0_f"].numpy() == 1).all()
    np.testing.assert_allclose(trained["NL_nbr_0_weight"], [[0.5], [0.5]])
    evaluated = next(iter(table.dataset([0, 1], [0, 1], batch_size=2, training=False, augment=plus_one)))[0]
    assert (evaluated["f"].numpy() == 0).all()


def test_neighbor_purity_counts_equal_labels_along_edges():
    graph = graph_lib.Graph.from_edges([(0, 1, 0.9), (0, 2, 0.5), (1, 0, 0.9), (2, 3, 0.4)], num_nodes=4)
    labels = [0, 0, 1, 1]
    assert graph_lib.neighbor_purity(graph, labels) == 0.75  # 3 of 4 edges join equal labels
    assert graph_lib.neighbor_purity(graph, labels, 1) == 1.0  # top neighbors: 0->1, 1->0, 2->3
    assert graph_lib.neighbor_purity(graph, labels, 2, rows=[0]) == 0.5  # 0->1 yes, 0->2 no
    assert np.isnan(graph_lib.neighbor_purity(graph, labels, 2, rows=[3]))  # node 3 has no edge


def test_prefixed_features_without_a_slot_number_are_ignored():
    features = packed()
    features["NL_nbr_count"] = np.full((2, 1), 2.0, np.float32)
    logs = one_step(
        nsladv.wrap(linear_model(), multiplier=0.0, graph=GraphRegularization(multiplier=0.5, distance="l2")),
        features,
        Y_REGRESSION,
    )
    assert logs["graph_loss"] == pytest.approx(hand_l2_graph_term()[0], rel=1e-6)
