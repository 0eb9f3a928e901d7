"""The `nsladv` command: argument parsing and messages; the work is in the library."""

import argparse
import os
import sys
import traceback

from nsladv.errors import NsladvError
from nsladv.errors import SettingsError
from nsladv.jobs import cli_values as values
from nsladv.version import __version__

_EPILOG = """examples:
  nsladv harden                          the default MNIST pipeline, offline
  nsladv harden --model mine.keras --data images/ --name mine
                                         your model on your images, the default recipe
  nsladv harden fashion_mnist --epochs 5
  nsladv harden path/to/my_pipeline.py
  nsladv evaluate mine.keras --data images/ --epsilons 8/255
  nsladv tune mnist --trials 6 --epochs 3    search the regularization for robustness
  nsladv serve saved_models               TF Serving's REST (8501) and gRPC (8500) APIs, locally
  nsladv pipelines                       list the pipelines
"""


def _parser():
    from nsladv.jobs import serve as serve_job

    parser = argparse.ArgumentParser(
        prog="nsladv",
        description="Harden Keras models against adversarial inputs, measure them, export them for TF Serving.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nsladv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # --debug also after the subcommand; SUPPRESS keeps a subcommand from resetting the main parser's value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of every error"
    )

    harden = commands.add_parser(
        "harden",
        parents=[common],
        help="train, evaluate and export a hardened model",
        description="Train the pipeline's model with adversarial neighbors (and the undefended baseline), evaluate "
        "both white-box, write the report and export the hardened model for TF Serving. A rerun picks up at the "
        "first unfinished phase. Every job prints its phases and an estimate of its time on this machine when it "
        "starts (the measured times are in docs/results.md).",
        epilog=_examples(
            ("nsladv harden", "the default MNIST pipeline, offline"),
            ("nsladv harden --epochs 4 --eval-examples 500", "a quick variant"),
            ("nsladv harden --model mine.keras --data images/", "your model on your image folder (default recipe)"),
            ("nsladv harden --model mine.keras --data cifar10 --epsilon 8/255", "on a TFDS dataset"),
            ("nsladv harden --model mine.keras --data digits.npz --graph edges.tsv", "with your graph's neighbors"),
            ("nsladv harden mnist --epsilon 0.2 --steps 7 --seed 1", "override settings (recorded in the report)"),
            ("nsladv harden path/to/my_pipeline.py", "a pipeline of your own"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(harden)
    harden.add_argument(
        "--model",
        metavar="FILE.keras",
        help="harden this saved Keras model instead of the pipeline's (NAME defaults to its file's stem)",
    )
    harden.add_argument(
        "--graph",
        metavar="EDGES.tsv",
        help="join natural graph neighbors from an NSL TSV edge file (source<TAB>target<TAB>weight); ids are image "
        "paths relative to the data folder, or row numbers of an .npz",
    )
    harden.add_argument("--epochs", type=values.positive_int, help="override the pipeline's epochs")
    harden.add_argument("--no-baseline", action="store_true", help="skip the undefended comparison model")
    harden.add_argument(
        "--strategy",
        choices=["auto", "default", "mirrored", "multiworker", "tpu"],
        default="default",
        help="tf.distribute strategy (default: default; auto picks from TF_CONFIG and the GPUs)",
    )

    tune = commands.add_parser(
        "tune",
        parents=[common],
        help="search the regularization with keras-tuner for robustness, export the best",
        description="Search the regularization multiplier, distance, PGD steps and warm-up with keras-tuner "
        "against white-box robust accuracy on validation digits (harden's robustness monitor); evaluate and export "
        "the best trial. Trials train as harden's model does and are logged for TensorBoard's HParams view under "
        "the run folder's logs/. A rerun resumes the search.",
        epilog=_examples(
            ("nsladv tune mnist --trials 6 --epochs 3", "six random trials of three epochs"),
            ("nsladv tune mnist --tuner bayesian --objective tradeoff --tradeoff-weight 0.3", "clean/robust trade-off"),
            ("tensorboard --logdir runs/mnist/tuning/logs", "compare the trials (HParams tab)"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(tune)
    tune.add_argument("--trials", type=values.positive_int, default=6, help="trials (default: 6)")
    tune.add_argument("--epochs", type=values.positive_int, default=3, help="epochs a trial (default: 3)")
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="random")
    tune.add_argument(
        "--objective",
        choices=["robust", "tradeoff"],
        default="robust",
        help="val_robust_accuracy, or a clean/robust trade-off (default: robust)",
    )
    tune.add_argument(
        "--tradeoff-weight",
        type=values.fraction,
        default=0.5,
        metavar="W",
        help="clean share of the trade-off, in [0, 1] (default: 0.5)",
    )
    tune.add_argument("--clean-floor", type=float, metavar="ACC", help="penalize trials under this clean accuracy")

    evaluate = commands.add_parser(
        "evaluate",
        parents=[common],
        help="attack a saved model white-box: report, plot and model card",
        description="How robust is a model? Attack a .keras file, a SavedModel folder or a saved_models/<name> "
        "base (its newest version) white-box on a TFDS dataset's test split, and write report.json, "
        "robustness.png and model_card.md.",
        epilog=_examples(
            ("nsladv evaluate my_model.keras", "the offline MNIST test digits, standard attacks"),
            ("nsladv evaluate saved_models/mnist --attacks quick --eval-examples 500", "a quick look"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("model", help="a .keras file, a SavedModel folder or a saved_models/<name> base")
    evaluate.add_argument(
        "--data",
        "--dataset",
        dest="data",
        default="mnist_offline",
        metavar="SOURCE",
        help=_DATA_HELP + " (default: mnist_offline); its test split is attacked",
    )
    evaluate.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data folder")
    evaluate.add_argument(
        "--epsilons",
        type=values.epsilons,
        default=(0.1, 0.2, 0.3),
        metavar="E1,E2",
        help="radii, fractions allowed (default: 0.1,0.2,0.3; e.g. 2/255,8/255)",
    )
    evaluate.add_argument("--norm", choices=["linf", "l2"], default="linf", help="the radii's norm (default: linf)")
    evaluate.add_argument(
        "--attacks",
        choices=["quick", "standard", "full"],
        default="standard",
        help="standard: FGSM, APGD-CE, APGD-T (3 targets), APGD-CE with 20 restarts on the 5%% closest to being "
        "fooled, Square (1,000 queries); full: AutoAttack's standard version (APGD-CE, APGD-T and FAB-T on 9 "
        "targets, Square 5,000 queries); quick: FGSM, PGD-20, APGD-CE-50",
    )
    _add_evaluation_arguments(evaluate, "1000")
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default: runs/evaluate/<model>); finished blocks of digits are kept in its checkpoints/ "
        "as the attacks go, so the same command after a kill continues where it stopped",
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="start afresh: discard the blocks an earlier run kept in the folder"
    )

    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="serve exported models through TF Serving's REST and gRPC APIs",
        description="Serve saved_models/ (or a models.config) locally through TF Serving's REST and gRPC APIs, "
        "for development where tensorflow_model_server cannot run.",
        epilog=_examples(
            ("nsladv serve", "saved_models/ on 127.0.0.1:8501 (REST) and :8500 (gRPC)"),
            ("curl -d '{\"instances\": [...]}' localhost:8501/v1/models/mnist:predict", "ask it"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve_job.add_arguments(serve)

    commands.add_parser(
        "pipelines",
        parents=[common],
        help="list the available pipelines",
        epilog=_examples(("nsladv pipelines", "names and one-line descriptions")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


_DATA_HELP = (
    "the data: a TFDS name (cifar10, mnist:3.0.1, NAME@TRAIN,TEST), an image folder (one subfolder per class, "
    "optionally under train/ and test/) or a keras.datasets-style .npz"
)


def _add_job_arguments(parser):
    """The arguments `harden` and `tune` share."""
    parser.add_argument(
        "pipeline", nargs="?", default=None, help="pipeline name or .py file (default: mnist, the default recipe)"
    )
    parser.add_argument("--data", metavar="SOURCE", help=_DATA_HELP + "; validation is carved from its training data")
    parser.add_argument(
        "--name",
        type=values.model_name,
        help="the run and export name: runs/NAME, saved_models/NAME (default: --model's stem or the pipeline's name)",
    )
    _add_evaluation_arguments(parser, "the pipeline's")
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/NAME[/tuning])")
    parser.add_argument(
        "--saved-models", default="saved_models", metavar="DIR", help="TF Serving base folder (default: saved_models)"
    )
    parser.add_argument("--no-export", action="store_true", help="do not export for TF Serving")
    parser.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run folder that holds work made with other settings (else the job stops); "
        "a rerun with the same settings resumes",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16"],
        default="auto",
        help="training precision (default: auto, bfloat16 mixed precision where the hardware computes it "
        "natively: TPUs, GPUs of compute capability 8.0+, CPUs with AVX512_BF16 or AMX; float32 elsewhere). "
        "Evaluation and the export are float32",
    )
    overrides = parser.add_argument_group("overrides of the pipeline's settings (recorded in the report)")
    overrides.add_argument("--seed", type=int, help="random seed")
    overrides.add_argument(
        "--epsilon",
        type=values.radius,
        help="training radius, fractions allowed (8/255); step sizes and evaluation radii follow",
    )
    overrides.add_argument("--norm", choices=["linf", "l2"], help="the threat model's norm (evaluation follows)")
    overrides.add_argument(
        "--eval-epsilons", type=values.epsilons, metavar="E1,E2", help="evaluation radii, fractions allowed"
    )
    overrides.add_argument("--steps", type=values.positive_int, help="PGD steps of the training neighbors")
    overrides.add_argument("--multiplier", type=values.non_negative_float, help="regularization multiplier")
    overrides.add_argument(
        "--distance",
        choices=["label", "kl", "js", "l2", "cosine"],
        help="the neighbor-consistency distance (nsladv.Regularization)",
    )
    overrides.add_argument(
        "--ema-momentum",
        type=values.ema_momentum,
        metavar="M",
        help="the weights' average's momentum in (0, 1); 0: off",
    )
    overrides.add_argument(
        "--eval-split",
        choices=["test", "validation"],
        help="evaluate the test split (the figures to report; default) or the validation digits the epoch monitor "
        "does not read (for choosing settings without reading the test split)",
    )
    overrides.add_argument("--batch-size", type=values.positive_int, help="global batch size")
    overrides.add_argument("--learning-rate", type=values.positive_float, help="Adam's learning rate")


def _add_evaluation_arguments(parser, default):
    """How much to evaluate, shared by `harden`, `tune` and `evaluate`."""
    parser.add_argument(
        "--eval-examples",
        type=values.positive_int,
        metavar="N",
        help=f"evaluate on N test examples spread evenly over the test split (default: {default})",
    )
    parser.add_argument(
        "--full-evaluation",
        action="store_true",
        help="the whole test split and the full attack set (AutoAttack's settings); hours on 2 CPU cores",
    )


def _job_kwargs(args):
    from nsladv.jobs import console

    return {
        "out_dir": args.out,
        "saved_models": args.saved_models,
        "data_dir": args.data_dir,
        "eval_examples": args.eval_examples,
        "export": not args.no_export,
        # Live bars on a terminal; in a log file one line per epoch.
        "verbose": console.keras_verbosity(args.quiet),
    }


def _examples(*lines):
    width = max(len(command) for command, _ in lines) + 2
    return "examples:\n" + "\n".join(f"  {command:<{width}}{what}" for command, what in lines)


def _overrides(args):
    names = (
        "seed",
        "epsilon",
        "steps",
        "multiplier",
        "distance",
        "ema_momentum",
        "batch_size",
        "learning_rate",
        "norm",
        "eval_epsilons",
        "eval_split",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _run_name(args, pipeline_name):
    """--name, else the model file's stem, else (data given, no pipeline named) the data's, else the pipeline's."""
    import pathlib

    from nsladv.export import check_model_name

    if args.name:
        return args.name
    candidates = []
    if getattr(args, "model", None):
        candidates.append(pathlib.Path(args.model).stem)
    if args.data and not args.pipeline:
        candidates.append(pathlib.Path(args.data.split("@")[0].split(":")[0].rstrip("/")).name.removesuffix(".npz"))
    for candidate in candidates:
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in candidate)
        try:
            check_model_name(name)
            return name
        except ValueError:
            continue
    return pipeline_name


def main(argv=None):
    from nsladv.jobs import console

    # A flag's check may load TensorFlow (a model name is checked as the export checks it): its start-up noise is
    # filtered from the first import on.
    with console.startup_noise_filtered():
        args = _parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run(args)
    except NsladvError as error:
        # The user's to fix: one line, unless asked for the traceback.
        if args.debug:
            traceback.print_exc()
        print(f"nsladv: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nsladv: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


def _run(args):
    """Runs the parsed command; anything but an NsladvError is a bug and keeps its traceback."""
    from nsladv.jobs import console
    from nsladv.jobs import serve as serve_job

    console.load_tensorflow()
    from nsladv.jobs import harden as harden_lib
    from nsladv.jobs import pipeline as pipeline_lib

    if args.command == "serve":
        return serve_job.run(args)
    if args.command == "evaluate":
        from nsladv.jobs import evaluate

        if args.full_evaluation and args.eval_examples is not None:
            raise SettingsError(
                "--full-evaluation attacks the whole test split; drop --eval-examples. "
                f"Received: --eval-examples {args.eval_examples}"
            )
        evaluate.evaluate(
            args.model,
            step_progress=console.AttackProgress(),
            data=args.data,
            data_dir=args.data_dir,
            epsilons=args.epsilons,
            norm=args.norm,
            attacks="full" if args.full_evaluation else args.attacks,
            eval_examples=None if args.full_evaluation else (args.eval_examples or 1000),
            out_dir=args.out,
            overwrite=args.overwrite,
        )
        return 0
    if args.command == "pipelines":
        for name, description in pipeline_lib.available_pipelines().items():
            print(f"{name:<16} {description}")
        return 0
    pipeline = pipeline_lib.load_pipeline(args.pipeline or pipeline_lib.DEFAULT_PIPELINE)
    overrides = _overrides(args)
    if args.data is not None:
        overrides["data"] = args.data
        pipeline = pipeline.replace(dataset=args.data)
    name = _run_name(args, pipeline.name)
    if name != pipeline.name:
        pipeline = pipeline.replace(name=name)
    if getattr(args, "graph", None):
        from nsladv.configs import GraphRegularization

        overrides["graph"] = args.graph
        pipeline = pipeline.replace(
            graph=pipeline_lib.GraphSetup(
                regularization=GraphRegularization(multiplier=3.0, distance="kl", max_neighbors=5), edges=args.graph
            )
        )
    pipeline = pipeline.with_overrides(**{k: v for k, v in overrides.items() if k not in ("data", "graph")})
    if args.full_evaluation:
        from nsladv.robustness import attack_set

        if args.eval_examples is not None:
            raise SettingsError(
                "--full-evaluation attacks the whole test split; drop --eval-examples. "
                f"Received: --eval-examples {args.eval_examples}"
            )
        pipeline = pipeline.replace(eval_attacks=attack_set("full"), eval_examples=None)
    if args.command == "tune":
        from nsladv.jobs import tune

        tune.tune_pipeline(
            pipeline,
            trials=args.trials,
            epochs=args.epochs,
            tuner=args.tuner,
            objective=args.objective,
            tradeoff_weight=args.tradeoff_weight,
            clean_floor=args.clean_floor,
            overwrite=args.overwrite,
            precision=args.precision,
            overrides=overrides,
            **_job_kwargs(args),
        )
        return 0
    harden_lib.harden(
        pipeline,
        model=args.model,
        name=pipeline.name,
        step_progress=None if args.quiet else console.AttackProgress(),
        overwrite=args.overwrite,
        epochs=args.epochs,
        baseline=not args.no_baseline,
        strategy=args.strategy,
        precision=args.precision,
        overrides=overrides,
        **_job_kwargs(args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
