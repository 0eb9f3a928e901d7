"""The evaluate job: how robust is a model, before or after hardening? A report, a plot and a model card."""

import json
import pathlib
import time

import keras
import tensorflow as tf

from nsladv import datasets
from nsladv import export as export_lib
from nsladv.classifier import check_classifier
from nsladv.errors import ModelNotFoundError
from nsladv.jobs import report as report_lib
from nsladv.jobs.model_card import write_run_files
from nsladv.robustness import attack_set
from nsladv.robustness import evaluate_robustness
from nsladv.robustness.inputs import parse_radii


class SignatureModel:
    """A SavedModel's serving signature, called like a Keras classifier (`model(x, training=False)`)."""

    def __init__(self, path, signature=export_lib.SIGNATURE):
        self.path = pathlib.Path(path)
        self._loaded = tf.saved_model.load(str(self.path))
        if signature not in self._loaded.signatures:
            raise ModelNotFoundError(
                f"The SavedModel has no signature {signature!r}. Received: signatures "
                f"{sorted(self._loaded.signatures)} in {self.path}"
            )
        self._function = self._loaded.signatures[signature]
        inputs = self._function.structured_input_signature[1]
        if len(inputs) != 1:
            raise ModelNotFoundError(
                f"Expected a signature with one input (the image). Received: inputs {sorted(inputs)} in {self.path}"
            )
        (self._input,) = inputs
        outputs = self._function.structured_outputs
        self._output = "logits" if "logits" in outputs else next(iter(outputs))
        self.layers = []
        self.name = self.path.name

    def __call__(self, x, training=False):
        return self._function(**{self._input: tf.cast(x, tf.float32)})[self._output]

    def count_params(self):
        return sum(int(tf.size(v)) for v in self._loaded.variables)

    @property
    def metadata(self):
        path = self.path / "assets.extra" / export_lib.METADATA_FILE
        return json.loads(path.read_text()) if path.is_file() else None


def load_classifier(path):
    """A `.keras` file, a SavedModel folder, or a `saved_models/<name>` base (its newest version).

    Raises:
        ModelNotFoundError: nothing of those at `path`.
    """
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".keras":
        return keras.saving.load_model(path, compile=False)
    if path.is_dir() and not (path / "saved_model.pb").is_file() and export_lib.versions(path):
        path = path / str(export_lib.versions(path)[-1])
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return SignatureModel(path)
    raise ModelNotFoundError(
        "Expected a saved Keras model (.keras), a SavedModel folder or a TF Serving model base with numeric "
        f"versions. Received: {str(path)!r}" + ("" if path.exists() else " (no such file or folder)")
    )


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
        out_dir: the run folder (default `runs/evaluate/<model name>`).
        log: where progress goes.
        step_progress: follows each attack batch by batch (`evaluate_robustness`'s `step_progress`).

    Returns:
        The report dict.
    """
    data = data if dataset is None else dataset
    epsilons = parse_radii(epsilons)
    attack_set(attacks, norm=norm)  # An unknown name or norm fails here, before anything loads.
    model = load_classifier(model_path)
    splits = datasets.resolve(data, data_dir=data_dir, input_range=input_range)
    from_logits = not check_classifier(model, splits.image_shape, splits.num_classes, data_name=splits.name)
    chosen = attack_set(attacks, norm=norm, clip_range=input_range, num_classes=splits.num_classes)
    test = datasets.pipeline(datasets.spread(splits.test, eval_examples), batch_size=500, training=False)
    name = pathlib.Path(model_path).stem if pathlib.Path(model_path).is_file() else pathlib.Path(model_path).name
    out_dir = pathlib.Path(out_dir or pathlib.Path("runs") / "evaluate" / name)
    log(
        f"white-box evaluation of {model_path} on {splits.name} (test): {', '.join(a.name for a in chosen)} "
        f"at {norm} epsilon {', '.join(f'{e:g}' for e in epsilons)}"
    )
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
    )
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
