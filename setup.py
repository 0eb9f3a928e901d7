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
    # Ranges, never pins: nsladv joins environments that hold their users' own stack. Lower bounds are the
    # versions CI tests (constraints.txt pins them exactly); an upper bound appears only for a known break.
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3.15",
        "numpy>=1.26",
        # NSL 1.4.0 does not import on TF >= 2.16 as released; nsladv/_nsl.py makes its framework-level
        # functions load (see there).
        "neural-structured-learning>=1.4.0",
        "tensorflow-datasets>=4.9.10",
        # TFDS 4.9.10 imports this backport without declaring it.
        "importlib_resources>=6",
        # Protos for the export's warmup records and models.config (its grpcio and protobuf are TF's own).
        "tensorflow-serving-api>=2.21",
    ],
    extras_require={
        # `nsladv serve`'s Prometheus metrics.
        "serve": ["prometheus-client>=0.20"],
        # `nsladv tune` and nsladv.tuning; keras-tuner imports tensorboard in every trial, which TF 2.21 no longer
        # installs.
        "tune": ["keras-tuner>=1.4.8", "tensorboard>=2.21"],
        # robustness.png in the jobs' run folders.
        "plot": ["matplotlib>=3.8"],
        "all": ["prometheus-client>=0.20", "keras-tuner>=1.4.8", "tensorboard>=2.21", "matplotlib>=3.8"],
        "test": [
            "pytest>=8",
            "pytest-random-order>=1.1",
            "ruff==0.17.6",
            "prometheus-client>=0.20",
            "keras-tuner>=1.4.8",
            "tensorboard>=2.21",
            "matplotlib>=3.8",
        ],
        # NSL's legacy Keras wrapper, run under tf-keras as the benchmark's comparison baseline.
        "bench": ["tf-keras>=2.21"],
        # An independent cross-check of the robustness figure with IBM ART's attacks
        # (python -m benchmarks.art_crosscheck).
        "eval": ["adversarial-robustness-toolbox>=1.20.1"],
    },
    entry_points={"console_scripts": ["nsladv=nsladv.jobs.cli:main"]},
)
