"""An independent check of nsladv's robustness figure: IBM ART's attacks on the same model and the same digits.

nsladv's worst case should never be more than 1.5 points above what an
independent AutoAttack-grade evaluation finds. This script attacks the model
nsladv shipped (a `saved_models/<name>` base, a SavedModel folder or a
`.keras` file) with the Adversarial Robustness Toolbox, on the same test digits
the report used (N spread evenly over the standard 10,000), and counts a digit
robust only if it is classified correctly clean and no attack fools it. The
attacks run in this order, each on the digits every attack before it left
robust (the attack list is explicit: ART's `AutoAttack` default is not the
standard mix):

1. PGD-40, 3 random starts, step epsilon / 4 (`ProjectedGradientDescent`);
2. APGD with the cross-entropy loss, 100 iterations (`AutoProjectedGradientDescent`);
3. APGD with the DLR loss, 100 iterations, untargeted;
4. APGD with the DLR loss, targeted at each of the 3 highest-scoring wrong classes in turn;
5. the Square Attack, 1,000 queries (`SquareAttack`).

The model goes through ART's `TensorFlowV2Classifier` (ART's `KerasClassifier`
breaks on Keras 3). Needs the `[eval]` extra: `pip install -e ".[eval]"`.

Usage:
    python -m benchmarks.art_crosscheck saved_models/mnist --report runs/mnist/report.json
    python -m benchmarks.art_crosscheck model.keras --eval-examples 500 --epsilon 0.3

The last line printed is one JSON object: ART's worst case, nsladv's (from the
report, when given), their difference in points and whether it is within 1.5.
"""

import argparse
import json
import pathlib
import time

import numpy as np
import tensorflow as tf

from nsladv import datasets
from nsladv.classifier import load_classifier

AGREEMENT_POINTS = 1.5


def art_classifier(model, input_shape, classes):
    from art.estimators.classification import TensorFlowV2Classifier

    def logits(x, training=False):
        return tf.cast(model(x, training=False), tf.float32)

    return TensorFlowV2Classifier(
        model=logits,
        nb_classes=classes,
        input_shape=input_shape,
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def attacks(classifier, epsilon, batch_size):
    """(name, run(x, y) -> adversarial x) in order; y are integer labels."""
    from art.attacks.evasion import AutoProjectedGradientDescent
    from art.attacks.evasion import ProjectedGradientDescent
    from art.attacks.evasion import SquareAttack

    def one_hot(y):
        return np.eye(classifier.nb_classes, dtype=np.float32)[y]

    pgd = ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=epsilon,
        eps_step=epsilon / 4,
        max_iter=40,
        num_random_init=3,
        batch_size=batch_size,
        verbose=False,
    )
    apgd = {
        loss: AutoProjectedGradientDescent(
            classifier,
            norm=np.inf,
            eps=epsilon,
            eps_step=2 * epsilon,
            max_iter=100,
            nb_random_init=1,
            batch_size=batch_size,
            loss_type=loss,
            verbose=False,
        )
        for loss in ("cross_entropy", "difference_logits_ratio")
    }
    targeted = AutoProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=epsilon,
        eps_step=2 * epsilon,
        max_iter=100,
        targeted=True,
        nb_random_init=1,
        batch_size=batch_size,
        loss_type="difference_logits_ratio",
        verbose=False,
    )
    square = SquareAttack(
        classifier, norm=np.inf, eps=epsilon, max_iter=1000, nb_restarts=1, p_init=0.8, batch_size=batch_size
    )
    square.set_params(verbose=False)

    def targeted_top(x, y, rank):
        scores = classifier.predict(x, batch_size=batch_size)
        scores[np.arange(len(y)), y] = -np.inf
        target = np.argsort(-scores, axis=1)[:, rank]
        return targeted.generate(x, y=one_hot(target))

    return [
        ("pgd40x3", lambda x, y: pgd.generate(x, y=one_hot(y))),
        ("apgd-ce", lambda x, y: apgd["cross_entropy"].generate(x, y=one_hot(y))),
        ("apgd-dlr", lambda x, y: apgd["difference_logits_ratio"].generate(x, y=one_hot(y))),
        *((f"apgd-t{rank + 1}", lambda x, y, rank=rank: targeted_top(x, y, rank)) for rank in range(3)),
        ("square", lambda x, y: square.generate(x, y=one_hot(y))),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved_models/<name> base, a SavedModel folder or a .keras file")
    parser.add_argument("--report", help="an nsladv report.json to compare with (its hardened model's worst case)")
    parser.add_argument("--eval-examples", type=int, help="N test digits spread evenly (default: the report's)")
    parser.add_argument("--epsilon", type=float, default=0.3)
    parser.add_argument("--dataset", default=datasets.DEFAULT_DATASET)
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    report = json.loads(pathlib.Path(args.report).read_text()) if args.report else None
    examples = args.eval_examples
    if examples is None and report is not None:
        examples = report["evaluations"]["hardened"]["test_examples"]
    np.random.seed(args.seed)  # ART draws its random starts and squares from NumPy's global generator.
    splits = datasets.load(args.dataset, data_dir=args.data_dir)
    x, y = datasets.as_arrays(datasets.spread(splits.test, examples))
    y = y.astype(np.int64)
    model = load_classifier(args.model)
    classifier = art_classifier(model, splits.image_shape, splits.num_classes)
    robust = classifier.predict(x, batch_size=args.batch_size).argmax(1) == y
    clean = float(robust.mean())
    print(f"{len(y)} digits of {args.dataset} (test), clean {100 * clean:.1f}%, L-inf epsilon {args.epsilon:g}")
    after = {}
    for name, run in attacks(classifier, args.epsilon, args.batch_size):
        rows = np.flatnonzero(robust)
        start = time.perf_counter()
        if rows.size:
            adversarial = run(x[rows], y[rows]).astype(np.float32)
            if np.abs(adversarial - x[rows]).max() > args.epsilon + 1e-5:
                raise AssertionError(f"{name} left the epsilon ball")
            fooled = classifier.predict(adversarial, batch_size=args.batch_size).argmax(1) != y[rows]
            robust[rows[fooled]] = False
        after[name] = float(robust.mean())
        print(f"  + {name:<9} {100 * after[name]:5.1f}% robust ({time.perf_counter() - start:.0f} s)", flush=True)
    result = {
        "examples": len(y),
        "epsilon": args.epsilon,
        "clean_accuracy": clean,
        "art_after_each_attack": after,
        "art_worst_case": float(robust.mean()),
    }
    if report is not None:
        ours = report["evaluations"]["hardened"]["worst_case"][f"{args.epsilon:g}"]
        result["nsladv_worst_case"] = ours
        result["difference_points"] = round(100 * (ours - result["art_worst_case"]), 2)
        result[f"within_{AGREEMENT_POINTS}_points"] = result["difference_points"] <= AGREEMENT_POINTS
    print(json.dumps(result))


if __name__ == "__main__":
    main()
