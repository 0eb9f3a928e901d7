"""nsladv._keras, the one door to Keras' private API: each read works on the Keras CI installs, and fails safe.

These tests are what says first that a Keras release moved something nsladv reads: a hook that disappears fails
here by name, not as a strange error deep in a training.
"""

import keras
import numpy as np
import pytest

from nsladv import _keras


def dense(dropout=0.0):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3)(inputs)
    if dropout:
        h = keras.layers.Dropout(dropout)(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


def test_the_private_hooks_nsladv_overrides_exist_in_this_keras():
    assert _keras.has_symbolic_build_hook(), "keras.Model._maybe_symbolic_build is gone: see nsladv/_keras.py"
    assert _keras.backup_save_hook_exists(), "BackupAndRestore._save_model is gone: see nsladv/distribute.py"
    assert _keras._CompileLoss is not None, "keras.src.trainers.compile_utils.CompileLoss is gone"


def test_sublayers_are_found_inside_nested_models():
    inner = dense()
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    found = _keras.sublayers(outer)
    assert inner in found and all(layer in found for layer in inner.layers)


@pytest.mark.parametrize("model, same", [(dense(), True), (dense(dropout=0.5), False)], ids=["plain", "dropout"])
def test_training_mode_is_vouched_for_only_without_dropout_and_the_like(model, same):
    assert _keras.behaves_the_same_in_training(model) is same


def test_the_averaged_variables_are_empty_before_the_first_step_and_pair_with_the_weights_after():
    model = dense()
    optimizer = keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.5)
    model.compile(optimizer=optimizer, loss="mse")
    variables, averages = _keras.averaged_variables(optimizer)
    assert averages == []
    model.fit(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"), epochs=1, verbose=0)
    variables, averages = _keras.averaged_variables(optimizer)
    assert len(variables) == len(averages) == len(model.trainable_weights)
    assert [tuple(v.shape) for v in variables] == [tuple(a.shape) for a in averages]
    assert {id(v) for v in variables} == {id(w) for w in model.trainable_weights}


def test_the_input_structure_of_a_functional_model_and_none_for_a_subclassed_one():
    assert _keras.input_structure(dense()) is not None

    class Net(keras.Model):
        def call(self, x):
            return x

    assert _keras.input_structure(Net()) is None
