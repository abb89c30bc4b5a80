"""cxr.vocab.ClosedVocabulary: normalise on entry, refuse with InvalidOptionError, a label that is an attribute."""

from __future__ import annotations

import pytest

from cxr.contract import Artifact, ConfigKey, Precision, ServeTarget, Step
from cxr.errors import InvalidOptionError
from cxr.labels import LabelSetName
from cxr.server.tls import TlsMode
from cxr.vocab import ClosedVocabulary


class Colour(ClosedVocabulary, label="film colour"):
    """grey scale: a docstring that reads like a label, and is not the label."""

    GREY = "grey"
    INVERTED = "inverted"


class QueueKind(ClosedVocabulary):
    FIFO = "fifo"


def test_an_unknown_value_is_an_invalid_option_that_lists_the_valid_ones():
    with pytest.raises(InvalidOptionError, match=r"^unknown film colour 'sepia'; choose one of: grey, inverted$"):
        Colour("sepia")
    with pytest.raises(ValueError):  # InvalidOptionError is a ValueError: `except ValueError` callers still work
        Colour(3)


def test_the_label_is_a_class_attribute_not_the_docstring():
    assert Colour.label == "film colour" and list(Colour) == [Colour.GREY, Colour.INVERTED]  # the label is no member
    assert QueueKind.label == "queue kind"  # without label=: the class name in words
    assert TlsMode.label == "tls mode"


@pytest.mark.parametrize("kind,label", [(Step, "ensemble step"), (ConfigKey, "model config parameter"),
                                        (Precision, "precision"), (Artifact, "export kind"), (ServeTarget, "target"),
                                        (LabelSetName, "label set")])
def test_every_vocabulary_of_the_core_names_itself(kind, label):
    assert kind.label == label
    with pytest.raises(InvalidOptionError, match=f"^unknown {label} 'nope'; choose one of: {', '.join(kind.values())}$"):
        kind("nope")
