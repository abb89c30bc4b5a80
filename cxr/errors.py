"""The exception types of cxr, by who can fix the problem.

Bad input from a request (served, or handed to the SDK):

- :class:`InvalidImageError` — a study cxr cannot read.  Everything that decodes or
  validates user-supplied image data raises it; the Triton Python models and the
  PACS bridge turn it into a per-request error (INVALID_ARG).
- :class:`InvalidRequestError` — a malformed request parameter (INVALID_ARG too).

Failures the user of a command or of the Python API can fix, all :class:`UsageError`
(the command line prints their message as one line, exit status 2):

- :class:`InvalidOptionError` — an option or configuration value that is not allowed;
- :class:`MissingFileError` — a file or folder that was named does not exist;
- :class:`InvalidFileError` — it exists but is not what was expected (a dataset CSV,
  a checkpoint, a weights file);
- :class:`UnknownLabelError` — a finding name outside the label vocabulary.

They also derive from the built-in type a caller would expect (``ValueError``,
``FileNotFoundError``, ``KeyError``).

Failures of a system cxr talks to, not of its user nor of this process: an
:class:`ExplainedError` whose ``user_can_fix`` is False (the client's ``DetectorError``
for a server that is down or answered INTERNAL).  The command line prints its message
as one line too, with exit status 1.

Any other exception is a bug in cxr: the command line reports it as an internal error
(with its traceback under ``-v``), and a Triton model answers INTERNAL for that request
only.
"""

from __future__ import annotations


class InvalidImageError(ValueError):
    """The input is not a radiograph cxr can read.

    The message always says what was received (format, size, photometric
    interpretation, ...) and, where there is one, what would fix it.
    """


class InvalidRequestError(ValueError):
    """A request parameter is malformed (not a number, out of range, ...)."""


class ExplainedError(RuntimeError):
    """A failure whose message explains it: the command line prints that one line, no traceback.

    ``user_can_fix`` says who has to act, and so the exit status: the user (2: a bad
    option, a refused study) or the system cxr talks to (1: a server that is down or
    answered with an internal error).
    """

    user_can_fix: bool = False


class UsageError(ExplainedError):
    """A failure the user can fix (missing GPU, conflicting artifact, bad option, ...).

    The command line prints its message as one line instead of a traceback.
    """

    user_can_fix = True


class InvalidOptionError(UsageError, ValueError):
    """An option or configuration value that is not allowed; the message lists what is."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InvalidFileError(UsageError, ValueError):
    """A file the user named exists but is not what was expected (and says what it is)."""


class UnknownLabelError(UsageError, KeyError):
    """A finding name that is not in the label vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence
        return str(self.args[0]) if self.args else ""
