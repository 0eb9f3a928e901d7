"""nsladv.classifier: what nsladv needs of a classifier, checked before any work, and loading one from disk."""

import keras
import numpy as np
import pytest

from nsladv import export
from nsladv.classifier import SignatureModel
from nsladv.classifier import check_classifier
from nsladv.classifier import load_classifier
from nsladv.errors import ModelMismatchError
from nsladv.errors import ModelNotFoundError

SHAPE = (4, 4, 1)


def model(head, input_shape=SHAPE):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, head(keras.layers.Flatten()(inputs)))


@pytest.mark.parametrize(
    "head, from_logits",
    [
        (lambda h: keras.layers.Dense(3)(h), True),
        (lambda h: keras.layers.Dense(3, activation="softmax")(h), False),
        (lambda h: keras.layers.Softmax()(keras.layers.Dense(3)(h)), False),
        (lambda h: keras.ops.softmax(keras.layers.Dense(3)(h)), False),  # no layer says so: the outputs do
    ],
    ids=["logits", "softmax_activation", "softmax_layer", "softmax_op"],
)
def test_logits_and_probabilities_are_told_apart(head, from_logits):
    assert check_classifier(model(head), SHAPE, 3) is from_logits


@pytest.mark.parametrize(
    "built, message",
    [
        (
            lambda: model(lambda h: keras.layers.Dense(3)(h), input_shape=(5, 5, 1)),
            r"expected images of shape \(5, 5, 1\) \(the model's input\)\. Received: images of shape \(4, 4, 1\) "
            r"from the data",
        ),
        (
            lambda: model(lambda h: keras.layers.Dense(2)(h)),
            r"shape \(batch, 3\), as the data has labels 0-2\. Received: output \(batch, 2\)",
        ),
        (
            lambda: model(lambda h: keras.layers.Dense(3, activation="sigmoid")(h)),
            r"The model ends in a sigmoid.*Received: a sigmoid output layer",
        ),
    ],
    ids=["input", "classes", "sigmoid"],
)
def test_a_model_that_does_not_fit_says_what_was_expected(built, message):
    with pytest.raises(ModelMismatchError, match=message):
        check_classifier(built(), SHAPE, 3)


def test_load_a_keras_file_a_savedmodel_and_a_serving_base_alike(tmp_path):
    keras.utils.set_random_seed(0)
    original = model(lambda h: keras.layers.Dense(3)(h))
    original.save(tmp_path / "m.keras")
    export.export_model(original, tmp_path / "saved_models", "m", input_shape=SHAPE)
    x = np.random.default_rng(0).random((5, *SHAPE), dtype=np.float32)
    expected = original.predict(x, verbose=0)
    from_file = load_classifier(tmp_path / "m.keras")
    from_base = load_classifier(tmp_path / "saved_models" / "m")
    from_version = load_classifier(tmp_path / "saved_models" / "m" / "1")
    assert isinstance(from_base, SignatureModel) and from_base.path.name == "1"
    for loaded in (from_file, from_base, from_version):
        np.testing.assert_allclose(np.asarray(loaded(x, training=False)), expected, atol=1e-5)
    assert from_base.count_params() == original.count_params()


def test_nothing_loadable_says_what_was_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"Expected a saved Keras model \(\.keras\), a SavedModel folder or"):
        load_classifier(tmp_path / "missing.keras")
