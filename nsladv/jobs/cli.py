"""The `nsladv` command: argument parsing and messages; the work is in the library."""

import argparse
import os
import sys
import traceback

from nsladv.errors import NsladvError
from nsladv.errors import SettingsError
from nsladv.version import __version__

_EPILOG = """examples:
  nsladv harden                          the default MNIST pipeline, offline
  nsladv harden fashion_mnist --epochs 5
  nsladv harden mnist --model my_model.keras --no-baseline
  nsladv harden path/to/my_pipeline.py
  nsladv tune mnist --trials 6 --epochs 3    search the regularization for robustness
  nsladv serve saved_models               TF Serving's REST (8501) and gRPC (8500) APIs, locally
  nsladv pipelines                       list the pipelines
"""


def _parser():
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

    harden = commands.add_parser(
        "harden",
        help="train, evaluate and export a hardened model",
        description="Train the pipeline's model with adversarial neighbors (and the undefended baseline), evaluate "
        "both white-box, write the report and export the hardened model for TF Serving. A rerun picks up at the "
        "first unfinished phase.",
        epilog=_examples(
            ("nsladv harden", "the default MNIST pipeline, offline"),
            ("nsladv harden --epochs 4 --eval-examples 500", "a quick variant"),
            ("nsladv harden mnist --model my_model.keras --no-baseline", "harden your own saved model"),
            ("nsladv harden mnist --epsilon 0.2 --steps 7 --seed 1", "override settings (recorded in the report)"),
            ("nsladv harden path/to/my_pipeline.py", "a pipeline of your own"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(harden)
    harden.add_argument("--model", metavar="FILE.keras", help="harden this saved Keras model instead of the pipeline's")
    harden.add_argument("--epochs", type=_positive_int, help="override the pipeline's epochs")
    harden.add_argument("--no-baseline", action="store_true", help="skip the undefended comparison model")
    harden.add_argument(
        "--strategy",
        choices=["auto", "default", "mirrored", "multiworker", "tpu"],
        default="default",
        help="tf.distribute strategy (default: default; auto picks from TF_CONFIG and the GPUs)",
    )
    harden.add_argument(
        "--mixed-precision",
        choices=["mixed_float16", "mixed_bfloat16"],
        help="Keras mixed-precision policy (float16 on GPUs, bfloat16 on TPUs)",
    )

    tune = commands.add_parser(
        "tune",
        help="search the regularization with keras-tuner for robustness, export the best",
        description="Search the regularization multiplier, distance, PGD steps and warm-up with keras-tuner "
        "against white-box robust accuracy on the validation split; export the best trial. Trials are logged "
        "for TensorBoard's HParams view under the run folder's logs/.",
        epilog=_examples(
            ("nsladv tune mnist --trials 6 --epochs 3", "six random trials of three epochs"),
            ("nsladv tune mnist --tuner bayesian --objective tradeoff --tradeoff-weight 0.3", "clean/robust trade-off"),
            ("tensorboard --logdir runs/mnist/tuning/logs", "compare the trials (HParams tab)"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_job_arguments(tune)
    tune.add_argument("--trials", type=_positive_int, default=6, help="trials (default: 6)")
    tune.add_argument("--epochs", type=_positive_int, default=3, help="epochs a trial (default: 3)")
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="random")
    tune.add_argument(
        "--objective",
        choices=["robust", "tradeoff"],
        default="robust",
        help="val_robust_accuracy, or a clean/robust trade-off (default: robust)",
    )
    tune.add_argument(
        "--tradeoff-weight",
        type=_fraction,
        default=0.5,
        metavar="W",
        help="clean share of the trade-off, in [0, 1] (default: 0.5)",
    )
    tune.add_argument("--clean-floor", type=float, metavar="ACC", help="penalize trials under this clean accuracy")
    tune.add_argument("--overwrite", action="store_true", help="start the search afresh instead of resuming")

    evaluate = commands.add_parser(
        "evaluate",
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
    evaluate.add_argument("--dataset", default="mnist_offline", help="TFDS dataset name (default: mnist_offline)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data folder")
    evaluate.add_argument(
        "--epsilons",
        type=_epsilons,
        default=(0.1, 0.2, 0.3),
        metavar="E1,E2",
        help="L-inf radii (default: 0.1,0.2,0.3)",
    )
    evaluate.add_argument(
        "--attacks",
        choices=["quick", "standard", "full"],
        default="standard",
        help="standard: FGSM, APGD-CE, APGD-T (3 targets), APGD-CE with 20 restarts on the 5%% closest to being "
        "fooled, Square (1,000 queries); full: AutoAttack's settings "
        "(APGD-T and FAB-T on 9 targets, Square 5,000 queries); quick: FGSM, PGD-20, APGD-CE-50",
    )
    evaluate.add_argument(
        "--eval-examples",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="N test examples, spread evenly over the test split (default: 1000)",
    )
    evaluate.add_argument(
        "--full-evaluation",
        action="store_true",
        help="the whole test split and the full attack set (AutoAttack's settings); hours on 2 CPU cores",
    )
    evaluate.add_argument("--out", metavar="DIR", help="run folder (default: runs/evaluate/<model>)")

    serve = commands.add_parser(
        "serve",
        help="serve exported models through TF Serving's REST and gRPC APIs",
        description="Serve saved_models/ (or a models.config) locally through TF Serving's REST and gRPC APIs, "
        "for development where tensorflow_model_server cannot run.",
        epilog=_examples(
            ("nsladv serve", "saved_models/ on 127.0.0.1:8501 (REST) and :8500 (gRPC)"),
            ("curl -d '{\"instances\": [...]}' localhost:8501/v1/models/mnist:predict", "ask it"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "path",
        nargs="?",
        help="a folder of model folders or one model folder, each served at its latest version "
        "(default: saved_models; its models.config is for the container: see --model_config_file)",
    )
    serve.add_argument(
        "--model-config-file",
        "--model_config_file",
        metavar="FILE",
        help="serve a TF Serving models.config instead (base paths must exist as written)",
    )
    serve.add_argument(
        "--model-config-file-poll-wait-seconds",
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0,
        metavar="S",
        help="reread the model config file every S seconds (default: 0, never)",
    )
    serve.add_argument(
        "--allow-version-labels-for-unavailable-models",
        "--allow_version_labels_for_unavailable_models",
        action="store_true",
        help="let a new label name a version that is not loaded yet, as TF Serving's flag",
    )
    serve.add_argument(
        "--monitoring-config-file",
        "--monitoring_config_file",
        metavar="FILE",
        help='serve Prometheus metrics as this config says (prometheus_config { enable: true, path: "..." })',
    )
    serve.add_argument(
        "--rest-api-timeout-in-ms",
        "--rest_api_timeout_in_ms",
        type=int,
        default=30000,
        metavar="MS",
        help="a request waiting longer for the model fails with DEADLINE_EXCEEDED (default: 30000)",
    )
    serve.add_argument(
        "--enable-serialization-as-tensor-content",
        "--enable_serialization_as_tensor_content",
        action="store_true",
        help="gRPC outputs as raw bytes in tensor_content (default: float_val and the like, as TF Serving)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--rest-port", type=int, default=8501, help="REST port (default: 8501)")
    serve.add_argument("--grpc-port", type=int, default=8500, help="gRPC port (default: 8500)")
    serve.add_argument(
        "--poll-seconds",
        "--file_system_poll_wait_seconds",
        type=float,
        default=2.0,
        help="how often to look for new versions (default: 2)",
    )
    serve.add_argument("--verbose", action="store_true", help="log every request")
    serve.add_argument(
        "--enable-batching",
        "--enable_batching",
        action="store_true",
        help="batch concurrent predict requests, as TF Serving's --enable_batching",
    )
    serve.add_argument(
        "--batching-parameters-file",
        "--batching_parameters_file",
        metavar="FILE",
        help="TF Serving batching parameters (max_batch_size, batch_timeout_micros, ...)",
    )

    commands.add_parser(
        "pipelines",
        help="list the available pipelines",
        epilog=_examples(("nsladv pipelines", "names and one-line descriptions")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _add_job_arguments(parser):
    """The arguments `harden` and `tune` share."""
    parser.add_argument("pipeline", nargs="?", default=None, help="pipeline name or .py file (default: mnist)")
    parser.add_argument(
        "--eval-examples",
        type=_positive_int,
        metavar="N",
        help="evaluate on N test examples spread over the test split (default: the pipeline's)",
    )
    parser.add_argument(
        "--full-evaluation",
        action="store_true",
        help="the whole test split and the full attack set (AutoAttack's settings); hours on 2 CPU cores",
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default: runs/<pipeline>[/tuning])")
    parser.add_argument(
        "--saved-models", default="saved_models", metavar="DIR", help="TF Serving base folder (default: saved_models)"
    )
    parser.add_argument("--no-export", action="store_true", help="do not export for TF Serving")
    parser.add_argument("--data-dir", metavar="DIR", help="TensorFlow Datasets data folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    overrides = parser.add_argument_group("overrides of the pipeline's settings (recorded in the report)")
    overrides.add_argument("--seed", type=int, help="random seed")
    overrides.add_argument("--epsilon", type=_positive_float, help="training threat radius (the step size follows)")
    overrides.add_argument("--steps", type=_positive_int, help="PGD steps of the training neighbors")
    overrides.add_argument("--multiplier", type=_non_negative_float, help="regularization multiplier")
    overrides.add_argument("--batch-size", type=_positive_int, help="global batch size")
    overrides.add_argument("--learning-rate", type=_positive_float, help="Adam's learning rate")


def _job_kwargs(args):
    return {
        "out_dir": args.out,
        "saved_models": args.saved_models,
        "data_dir": args.data_dir,
        "eval_examples": args.eval_examples,
        "export": not args.no_export,
        "verbose": 0 if args.quiet else 1,
    }


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}")
    return value


def _examples(*lines):
    width = max(len(command) for command, _ in lines) + 2
    return "examples:\n" + "\n".join(f"  {command:<{width}}{what}" for command, what in lines)


def _positive_float(text):
    return _float(text, lambda v: v > 0, "a number > 0")


def _non_negative_float(text):
    return _float(text, lambda v: v >= 0, "a number >= 0")


def _float(text, ok, expected):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
    if not ok(value) or value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def _overrides(args):
    names = ("seed", "epsilon", "steps", "multiplier", "batch_size", "learning_rate")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _epsilons(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected radii > 0 separated by commas, received {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected radii > 0 separated by commas, received {text!r}")
    return values


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}")
    return value


def main(argv=None):
    args = _parser().parse_args(argv)
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
    from nsladv.jobs import harden as harden_lib
    from nsladv.jobs import pipeline as pipeline_lib

    if args.command == "serve":
        from nsladv.serving import Server
        from nsladv.serving import ServingError

        batching = None
        if args.enable_batching:
            from nsladv.serving import BatchingParameters
            from nsladv.serving.batching import read_batching_parameters

            try:
                batching = (
                    read_batching_parameters(args.batching_parameters_file)
                    if args.batching_parameters_file
                    else BatchingParameters()
                )
            except (OSError, ValueError) as error:
                raise SettingsError(f"--batching_parameters_file: {error}") from None
        if args.path and args.model_config_file:
            raise SettingsError(
                "Give a folder or --model_config_file, not both. "
                f"Received: {args.path!r} and {args.model_config_file!r}"
            )
        if args.rest_api_timeout_in_ms <= 0:
            raise SettingsError(f"--rest_api_timeout_in_ms must be positive. Received: {args.rest_api_timeout_in_ms}")
        try:
            server = Server(
                None if args.model_config_file else (args.path or "saved_models"),
                config_file=args.model_config_file,
                host=args.host,
                rest_port=args.rest_port,
                grpc_port=args.grpc_port,
                poll_seconds=args.poll_seconds,
                config_poll_seconds=args.model_config_file_poll_wait_seconds or None,
                allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
                verbose=args.verbose,
                batching=batching,
                monitoring=args.monitoring_config_file,
                request_timeout=args.rest_api_timeout_in_ms / 1000,
                serialization_as_tensor_content=args.enable_serialization_as_tensor_content,
                freeze_heap=True,  # this process is the server
            ).start()
        except (ServingError, OSError, ValueError) as error:  # what TF Serving would refuse to start with
            raise SettingsError(f"nsladv serve cannot start: {error}") from None
        source = args.model_config_file or args.path or "saved_models"
        print(f"serving {', '.join(server.repository.names)} from {source}")
        print(f"  REST  {server.rest_url}/v1/models/<name>[:predict]")
        print(f"  gRPC  {server.grpc_target}  (tensorflow_serving PredictionService, ModelService)")
        if server.monitoring is not None and server.monitoring.enable:
            print(f"  metrics {server.rest_url}{server.monitoring.path}")
        print("Ctrl-C to stop.", flush=True)
        try:
            server.wait()
        except KeyboardInterrupt:
            print("stopped.")
            return 0
        finally:
            server.stop()
    if args.command == "evaluate":
        from nsladv.jobs import evaluate

        evaluate.evaluate(
            args.model,
            dataset=args.dataset,
            data_dir=args.data_dir,
            epsilons=args.epsilons,
            attacks="full" if args.full_evaluation else args.attacks,
            eval_examples=None if args.full_evaluation else args.eval_examples,
            out_dir=args.out,
        )
        return 0
    if args.command == "pipelines":
        for name, description in pipeline_lib.available_pipelines().items():
            print(f"{name:<16} {description}")
        return 0
    pipeline = pipeline_lib.load_pipeline(args.pipeline or pipeline_lib.DEFAULT_PIPELINE)
    overrides = _overrides(args)
    pipeline = pipeline.with_overrides(**overrides)
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
            overrides=overrides,
            **_job_kwargs(args),
        )
        return 0
    harden_lib.harden(
        pipeline,
        model_path=args.model,
        epochs=args.epochs,
        baseline=not args.no_baseline,
        strategy=args.strategy,
        mixed_precision=args.mixed_precision,
        overrides=overrides,
        **_job_kwargs(args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
