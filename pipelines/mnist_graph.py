"""Few labels plus a graph: 10 labelled digits per class, a graph over 3,600 training digits.

NSL's setting for graph regularization: most training images have no label,
but a similarity graph over all of them (built by NSL's graph builder from raw
pixels) joins each image to its most similar ones, and the graph term asks the
model to agree with itself along those edges, in the same step as the
adversarial term. Every image trains: the 100 labelled ones through the label
loss, the adversarial term and the graph term, the unlabelled ones through the
graph term only. The job also trains the same model on the same batches
without the graph term, and the undefended baseline, and reports all three.

What it measured, and what did not help, is in docs/results.md.
"""

import nsladv
from nsladv.pipelines.mnist import build_model

PIPELINE = nsladv.Pipeline(
    name="mnist_graph",
    description="10 labels per class + an NSL similarity graph over 3,600 training digits; FGSM at L-inf 0.1",
    dataset="mnist_offline",
    build_model=build_model,
    # A graph over 3,600 digits spread over the standard training set (NSL's
    # builder over all 54,000 takes minutes); the labelled ones come from them.
    train_examples=3_600,
    labels_per_class=10,
    graph=nsladv.GraphSetup(
        regularization=nsladv.GraphRegularization(multiplier=3.0, distance="kl", max_neighbors=5),
        similarity_threshold=0.8,
        train_on_all=True,
        labelled_share=0.25,
    ),
    threat=nsladv.ThreatModel(epsilon=0.1, norm="linf", steps=1, clip_range=(0.0, 1.0)),
    regularization=nsladv.Regularization(multiplier=1.0, distance="label"),
    epochs=10,
    batch_size=64,
    learning_rate=1e-3,
    epsilon_warmup_epochs=3,
    eval_epsilons=(0.05, 0.1, 0.2),
    eval_attacks=(nsladv.FGSM, nsladv.pgd(20, 1)),
    large_epsilon=0.5,
)
