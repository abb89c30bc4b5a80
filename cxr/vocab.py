"""Closed vocabularies: string enums that normalise on entry and refuse what they do not know.

As highdicom's enums do, a :class:`ClosedVocabulary` member *is* its string value, and
its constructor takes a member or a string (``Precision("int8") is Precision.INT8``,
case and surrounding blanks ignored).  An unknown value raises
:class:`~cxr.errors.InvalidOptionError` (a ``ValueError``) that names the vocabulary,
the value received and every valid one, so no caller converts or rewords it.

The name in that message is the class's :attr:`ClosedVocabulary.label`, given where the
class is defined::

    class Precision(ClosedVocabulary, label="precision"):
        FP32 = "fp32"

Without ``label=`` it is the class name in words (``QueueState`` -> "queue state").

Stdlib only: the torch-free core, the Triton adapters and PACS hosts all import it.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import ClassVar

from cxr.errors import InvalidOptionError

__all__ = ["ClosedVocabulary"]


def _words(class_name: str) -> str:
    """``"QueueState"`` -> ``"queue state"``; an acronym stays whole (``"TlsMode"`` -> ``"tls mode"``)."""
    return " ".join(re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", class_name)).lower()


class ClosedVocabulary(str, Enum):
    """A closed set of string values; ``Kind(value)`` accepts a member or its string."""

    # What the vocabulary is called in messages ("unknown precision 'fp64'; ...").  An
    # annotation only: a value assigned in an Enum's body would become a member.
    label: ClassVar[str]

    def __init_subclass__(cls, *, label: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.label = label if label is not None else _words(cls.__name__)

    def __str__(self) -> str:  # "fp32", not "Precision.FP32", in messages and f-strings
        return self.value

    __format__ = str.__format__

    @classmethod
    def _missing_(cls, value: object) -> ClosedVocabulary:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.strip().lower():
                    return member
        raise InvalidOptionError(f"unknown {cls.label} {value!r}; choose one of: {', '.join(cls.values())}")

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every value, in definition order (argparse ``choices``)."""
        return tuple(m.value for m in cls)
