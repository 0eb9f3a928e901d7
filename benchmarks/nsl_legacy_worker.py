"""NSL's own AdversarialRegularization under tf-keras, driven one epoch at a time.

Run by train_speed.py in a subprocess with TF_USE_LEGACY_KERAS=1. Protocol on
stdin/stdout: it prints `ready` after a warm-up epoch, then answers each line
`epoch` with the seconds one epoch took, and exits on `quit`.
"""

import os
import sys

import numpy as np

assert os.environ.get("TF_USE_LEGACY_KERAS") == "1", "run with TF_USE_LEGACY_KERAS=1"
import tensorflow as tf  # noqa: E402

from benchmarks.common import answer_epochs  # noqa: E402
from benchmarks.common import small_cnn  # noqa: E402
from nsladv import _nsl  # noqa: E402 - the bridge alone: nsladv's package init loads nothing of Keras 3


def main(data_path, batch_size, epsilon, multiplier):
    nsl = _nsl.nsl
    keras = tf.keras
    assert keras.__name__.startswith("tf_keras"), keras.__name__
    arrays = np.load(data_path)
    dataset = (
        tf.data.Dataset.from_tensor_slices({"image": arrays["x"], "label": arrays["y"]})
        .batch(batch_size)
        .cache()
        .prefetch(tf.data.AUTOTUNE)
    )
    config = nsl.configs.make_adv_reg_config(
        multiplier=multiplier,
        adv_step_size=epsilon,
        adv_grad_norm="infinity",
        clip_value_min=0.0,
        clip_value_max=1.0,
    )
    model = nsl.keras.AdversarialRegularization(small_cnn(keras), label_keys=["label"], adv_config=config)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(dataset, epochs=1, verbose=0)
    print("ready", flush=True)
    answer_epochs(lambda: model.fit(dataset, epochs=1, verbose=0))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
