"""Errors that are the user's to fix, one class for each thing to fix.

`nsladv`'s command prints these on one line (their message says what was
expected, what was received and what to do); any other exception is a bug
and keeps its traceback. They subclass the built-in error a caller would
catch without knowing nsladv.
"""


class NsladvError(Exception):
    """A mistake in what nsladv was asked to do; the message says how to fix it."""


class PipelineNotFoundError(NsladvError, LookupError):
    """No pipeline by that name or path."""


class PipelineLoadError(NsladvError, ImportError):
    """A pipeline file or module exists but cannot be loaded (syntax, imports, settings)."""


class DatasetUnavailableError(NsladvError, RuntimeError):
    """The dataset is neither prepared nor downloadable."""


class ModelNotFoundError(NsladvError, FileNotFoundError):
    """No model file or saved-models folder where one was named."""


class SettingsError(NsladvError, ValueError):
    """Settings that do not fit the data or each other."""


class ModelMismatchError(NsladvError, ValueError):
    """A user's model does not fit the pipeline's data."""


class TrainingDivergedError(NsladvError, RuntimeError):
    """Training produced a non-finite loss."""


class SearchFailedError(NsladvError, RuntimeError):
    """A hyperparameter search in which no trial completed."""


class ExportError(NsladvError, RuntimeError):
    """An export could not be written or did not reload identically."""


class StrategyError(NsladvError, ValueError):
    """The asked-for tf.distribute strategy is unknown or its cluster is not described."""


class StrategyUnavailableError(NsladvError, RuntimeError):
    """The asked-for tf.distribute strategy's devices cannot be reached."""


class DataError(NsladvError, ValueError):
    """Data that cannot be read, or that is not what the job needs (shapes, ranges, labels, layout)."""


class RunExistsError(NsladvError, FileExistsError):
    """A run folder holds work made with other settings; reusing it would destroy that work."""


class MissingExtraError(NsladvError, ImportError):
    """An optional part of nsladv whose packages are not installed."""
