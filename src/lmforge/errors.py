"""The errors a user can cause. Each carries one sentence: what is wrong and what to do about it.

The CLI prints them as `error: <message>` and exits with status 2; everything else is a bug and
shows a traceback.
"""


class LmforgeError(Exception):
    """Base class for every error caused by input, configuration or files the user gave us."""

    exit_code = 2


class ConfigError(LmforgeError):
    """A bad config file, config key, flag or value."""


class DataError(LmforgeError):
    """A corpus, data directory or input file that cannot be used."""


class TokenizerError(LmforgeError):
    """A tokenizer that cannot be trained, loaded or does not match its model."""


class CheckpointError(LmforgeError):
    """A checkpoint or run directory that is missing, truncated or corrupted."""


class TrainingError(LmforgeError):
    """Training cannot go on (for example the loss became NaN)."""


class EmptySplitError(DataError):
    """A document-level split left the train or validation split without any document."""


class MissingExtraError(LmforgeError):
    """A feature needs an optional dependency that is not installed (`pip install "lmforge[EXTRA]"`)."""


class OutputError(LmforgeError):
    """An output path that already holds something else, or that cannot be written (lmforge.outputs)."""
