"""NSL's AdversarialRegularization under tf-keras for time_to_robust.py, one epoch per request.

Run in a subprocess with TF_USE_LEGACY_KERAS=1. It builds the default
pipeline's CNN in tf-keras, starts from the weights in the data file, and on
each `epoch` line trains one epoch, writes the base model's weights and
prints the seconds the epoch took. It prints `ready` first.
"""

import os
import sys

import numpy as np

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "run with TF_USE_LEGACY_KERAS=1"
import tensorflow as tf  # noqa: E402

from benchmarks.common import answer_epochs  # noqa: E402
from nsladv import _nsl  # noqa: E402 - the bridge alone: nsladv's package init loads nothing of Keras 3


def mnist_cnn(k):
    """pipelines/mnist.py's build_model, in tf-keras."""
    inputs = k.Input((28, 28, 1), name="image")
    h = k.layers.Conv2D(32, 3, activation="relu")(inputs)
    h = k.layers.Conv2D(32, 3, activation="relu")(h)
    h = k.layers.MaxPooling2D()(h)
    h = k.layers.Conv2D(64, 3, activation="relu")(h)
    h = k.layers.MaxPooling2D()(h)
    h = k.layers.Flatten()(h)
    h = k.layers.Dense(128, activation="relu")(h)
    return k.Model(inputs, k.layers.Dense(10, name="logits")(h), name="mnist_cnn")


def main(data_path, weights_path, batch_size):
    nsl = _nsl.nsl
    keras = tf.keras
    assert keras.__name__.startswith("tf_keras"), keras.__name__
    saved = np.load(data_path)
    base = mnist_cnn(keras)
    initial = [saved[f"w{i}"] for i in range(len(base.get_weights()))]
    base.set_weights(initial)  # Raises if the architectures differ.
    dataset = (
        tf.data.Dataset.from_tensor_slices({"image": saved["x"], "label": saved["y"]})
        .shuffle(len(saved["y"]), seed=0)
        .batch(batch_size)
        .prefetch(2)
    )
    config = nsl.configs.make_adv_reg_config(
        multiplier=3.0, adv_step_size=0.3, adv_grad_norm="infinity", clip_value_min=0.0, clip_value_max=1.0
    )
    model = nsl.keras.AdversarialRegularization(base, label_keys=["label"], adv_config=config)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    print("ready", flush=True)

    def write_weights():
        partial = weights_path + ".partial.npz"
        np.savez(partial, **{f"w{i}": w for i, w in enumerate(base.get_weights())})
        os.replace(partial, weights_path)

    answer_epochs(lambda: model.fit(dataset, epochs=1, verbose=0), write_weights)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
