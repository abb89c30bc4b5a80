import pytest

from cxr.errors import InvalidOptionError, UnknownLabelError
from cxr.labels import (CUSTOM_LABELSET, NIH_BBOX_CLASSES, NIH_FINDINGS, VINDR_CLASSES, LabelSet, LabelSetName,
                        annotation_labelset, get_labelset)


def test_vocabulary_sizes():
    assert len(NIH_FINDINGS) == 14
    assert len(NIH_BBOX_CLASSES) == 8
    assert len(VINDR_CLASSES) == 14
    assert get_labelset("nih-bbox").num_classes == 9  # + background


def test_infiltrate_in_bbox_csv_is_infiltration():
    ls = get_labelset(LabelSetName.NIH_BBOX)
    assert ls.canonical("Infiltrate") == "Infiltration"
    assert ls.class_id("Infiltrate") == ls.class_id("Infiltration") == 4


def test_ids_are_one_based_and_round_trip():
    ls = get_labelset("nih-bbox")
    for i, name in enumerate(ls.names, start=1):
        assert ls.class_id(name) == i
        assert ls.label_name(i) == name


def test_case_and_underscore_insensitive():
    ls = get_labelset("nih-findings")
    assert ls.canonical("pleural thickening") == "Pleural_Thickening"
    assert ls.canonical("  CARDIOMEGALY ") == "Cardiomegaly"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownLabelError) as err:
        get_labelset("nih-bbox").class_id("Fracture")
    msg = str(err.value)
    assert "Fracture" in msg and "Atelectasis" in msg and "Pneumothorax" in msg


def test_unknown_class_id():
    with pytest.raises(UnknownLabelError, match="outside 1..8"):
        get_labelset("nih-bbox").label_name(0)


def test_unknown_vocabulary_lists_choices():
    with pytest.raises(ValueError, match="nih-bbox, nih-findings, vindr"):
        get_labelset("chexpert")
    with pytest.raises(InvalidOptionError, match="unknown label set 'chexpert'"):  # the user's option: exit 2
        get_labelset("chexpert")


def test_named_sets_carry_plain_string_names():
    """Checkpoints store LabelSet.name; an enum member there would need cxr to unpickle."""
    assert all(type(get_labelset(n).name) is str and get_labelset(n).name == n for n in LabelSetName)


def test_vindr_aliases_and_membership():
    ls = get_labelset("vindr")
    assert ls.canonical("nodule") == "Nodule/Mass"
    assert "Aortic enlargement" in ls and "Hernia" not in ls


def test_from_names_returns_known_set_or_custom():
    assert LabelSet.from_names(list(NIH_BBOX_CLASSES), "nih-bbox") is get_labelset("nih-bbox")
    custom = LabelSet.from_names(["Nodule", "Mass"])
    assert custom.class_id("Mass") == 2
    assert custom.name == CUSTOM_LABELSET


def test_a_custom_model_reads_nih_layout_annotations():
    assert annotation_labelset(CUSTOM_LABELSET) is LabelSetName.NIH_BBOX
    assert annotation_labelset("vindr") is LabelSetName.VINDR


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        LabelSet("x", ("Mass", "mass"))
