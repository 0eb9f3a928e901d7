"""The evaluate job: how robust is a model, before or after hardening? A report, a plot and a model card."""

import pathlib
import shutil
import time

from nsladv import datasets
from nsladv.classifier import check_classifier
from nsladv.classifier import declared_channels
from nsladv.classifier import load_classifier
from nsladv.jobs import console
from nsladv.jobs import report as report_lib
from nsladv.jobs.model_card import write_run_files
from nsladv.radii import parse_radii
from nsladv.robustness import attack_set
from nsladv.robustness import evaluate_robustness


def evaluate(
    model_path,
    *,
    data=datasets.DEFAULT_DATASET,
    dataset=None,
    data_dir=None,
    epsilons=(0.1, 0.2, 0.3),
    norm="linf",
    attacks="standard",
    eval_examples=None,
    large_epsilon=0.5,
    input_range=(0.0, 1.0),
    out_dir=None,
    overwrite=False,
    block_size=500,
    log=print,
    step_progress=None,
):
    """Attacks a saved model white-box and writes report.json, robustness.png and model_card.md.

    Args:
        model_path: a `.keras` file, a SavedModel folder or a `saved_models/<name>` base.
        data: the data, any source `nsladv.datasets.resolve` reads; its test split is attacked.
        dataset: the same as `data` (kept for earlier callers).
        data_dir: the TFDS data folder.
        epsilons: the radii (a number, a list, or text such as "0.1,8/255").
        norm: `"linf"` or `"l2"` (see `nsladv.robustness.attack_set` for the L2 attacks).
        attacks: an attack set of `nsladv.robustness.ATTACK_SETS` (`"standard"`,
            `"full"`: AutoAttack's standard version, or `"quick"`).
        eval_examples: evaluate on N test examples spread over the split.
        large_epsilon: a destroying radius for the gradient-masking check (L-inf only).
        input_range: `(low, high)` of the model's inputs.
        out_dir: the run folder (default `runs/evaluate/<model name>`). The
            attacks keep their finished blocks of `block_size` digits in its
            `checkpoints/`, each block seeded on its own: the same call after
            a kill continues where it stopped, with the answer of a run
            straight through (see `nsladv.robustness.checkpoints`). Other
            settings in the same folder are refused.
        overwrite: discard the blocks an earlier run kept, and start afresh.
        block_size: digits per kept block.
        log: where progress goes.
        step_progress: follows each attack batch by batch (`evaluate_robustness`'s `step_progress`).

    Returns:
        The report dict.
    """
    data = data if dataset is None else dataset
    epsilons = parse_radii(epsilons)
    attack_set(attacks, norm=norm)  # An unknown name or norm fails here, before anything loads.
    model = load_classifier(model_path)
    splits = datasets.resolve(data, data_dir=data_dir, input_range=input_range, channels=declared_channels(model))
    from_logits = check_classifier(model, splits.image_shape, splits.num_classes, data_name=splits.name)
    chosen = attack_set(attacks, norm=norm, clip_range=input_range, num_classes=splits.num_classes)
    examples = splits.test
    if splits.layout.get("test_carved"):  # no test split of its own: every example is the model's to be tested on
        examples = splits.train.concatenate(splits.validation).concatenate(splits.test)
        splits.layout["test"] = f"all {int(examples.cardinality())} examples (the data has no test split)"
    test = datasets.input_pipeline(datasets.spread(examples, eval_examples), batch_size=500, training=False)
    name = pathlib.Path(model_path).stem if pathlib.Path(model_path).is_file() else pathlib.Path(model_path).name
    out_dir = pathlib.Path(out_dir or pathlib.Path("runs") / "evaluate" / name)
    log(
        f"white-box evaluation of {model_path} on {splits.name} (test): {', '.join(a.name for a in chosen)} "
        f"at {norm} epsilon {', '.join(f'{e:g}' for e in epsilons)}"
    )
    checkpoints = out_dir / "checkpoints"
    if overwrite and checkpoints.exists():
        shutil.rmtree(checkpoints)
        log(f"--overwrite: the blocks kept in {checkpoints} were discarded")
    elif (checkpoints / "manifest.json").is_file():
        log(f"continuing from the blocks kept in {checkpoints}")
    start = time.perf_counter()
    evaluation = evaluate_robustness(
        model,
        test,
        epsilons=epsilons,
        attacks=chosen,
        from_logits=from_logits,
        large_epsilon=large_epsilon if norm == "linf" else None,
        progress=lambda *result: log(report_lib.progress_line(*result)),
        step_progress=step_progress,
        checkpoint_dir=checkpoints,
        block_size=block_size,
        on_block=lambda key, epsilon, block, digits, left, seconds: log(
            f"{key} at epsilon {epsilon:g}: block {block + 1} kept ({digits} digits); {left} digits left for it, "
            f"about {console.duration(seconds)}"
        ),
    )
    if evaluation["checkpoints"]["blocks_reused"]:
        log(f"{evaluation['checkpoints']['blocks_reused']} blocks came from an earlier run")
    metadata = getattr(model, "metadata", None)
    report = {
        "model": str(model_path),
        "dataset": {"name": splits.name, "split": "test", "examples": evaluation["examples"], **splits.layout},
        "norm": norm,
        "from_logits": from_logits,
        "evaluations": {"model": evaluation},
        "seconds": round(time.perf_counter() - start, 1),
        "versions": report_lib.package_versions(),
    }
    write_run_files(
        out_dir,
        report,
        report["evaluations"],
        title=name,
        plot_title=f"{name}: white-box robust accuracy ({splits.name} test)",
        model={
            "source": str(model_path),
            "inputs": f"images {splits.image_shape}, pixels in [{input_range[0]:g}, {input_range[1]:g}]",
            "classes": splits.num_classes,
            "outputs": "logits" if from_logits else "probabilities",
            "parameters": f"{model.count_params():,}",
        },
        dataset=report["dataset"],
        hardening=metadata,
        log=log,
    )
    return report
