"""Miss reasons, from the difference between a step's last definition and this one (pure)."""

from pybuild.builder.explain import describe_difference


def test_files_changed_added_removed_are_named_with_a_limit():
    old = {"a": "1", "b": "1", "gone": "1"}
    new = {"a": "2", "b": "1", "n1": "1", "n2": "1", "n3": "1", "n4": "1"}
    assert describe_difference({}, {}, old, new) == (
        "copied files changed: a; added: n1, n2, n3 and 1 more; removed: gone")


def test_environment_difference_names_variables():
    old = {"op": "RUN", "env": ["A=1", "B=2"]}
    new = {"op": "RUN", "env": ["A=1", "B=3", "C=4"]}
    assert describe_difference(old, new, None, None) == "environment changed (build args or ENV): B, C"


def test_other_fields():
    old = {"op": "RUN", "args": ["sh"], "user": None, "env": []}
    new = {"op": "RUN", "args": ["sh"], "user": "1000", "env": []}
    assert describe_difference(old, new, None, None) == "changed: the user"
