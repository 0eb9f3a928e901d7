"""Robust accuracy at an epsilon grid: the cascade of attacks, example by example (AutoAttack's way).

The attack sets live in `sets`, `Closest` in `closest`, the black-box retry and the gradient path check in
`retry`, the gradient-masking checks in `checks`.
"""

import functools
import time

import numpy as np

from nsladv.classifier import check_classifier
from nsladv.errors import DataError
from nsladv.radii import parse_radii
from nsladv.robustness.checkpoints import Checkpoints
from nsladv.robustness.checkpoints import Straight
from nsladv.robustness.checkpoints import fingerprint
from nsladv.robustness.checkpoints import model_fingerprint
from nsladv.robustness.checks import sanity_checks
from nsladv.robustness.checks import wilson_interval
from nsladv.robustness.closest import Closest
from nsladv.robustness.inputs import evaluation_arrays
from nsladv.robustness.inputs import output_classes
from nsladv.robustness.result import RobustnessResult
from nsladv.robustness.retry import BLACK_BOX_RETRY
from nsladv.robustness.retry import check_paths
from nsladv.robustness.retry import retry
from nsladv.robustness.retry import retry_attacks
from nsladv.robustness.rows import clean_margins
from nsladv.robustness.rows import gradient_steps
from nsladv.robustness.rows import radius_key
from nsladv.robustness.sets import attack_set


def evaluate_robustness(
    model,
    dataset,
    *,
    epsilons,
    attacks="standard",
    from_logits=None,
    large_epsilon=None,
    near_zero=0.1,
    progress=None,
    step_progress=None,
    seed=0,
    cascade=True,
    black_box_retry=BLACK_BOX_RETRY,
    checkpoint_dir=None,
    block_size=500,
    on_block=None,
):
    """White-box robust accuracy of `model` on `dataset` at each epsilon.

    The attacks run in the given order, black-box ones (Square) last. With
    `cascade` (AutoAttack's way, what makes strong attacks affordable) an
    attack runs only on the examples every attack before it left robust,
    except the reference attacks, which run on every example so that the
    gradient-masking checks have independent figures to compare: the first
    attack, every single-step one (FGSM), and the first multi-step white-box
    one. An attack that ran on every example reports its own `accuracy`;
    every attack reports how many examples it `attacked` and `fooled`.

    Args:
        model: the Keras classifier (the model being evaluated is the one
            attacked).
        dataset: the examples: arrays `(x, y)`, a `tf.data.Dataset` of
            `(x, y)` (batched, or not), or a data source's name or path (its
            test split; see `nsladv.datasets.resolve`). It is read once (into
            memory), then attacked in batches (a batched dataset's own size,
            else 500).
        epsilons: a radius > 0 or a list of them (`"8/255"` reads as 8/255).
        attacks: an attack set's name (`"quick"`, `"standard"` (default),
            `"full"`; see `attack_set`), or a sequence of `Attack`s, `APGD`s,
            `FAB`s, `Closest`s or `Square`s. A `Closest` runs only on the share
            of the examples robust so far that the white-box attacks before it
            came closest to fooling.
        from_logits: whether the model outputs logits; None (default) tells
            from the model (a softmax layer, or outputs that are
            probabilities).
        large_epsilon: a radius large enough to destroy any image (e.g. 0.5
            for L-inf on [0, 1]); the strongest reference white-box attack
            must drive accuracy below `near_zero` there, else gradients are
            masked.
        near_zero: the accuracy threshold of that check.
        progress: called as `progress(attack name, epsilon, robust accuracy
            after it, seconds)` after each attack at each epsilon.
        step_progress: called as `step_progress(attack name, epsilon,
            examples attacked so far, examples to attack)` after each batch of
            an attack at an epsilon (and once with 0 before the first), for a
            progress bar with an estimate of the time left.
        seed: the attacks' random seeds are `seed`, `seed + 1`, ... in run
            order (reported under each attack's `seed`).
        cascade: False runs every attack on every example.
        black_box_retry: white-box attacks run again, in turn, on the
            examples that only a black-box attack fooled, each on those the
            ones before did not fool (default `BLACK_BOX_RETRY`: APGD-CE with
            20 restarts, APGD-T on 9 target classes with 20, APGD-CE from 20
            output-diversified starts, FAB-T on 9 targets with 5), reported as `black_box_retry`:
            whether gradients find them with more tries (too few restarts) or
            not (masked gradients), which each attack found (`found_by`) and
            which none did (`hidden_examples`), and for those whether the
            input gradient accounts for the margin's fall along the black-box
            attack's path to them (`path_checks`; see `gradient_path_check`):
            a search miss, or masking. It changes no accuracy. One attack or a
            sequence; None skips it.
        checkpoint_dir: a folder where every attack's answers are kept block
            by block as they finish, each block seeded on its own, so that
            the same call after a kill continues where it stopped and gives
            the answer of a run straight through, digit for digit (see
            `nsladv.robustness.checkpoints`). None: nothing kept, each
            attack seeded once.
        block_size: digits per kept block.
        on_block: with `checkpoint_dir`, called after each block attacked (see
            `Checkpoints`), e.g. to show the digits left and the time they
            need.

    Returns:
        A `RobustnessResult`: a JSON-ready dict with `clean_accuracy`, `examples` (also as
        `test_examples`), per attack its `config`, `seed`, `attacked` and
        `fooled` counts by epsilon and (when it ran on every example) its
        `accuracy` by epsilon; `worst_case` by epsilon (the share of examples
        correct clean and under every attack and restart, counted example by
        example: never the minimum of the per-attack accuracies),
        `black_box_only` and `black_box_only_examples` (how many and which
        examples, by position in `dataset`, only a black-box attack fooled),
        `after_each_attack` (the worst case after the first 1, 2, ...
        attacks, in run order), `confidence_95` (the Wilson interval of the
        worst case), `seconds` by attack, and `sanity` checks (see
        `sanity_checks`). `worst_case_at(epsilon)` reads the worst case,
        `write_card(path)` writes a Markdown card.

    Example:

    >>> result = nsladv.evaluate_robustness(model, (x_test, y_test), epsilons=0.3)
    >>> result.worst_case_at(0.3)
    """
    epsilons = parse_radii(epsilons)
    x, y, batch_size = evaluation_arrays(dataset)
    classes = output_classes(model, x)
    if y.max() >= classes:
        raise DataError(
            f"Labels must be class ids below the model's {classes} outputs. Received: labels up to {int(y.max())}"
        )
    if from_logits is None:
        from_logits = check_classifier(model, x.shape[1:], classes)
    if isinstance(attacks, str):
        attacks = attack_set(attacks, num_classes=classes)
    attacks = list(attacks)
    if not attacks:
        raise ValueError("`attacks` must name an attack set or list at least one attack. Received: attacks=[]")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"Every attack needs a name of its own (reports key on it). Received: names {names}")
    attacks = [a for a in attacks if not a.black_box] + [a for a in attacks if a.black_box]
    black_box_retry = retry_attacks(black_box_retry)  # checked before the attacks run, which can take hours
    clean, margins = clean_margins(model, x, y, batch_size, from_logits)
    store = Straight()
    if checkpoint_dir is not None:
        identity = {
            "attacks": [a.get_config() for a in attacks],
            "epsilons": list(epsilons),
            "examples": fingerprint(x, y),
            "model": model_fingerprint(model, x.shape[1:]),
            "from_logits": bool(from_logits),
            "cascade": bool(cascade),
            "large_epsilon": large_epsilon,
            "batch_size": batch_size,
        }
        store = Checkpoints(checkpoint_dir, identity, seed=seed, block_size=block_size, on_block=on_block)
    reference = _reference_attacks(attacks) if cascade else set(range(len(attacks)))
    results = {"epsilons": epsilons, "attacks": {}, "seconds": {}, "clean_accuracy": float(clean.mean())}
    results["examples"] = results["test_examples"] = len(y)
    robust_so_far = {radius_key(e): clean for e in epsilons}  # examples robust to every attack so far
    white_box = {}  # epsilon key -> examples robust to every white-box attack
    closest = {radius_key(e): margins.copy() for e in epsilons}  # the smallest margin any white-box attack reached
    curves = {radius_key(e): [] for e in epsilons}
    attackers = {}
    for index, attack in enumerate(attacks):
        attackers[attack.name] = attacker = attack.batch_attacker(model, from_logits=from_logits, seed=seed + index)
        start = time.perf_counter()
        entry = {"config": attack.get_config(), "seed": seed + index, "attacked": {}, "fooled": {}}
        if index in reference:
            entry["accuracy"] = {}
        for epsilon_index, epsilon in enumerate(epsilons):
            key = radius_key(epsilon)
            started = time.perf_counter()
            attackable = clean if index in reference else robust_so_far[key]
            if isinstance(attack, Closest):
                rows, robust = attack.rows(np.flatnonzero(attackable), closest[key]), attackable.copy()
            else:
                rows, robust = np.flatnonzero(attackable), np.zeros_like(clean)
            if rows.size:
                report = None if step_progress is None else functools.partial(step_progress, attack.name, epsilon)
                robust[rows], reached = store.attack(
                    f"{index}-{attack.name}", attacker, x, y, rows, batch_size, epsilon, epsilon_index, report
                )
                if not attack.black_box:
                    closest[key][rows] = np.fmin(closest[key][rows], reached)
            entry["attacked"][key], entry["fooled"][key] = int(rows.size), int(rows.size - robust[rows].sum())
            if index in reference:
                entry["accuracy"][key] = float(robust.mean())
            robust_so_far[key] = robust & robust_so_far[key]
            if not attack.black_box:
                white_box[key] = robust & white_box.get(key, clean)
            curves[key].append(float(robust_so_far[key].mean()))
            if progress is not None:
                progress(attack.name, epsilon, curves[key][-1], time.perf_counter() - started)
        results["attacks"][attack.name] = entry
        results["seconds"][attack.name] = store.seconds(f"{index}-{attack.name}", round(time.perf_counter() - start, 3))
    run_order = [a.name for a in attacks]
    results["worst_case"] = {key: float(mask.mean()) for key, mask in robust_so_far.items()}
    # Which examples (by position in `dataset`) are not robust: for digit-by-digit comparisons of two runs.
    results["not_robust_examples"] = {key: np.flatnonzero(~mask).tolist() for key, mask in robust_so_far.items()}
    if checkpoint_dir is not None:
        results["checkpoints"] = {
            "folder": str(checkpoint_dir),
            "block_size": block_size,
            "blocks_reused": store.blocks_done,
        }
    results["after_each_attack"] = {key: dict(zip(run_order, curve)) for key, curve in curves.items()}
    results["confidence_95"] = {key: wilson_interval(int(mask.sum()), len(mask)) for key, mask in robust_so_far.items()}
    if white_box and any(a.black_box for a in attacks):
        # Examples a black-box attack fooled that every white-box attack left robust.
        hidden = {key: white_box[key] & ~robust_so_far[key] for key in robust_so_far}
        results["black_box_only"] = {key: int(mask.sum()) for key, mask in hidden.items()}
        results["black_box_only_examples"] = {key: np.flatnonzero(mask).tolist() for key, mask in hidden.items()}
        if black_box_retry is not None and any(results["black_box_only"].values()):
            results["black_box_retry"] = retry(
                black_box_retry, model, x, y, batch_size, hidden, epsilons, from_logits, seed + len(attacks)
            )
            black_box = [a for a in attacks if a.black_box]
            check_paths(results["black_box_retry"], black_box, model, x, y, batch_size, epsilons, from_logits, seed)
    measured = [a for i, a in enumerate(attacks) if i in reference and not a.black_box]
    if large_epsilon is not None and measured:
        # The reference white-box attack strongest at the largest epsilon, whatever its place in the list.
        top = radius_key(epsilons[-1])
        strongest = min(measured, key=lambda a: results["attacks"][a.name]["accuracy"][top])
        rows = np.arange(len(y))
        large, _ = store.attack(
            f"large-{strongest.name}", attackers[strongest.name], x, y, rows, batch_size, large_epsilon, 0
        )
        results["large_epsilon"] = {"epsilon": large_epsilon, "attack": strongest.name, "accuracy": float(large.mean())}
    results["sanity"] = sanity_checks(results, near_zero=near_zero)
    return RobustnessResult(results)


def _reference_attacks(attacks):
    """Indices of the attacks that run on every example under a cascade (see `evaluate_robustness`)."""
    chosen = {0}
    multi_step = [i for i, a in enumerate(attacks) if gradient_steps({"config": a.get_config()}) not in (1, None)]
    chosen.update(i for i, a in enumerate(attacks) if gradient_steps({"config": a.get_config()}) == 1)
    chosen.update(multi_step[:1])
    return chosen
