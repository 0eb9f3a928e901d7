"""`nsladv serve` with the flags every TF Serving tutorial uses: --port, --rest_api_port, --model_name, --model_base_path."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from serving_helpers import SHAPE
from serving_helpers import classifier

from nsladv import export
from nsladv.jobs import cli
from nsladv.serving import GrpcClient
from nsladv.serving import RestClient

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve_cli")
    export.export_model(classifier(1), base, "exported_as", input_shape=SHAPE)
    return base / "exported_as"


def serve(argv):
    """Starts `nsladv serve ARGV`; returns the process once it says it is serving."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "nsladv.jobs.cli", "serve", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C to stop." in line:
            return process, "".join(lines)
    process.kill()
    raise AssertionError("nsladv serve did not start:\n" + "".join(lines))


def test_tf_servings_own_flags_name_and_place_the_model(base_path):
    grpc_port, rest_port = free_port(), free_port()
    process, said = serve(
        ["--model_name", "digits", "--model_base_path", str(base_path), "--port", str(grpc_port)]
        + ["--rest_api_port", str(rest_port)]
    )
    try:
        assert f"127.0.0.1:{grpc_port}" in said and f"127.0.0.1:{rest_port}" in said
        x = np.random.default_rng(0).random((2, *SHAPE), dtype=np.float32)
        expected = classifier(1).predict(x, verbose=0)
        grpc = GrpcClient(f"127.0.0.1:{grpc_port}")
        np.testing.assert_allclose(grpc.predict("digits", {"image": x})["logits"], expected, atol=1e-5)
        rest = RestClient(f"http://127.0.0.1:{rest_port}")
        np.testing.assert_allclose(rest.predict("digits", {"image": x})["logits"], expected, atol=1e-5)
    finally:
        process.terminate()
        process.wait(30)


def test_rest_api_port_0_turns_rest_off_as_in_tf_serving(base_path):
    process, said = serve(["--model_base_path", str(base_path), "--port", str(free_port()), "--rest_api_port", "0"])
    try:
        assert "REST" not in said and "serving default from" in said
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model_name", "x"], "--model_name names the model of --model_base_path; give that too"),
        (
            ["saved_models", "--model_base_path", "/tmp"],
            "Give one of a folder, --model_config_file and --model_base_path",
        ),
        (["--model_base_path", "/no/such/base"], "Could not find base path /no/such/base for servable default"),
    ],
)
def test_flag_errors_are_one_line(argv, message, capsys):
    code = cli.main(["serve", *argv, "--port", "0", "--rest_api_port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_debug_is_accepted_after_the_subcommand(capsys):
    code = cli.main(["harden", "no_such_pipeline", "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "Unknown pipeline 'no_such_pipeline'" in err
