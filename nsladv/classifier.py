"""A classifier nsladv hardens or attacks: what it needs of one (checked on a batch before any work starts), and
loading one from disk (a `.keras` file, or an exported SavedModel's serving signature)."""

import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from nsladv import export as export_lib
from nsladv.errors import ModelMismatchError
from nsladv.errors import ModelNotFoundError


def check_classifier(model, input_shape, num_classes, *, data_name="the data"):
    """Checks that `model` classifies inputs of `input_shape` into `num_classes` classes, one class per input.

    Args:
        model: a Keras model.
        input_shape: one input's shape (without the batch axis).
        num_classes: the number of classes.
        data_name: what the data is called, for the errors.

    Returns:
        `from_logits`: True if the model outputs logits, False if it outputs
        probabilities (a softmax, whether a layer says so or its outputs are
        non-negative and sum to 1).

    Raises:
        ModelMismatchError: the model cannot take such inputs, its output is
            not `(batch, num_classes)`, or it ends in a sigmoid.
    """
    declared = _declared_input_shape(model)
    if declared is not None and (
        len(declared) != len(input_shape) or any(d not in (None, n) for d, n in zip(declared, input_shape))
    ):
        raise ModelMismatchError(
            f"The model's input does not fit the data: expected images of shape {_shape(declared)} (the model's "
            f"input). Received: images of shape {_shape(input_shape)} from {data_name}"
        )
    rng = np.random.default_rng(0)
    batch = np.concatenate([np.zeros((1, *input_shape)), rng.random((7, *input_shape))]).astype("float32")
    try:
        outputs = model(tf.constant(batch), training=False)
    except Exception as error:
        raise ModelMismatchError(
            f"The model cannot take this dataset's images: expected inputs of shape "
            f"(batch, {', '.join(map(str, input_shape))}). Received: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from error
    expected = f"(batch, {num_classes})"
    if not isinstance(outputs, tf.Tensor) or outputs.shape.rank != 2 or outputs.shape[-1] != num_classes:
        shape = _shape(("batch", *outputs.shape[1:])) if isinstance(outputs, tf.Tensor) else type(outputs).__name__
        raise ModelMismatchError(
            f"The model must output one score per class: shape {expected}, as {data_name} has labels "
            f"0-{num_classes - 1}. Received: output {shape}"
        )
    if _ends_in(model, keras.activations.sigmoid):
        raise ModelMismatchError(
            "The model ends in a sigmoid, which scores each class on its own; nsladv's losses and attacks "
            "need one class per image: logits (no activation) or a softmax. "
            "Received: a sigmoid output layer"
        )
    if _ends_in(model, keras.activations.softmax):
        return False
    scores = tf.cast(outputs, tf.float32).numpy()
    return not bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def _ends_in(model, activation):
    last = model.layers[-1] if getattr(model, "layers", None) else None
    if activation is keras.activations.softmax and isinstance(last, keras.layers.Softmax):
        return True
    return getattr(last, "activation", None) is activation


def declared_channels(model):
    """The channel count of the images `model` declares it takes (`(height, width, channels)`), or None."""
    shape = None if model is None else _declared_input_shape(model)
    return shape[-1] if shape is not None and len(shape) == 3 and shape[-1] is not None else None


def _declared_input_shape(model):
    """One input's shape as the model declares it (without the batch axis), or None when it declares none or many."""
    if getattr(model, "declared_input_shape", None) is not None:  # a SavedModel signature's
        return model.declared_input_shape
    inputs = getattr(model, "inputs", None)
    try:
        if not inputs or len(inputs) != 1:
            return None
        return tuple(inputs[0].shape[1:])
    except (AttributeError, TypeError, ValueError):
        return None


def _shape(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


class SignatureModel:
    """A SavedModel's serving signature, called like a Keras classifier (`model(x, training=False)`)."""

    def __init__(self, path, signature=export_lib.SIGNATURE):
        self.path = pathlib.Path(path)
        self._loaded = tf.saved_model.load(str(self.path))
        if signature not in self._loaded.signatures:
            raise ModelNotFoundError(
                f"The SavedModel has no signature {signature!r}. Received: signatures "
                f"{sorted(self._loaded.signatures)} in {self.path}"
            )
        self._function = self._loaded.signatures[signature]
        inputs = self._function.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelNotFoundError(
                f"Expected a signature with one input (the image). Received: inputs {sorted(inputs)} in {self.path}"
            )
        (self._input,) = inputs
        shape = inputs[self._input].shape
        self.declared_input_shape = tuple(shape[1:]) if shape.rank is not None else None
        outputs = self._function.structured_outputs
        self._output = "logits" if "logits" in outputs else next(iter(outputs))
        self.name = self.path.name

    def __call__(self, x, training=False):
        return self._function(**{self._input: tf.cast(x, tf.float32)})[self._output]

    def count_params(self):
        return sum(int(tf.size(v)) for v in self._loaded.variables)

    @property
    def metadata(self):
        path = self.path / "assets.extra" / export_lib.METADATA_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def load_classifier(path):
    """A `.keras` file, a SavedModel folder, or a `saved_models/<name>` base (its newest version).

    Raises:
        ModelNotFoundError: nothing of those at `path`.
    """
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    if path.is_dir() and not (path / "saved_model.pb").is_file() and export_lib.versions(path):
        path = path / str(export_lib.versions(path)[-1])
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SignatureModel(path)
    raise ModelNotFoundError(
        "Expected a saved Keras model (.keras), a SavedModel folder or a TF Serving model base with numeric "
        f"versions. Received: {str(path)!r}" + ("" if path.exists() else " (no such file or folder)")
    )
