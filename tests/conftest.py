"""Shared fixtures: tiny deterministic data and the model kinds nsladv must wrap."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

FEATURES = 6
CLASSES = 3


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS folder with the offline MNIST prepared (about 15 seconds), shared by the whole session."""
    from nsladv import datasets

    path = tmp_path_factory.mktemp("tfds")
    datasets.load(data_dir=str(path))
    return str(path)


def toy_data(n=192, seed=0):
    """A learnable 3-class problem on [0, 1]^6: the class is the argmax of 3 sums."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, FEATURES)).astype("float32")
    y = np.argmax(x.reshape(n, CLASSES, -1).sum(-1), axis=1).astype("int32")
    return x, y


class SubclassedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(CLASSES)

    def call(self, inputs, training=False):
        return self.out(self.hidden(inputs))


def sequential():
    return keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(CLASSES)]
    )


def functional():
    inputs = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(hidden))


def dict_inputs():
    """Two float features and an integer id feature the attack must leave alone."""
    a = keras.Input((3,), name="a")
    b = keras.Input((3,), name="b")
    ids = keras.Input((1,), name="ids", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(4, 2)(ids))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b, embedded]))
    return keras.Model({"a": a, "b": b, "ids": ids}, keras.layers.Dense(CLASSES)(hidden))


def list_inputs():
    a = keras.Input((3,))
    b = keras.Input((3,))
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    return keras.Model([a, b], keras.layers.Dense(CLASSES)(hidden))


def two_outputs():
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    return keras.Model(
        inputs,
        {
            "cls": keras.layers.Dense(CLASSES, name="cls")(hidden),
            "aux": keras.layers.Dense(CLASSES, name="aux")(hidden),
        },
    )


def as_inputs(kind, x):
    if kind == "dict":
        ids = (np.arange(len(x)) % 4).astype("int32")[:, None]
        return {"a": x[:, :3], "b": x[:, 3:], "ids": ids}
    if kind == "list":
        return [x[:, :3], x[:, 3:]]
    return x


def as_labels(kind, y):
    return {"cls": y, "aux": y} if kind == "two_outputs" else y


MODEL_KINDS = {
    "sequential": sequential,
    "functional": functional,
    "subclassed": lambda: SubclassedNet(),
    "dict": dict_inputs,
    "list": list_inputs,
    "two_outputs": two_outputs,
}

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tf_function_unknown_batch(fn, x):
    """Runs `fn(x)` inside a tf.function whose batch size is unknown."""
    spec = tf.TensorSpec([None] + list(x.shape[1:]), tf.float32)
    return tf.function(fn, input_signature=[spec])(tf.constant(x))
