"""A graph pipeline small enough for tests: 5 labels per class, a graph over all digits, one epoch."""

import pathlib

import nsladv

build_model = nsladv.load_pipeline(str(pathlib.Path(__file__).with_name("tiny_pipeline.py"))).build_model

PIPELINE = nsladv.Pipeline(
    name="tiny_graph",
    description="tests only",
    build_model=build_model,
    train_examples=3600,
    labels_per_class=5,
    graph=nsladv.GraphSetup(
        regularization=nsladv.GraphRegularization(multiplier=1.0, distance="kl", max_neighbors=2),
        similarity_threshold=0.9,
        lsh_splits=8,
        lsh_rounds=2,
    ),
    threat=nsladv.ThreatModel(epsilon=0.1, clip_range=(0.0, 1.0)),
    shift_augmentation=1,
    epochs=1,
    batch_size=256,
    eval_epsilons=(0.1,),
    eval_attacks=(nsladv.FGSM,),
)
