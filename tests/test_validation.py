"""The input checks every layer shares: option types, keys, labels."""

from __future__ import annotations

import re
from typing import Literal, Sequence

import jax
import numpy as np
import pytest

from jaxal import models
from jaxal.strategies import check_options
from jaxal.strategies.bald import _DETERMINISTIC
from jaxal.validation import check_key, check_label_values, check_option_types, describe_type

HINTS = {"n": int, "x": float, "flag": bool, "name": str, "mode": Literal["a", "b"], "size": int | None,
         "names": Sequence[str], "anything": object}


@pytest.mark.parametrize("name, value", [("n", 3), ("n", np.int64(3)), ("x", 2), ("x", 0.5), ("flag", False),
                                         ("name", "s"), ("mode", "b"), ("size", None), ("size", 4),
                                         ("names", ["a"]), ("names", ("a", "b")), ("anything", {1: 2})])
def test_values_that_fit_their_hint_pass(name, value):
    check_option_types("t", {name: value}, HINTS)


@pytest.mark.parametrize("name, value, says", [
    ("n", True, "must be an integer"),  # a bool is not a count
    ("n", 2.5, "must be an integer"),
    ("n", "five", "must be an integer"),
    ("x", "0.1", "must be a number"),
    ("flag", 1, "must be True/False"),
    ("mode", "c", "must be one of 'a', 'b'"),
    ("size", "4", "must be an integer or None"),
    ("names", "abc", "must be a list or tuple"),
])
def test_values_that_do_not_fit_are_refused_naming_the_type(name, value, says):
    with pytest.raises(ValueError, match=says):
        check_option_types("t", {name: value}, HINTS)


def test_describe_type_reads_unions():
    assert describe_type(int | None) == "an integer or None"


def test_registered_strategies_are_type_checked_from_their_signatures():
    with pytest.raises(ValueError, match="option k_nn='20' .* must be an integer"):
        check_options("typiclust", {"k_nn": "20"})
    with pytest.raises(ValueError, match="option eval_size=1.5 .* must be an integer or None"):
        check_options("mlmoc", {"eval_size": 1.5})  # options declared by a NamedTuple
    check_options("mlmoc", {"eval_size": 100, "batch": "greedy"}, budget=10)


def test_keys_typed_and_raw_are_accepted_anything_else_refused():
    check_key("key", jax.random.key(0))
    check_key("key", jax.random.PRNGKey(0))
    for bad in (0, np.zeros(2, np.float32), "key"):
        with pytest.raises(ValueError, match="must be a jax.random key"):
            check_key("key", bad)


@pytest.mark.parametrize("y, says", [
    (np.array([[0, 1]]), "must be 1-D"),
    (np.array(["a", "b"]), "holds <U1 values"),
    (np.array([0, 1, None], dtype=object), "holds object values"),
    (np.array([0.0, np.inf]), "NaN/inf label"),
    (np.array([0.0, 1.5]), "fractional"),
])
def test_label_values_say_what_is_wrong(y, says):
    with pytest.raises(ValueError, match=says):
        check_label_values("y", y)
    assert check_label_values("y", np.array([0.0, 2.0])).tolist() == [0.0, 2.0]


def test_bald_message_names_models_that_take_dropout():
    takers = [m for m in models.names() if "dropout_rate" in models.option_names(m)]
    named = re.search(r"\(([^()]*) take it\)", _DETERMINISTIC).group(1)
    assert sorted(n.strip() for n in named.replace(" and ", ", ").split(",")) == sorted(takers)
