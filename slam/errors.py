"""One exception hierarchy for the whole system.

Every error a user can cause (bad path, bad calibration, bad config, missing optional dependency) is a
subclass of :class:`SlamError` with a message that names the input and says what is wrong. The CLI prints
such errors as one line and exits non-zero; anything else is a bug.
"""


class SlamError(Exception):
    """Base class of all errors raised on purpose by the library."""


class InputError(SlamError):
    """An input file or folder is missing, empty or malformed."""


class EmptyTrajectoryError(InputError):
    """A trajectory file holds no poses (a run that tracked nothing writes one)."""


class CalibrationError(InputError):
    """A calibration file is missing, unparsable or physically impossible."""


class ConfigError(SlamError):
    """A configuration key is unknown or has a value of the wrong type or range."""


class DependencyError(SlamError):
    """An optional dependency (torch, open3d, pyqtgraph, Qt, ...) is needed but not installed."""


class TrackingError(SlamError):
    """Tracking or mapping failed in a way that stops the run (not ordinary tracking loss)."""
