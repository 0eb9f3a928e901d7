"""The serve job: `nsladv serve`'s flags, TF Serving's own names first, and running the local server."""

import argparse

from nsladv.errors import SettingsError


def add_arguments(parser):
    """Declares `nsladv serve`'s flags (each once; TF Serving's spelling is accepted beside nsladv's)."""
    parser.add_argument(
        "path",
        nargs="?",
        help="a folder of model folders or one model folder, each served at its latest version "
        "(default: saved_models; its models.config is for the container: see --model_config_file)",
    )
    parser.add_argument(
        "--model-config-file",
        "--model_config_file",
        metavar="FILE",
        help="serve a TF Serving models.config instead (base paths must exist as written)",
    )
    parser.add_argument(
        "--model-config-file-poll-wait-seconds",
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0,
        metavar="S",
        help="reread the model config file every S seconds (default: 0, never)",
    )
    parser.add_argument(
        "--allow-version-labels-for-unavailable-models",
        "--allow_version_labels_for_unavailable_models",
        action="store_true",
        help="let a new label name a version that is not loaded yet, as TF Serving's flag",
    )
    parser.add_argument(
        "--monitoring-config-file",
        "--monitoring_config_file",
        metavar="FILE",
        help='serve Prometheus metrics as this config says (prometheus_config { enable: true, path: "..." })',
    )
    parser.add_argument(
        "--rest-api-timeout-in-ms",
        "--rest_api_timeout_in_ms",
        type=int,
        default=30000,
        metavar="MS",
        help="a request waiting longer for the model fails with DEADLINE_EXCEEDED (default: 30000)",
    )
    parser.add_argument(
        "--enable-serialization-as-tensor-content",
        "--enable_serialization_as_tensor_content",
        action="store_true",
        help="gRPC outputs as raw bytes in tensor_content (default: float_val and the like, as TF Serving)",
    )
    parser.add_argument(
        "--model-name",
        "--model_name",
        metavar="NAME",
        help="with --model_base_path: the name to serve one model under, as TF Serving's flag (default: default)",
    )
    parser.add_argument(
        "--model-base-path",
        "--model_base_path",
        metavar="PATH",
        help="serve the one model whose numbered versions are in PATH, as TF Serving's flag",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument(
        "--rest-port",
        "--rest_api_port",
        type=_port,
        default=8501,
        help="REST port; 0 turns REST off, as TF Serving's --rest_api_port (default: 8501)",
    )
    parser.add_argument(
        "--grpc-port", "--port", type=_port, default=8500, help="gRPC port, as TF Serving's --port (default: 8500)"
    )
    parser.add_argument(
        "--poll-seconds",
        "--file_system_poll_wait_seconds",
        type=float,
        default=2.0,
        help="how often to look for new versions (default: 2)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument(
        "--enable-batching",
        "--enable_batching",
        action="store_true",
        help="batch concurrent predict requests, as TF Serving's --enable_batching",
    )
    parser.add_argument(
        "--batching-parameters-file",
        "--batching_parameters_file",
        metavar="FILE",
        help="TF Serving batching parameters (max_batch_size, batch_timeout_micros, ...)",
    )


def run(args):
    """Starts the server the parsed flags describe and serves until Ctrl-C; returns the exit code."""
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
    given = [f for f in (args.path, args.model_config_file, args.model_base_path) if f]
    if len(given) > 1:
        raise SettingsError(
            "Give one of a folder, --model_config_file and --model_base_path. "
            f"Received: {', '.join(repr(g) for g in given)}"
        )
    if args.model_name and not args.model_base_path:
        raise SettingsError(
            f"--model_name names the model of --model_base_path; give that too. Received: --model_name "
            f"{args.model_name}"
        )
    config = None
    if args.model_base_path:
        from nsladv.serving.repository import single_model_config

        config = single_model_config(args.model_name or "default", args.model_base_path)
    if args.rest_api_timeout_in_ms <= 0:
        raise SettingsError(f"--rest_api_timeout_in_ms must be positive. Received: {args.rest_api_timeout_in_ms}")
    try:
        server = Server(
            None if args.model_config_file or config else (args.path or "saved_models"),
            config_file=args.model_config_file,
            config=config,
            host=args.host,
            rest_port=args.rest_port or None,
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
    source = args.model_config_file or args.model_base_path or args.path or "saved_models"
    print(f"serving {', '.join(server.repository.names)} from {source}")
    if args.rest_port:
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


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, received {text!r}")
    return value
