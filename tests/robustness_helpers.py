"""What the robustness tests share: a linear model whose attacks are computed by hand, and small tasks."""

import keras
import numpy as np
import tensorflow as tf

# Two classes, logits = x @ W: the gradient of the cross-entropy for label 0 is
# p_1 * (W[:, 1] - W[:, 0]), so every attack pushes x along sign(W1 - W0).
W = np.array([[1.0, -1.0], [0.5, 0.25], [-2.0, 1.0]], "float32")
DIRECTION = np.sign(W[:, 1] - W[:, 0])  # [-1, -1, 1]


def linear_classifier():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    model.set_weights([W])
    return model


X = np.array([[0.5, 0.5, 0.2], [0.9, 0.1, 0.0]], "float32")
Y = np.array([0, 0])


def hidden_corner_classifier():
    """Correct and flat at x = 0.5; wrong above 0.59, a region only some random starts land near.

    logits = [0, 100 * relu(x - 0.58) - 1]: the gradient is 0 below 0.58, so
    PGD from x never moves, and from a random start in [0.4, 0.6] it succeeds
    exactly when the start is above 0.58 (probability 0.1 per restart).
    """
    inputs = keras.Input((1,))
    hinge = keras.layers.Dense(1, activation="relu")(inputs)
    logits = keras.layers.Dense(2)(hinge)
    model = keras.Model(inputs, logits)
    model.set_weights(
        [
            np.ones((1, 1), "float32"),
            np.array([-0.58], "float32"),
            np.array([[0.0, 100.0]], "float32"),
            np.array([0.0, -1.0], "float32"),
        ]
    )
    return model


def honest_linear_task(seed, examples, classes=3):
    """A linear 8x8 -> `classes` classifier (no masking), random images labelled with its own classes, two batches."""
    images = np.random.default_rng(seed).random((examples, 8, 8, 1)).astype("float32")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))
    labels = np.argmax(model.predict(images, verbose=0), 1)
    return model, tf.data.Dataset.from_tensor_slices((images, labels)).batch(examples // 2)
