"""One override syntax (singan.settings.field_value): `singan train --set`, the batch job's
`--set` and a manifest's columns read a field's value with the same code."""

from __future__ import annotations

import math

import pytest

from singan.api import config
from singan.errors import InputError
from singan.settings import FIELD_KINDS, NULLABLE_FIELDS, field_value, parse_overrides


def test_every_config_field_has_a_kind():
    assert FIELD_KINDS["max_size"] == "int" and FIELD_KINDS["scale_factor"] == "float"
    assert FIELD_KINDS["padding"] == "str" and FIELD_KINDS["noise_padding"] == "bool"
    assert FIELD_KINDS["recipe"] == "str" and FIELD_KINDS["z_star"] == "str"
    assert NULLABLE_FIELDS == {"num_scales"}


def test_set_texts_are_typed_like_the_config():
    assert parse_overrides(["max_size=200", "scale_factor=0.8", "num_scales=none"]) == {
        "max_size": 200, "scale_factor": 0.8, "num_scales": None}
    assert parse_overrides(["padding=circular", "noise_padding=true", "loss=nnpl",
                            "patch_size=5", "log_every=3", "lr_g=1e-4"]) == {
        "padding": "circular", "noise_padding": True, "loss": "nnpl", "patch_size": 5,
        "log_every": 3, "lr_g": 1e-4}
    assert parse_overrides(["noise_padding=False", "niter= 300 "]) == {
        "noise_padding": False, "niter": 300}


@pytest.mark.parametrize("item, message", [
    ("max_szie=3", "--set max_szie=3: expected FIELD=VALUE with FIELD one of min_size, "),
    ("max_size", "--set max_size: expected FIELD=VALUE"),
    ("max_size=big", "--set max_size=big: max_size must be an integer, got 'big'"),
    ("max_size=2.5", "--set max_size=2.5: max_size must be an integer, got '2.5'"),
    ("max_size=none", "--set max_size=none: max_size must be an integer, got 'none'"),
    ("lr_g=fast", "--set lr_g=fast: lr_g must be a number, got 'fast'"),
    ("lr_g=nan", "--set lr_g=nan: lr_g must be a finite number, got 'nan'"),
    ("scale_factor=inf", "--set scale_factor=inf: scale_factor must be a finite number"),
    ("noise_padding=1", "--set noise_padding=1: noise_padding must be true or false, got '1'"),
])
def test_a_bad_set_names_the_option_and_the_problem(item, message):
    with pytest.raises(InputError) as caught:
        parse_overrides([item])
    assert str(caught.value).startswith(message)


def test_manifest_cells_read_as_the_same_values():
    # What Arrow hands over for a row: Python numbers, bools, texts.
    assert field_value("max_size", 200) == 200
    assert field_value("scale_factor", 1) == 1.0 and isinstance(field_value("scale_factor", 1), float)
    assert field_value("noise_padding", True) is True
    assert field_value("noise_padding", " TRUE ") is True
    assert field_value("num_scales", None) is None
    for name, value, problem in [("max_size", True, "an integer"), ("max_size", 2.0, "an integer"),
                                 ("scale_factor", math.nan, "a finite number"),
                                 ("noise_padding", 1, "true or false"), ("padding", 3, "a text"),
                                 ("max_size", None, "an integer")]:
        with pytest.raises(InputError, match=f"{name} must be {problem}"):
            field_value(name, value)


def test_a_set_text_and_a_config_call_make_the_same_config():
    items = ["max_size=64", "niter=300", "padding=reflect", "noise_padding=true"]
    assert config("quick", **parse_overrides(items)) == config(
        "quick", max_size=64, niter=300, padding="reflect", noise_padding=True)
