"""The one exception type for bad studies.

Everything that decodes or validates user-supplied image data raises
:class:`InvalidImageError`.  Callers that serve requests (the Triton Python models,
the PACS bridge) catch exactly this type and turn it into a per-request error; any
other exception is a bug in cxr, not in the input.
"""

from __future__ import annotations


class InvalidImageError(ValueError):
    """The input is not a radiograph cxr can read.

    The message always says what was received (format, size, photometric
    interpretation, ...) and, where there is one, what would fix it.
    """


class UnknownLabelError(KeyError):
    """A finding name that is not in the label vocabulary."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence
        return str(self.args[0]) if self.args else ""


class UsageError(RuntimeError):
    """A failure the user can fix (missing GPU, conflicting artifact, ...).

    The command line prints its message as one line instead of a traceback.
    """
