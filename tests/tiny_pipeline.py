"""A pipeline small enough for tests: a tiny CNN, FGSM training, one epoch."""

import keras

import nsladv


def build_model(input_shape, num_classes):
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h), name="tiny")


PIPELINE = nsladv.Pipeline(
    name="tiny",
    description="tests only",
    build_model=build_model,
    train_examples=3600,
    threat=nsladv.ThreatModel(epsilon=0.1, clip_range=(0.0, 1.0)),
    epochs=1,
    batch_size=256,
    epsilon_warmup_epochs=1,
    eval_epsilons=(0.1, 0.3),
    eval_attacks=(nsladv.FGSM, nsladv.pgd(steps=5, restarts=1)),
)
