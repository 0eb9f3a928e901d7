"""Fashion-MNIST (TFDS download): the MNIST recipe at L-inf 0.1."""

import nsladv
from nsladv.pipelines.mnist import build_model

PIPELINE = nsladv.Pipeline(
    name="fashion_mnist",
    description="TFDS fashion_mnist (needs a network once); PGD-5 training at L-inf 0.1",
    dataset="fashion_mnist",
    build_model=build_model,
    threat=nsladv.ThreatModel(epsilon=0.1, norm="linf", steps=5, step_size=0.035, clip_range=(0.0, 1.0)),
    regularization=nsladv.Regularization(multiplier=3.0, distance="label"),
    epochs=20,
    batch_size=128,
    learning_rate=1e-3,
    shift_augmentation=2,
    epsilon_warmup_epochs=4,
    eval_epsilons=(0.025, 0.05, 0.1),
    large_epsilon=0.5,
)
