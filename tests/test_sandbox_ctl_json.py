"""The sandbox init's own JSON writer (it avoids importing json at every start): what it
writes, json.loads reads back equal, for every kind of value the control messages carry."""

from __future__ import annotations

import json

import pytest
from pybuild.sandbox._init import to_json


@pytest.mark.parametrize("value", [
    {"stubs": ["/tmp/x/root/etc/hosts", "/tmp/x/root/run/secrets"]},
    {"exit": 0, "signal": None},
    {"exit": 137, "signal": 9, "oom": True, "ok": False},
    {"error": 'chdir to cwd \'/nope\': No such file or directory\n"quoted"\\back\tslash\x00\x1f'},
    {"error": "naïve ünïcode → ✓ 日本"},
    {"stubs": ["/tmp/bad-\udcff-name", "\ud800"]},  # undecodable file names (surrogateescape)
    {"nested": [[1, 2.5, -3], {"k": [None, True]}], "empty": [], "e": {}},
])
def test_to_json_round_trips_through_json_loads(value):
    text = to_json(value)
    assert json.loads(text) == value
    assert json.loads(text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")) == value


def test_to_json_refuses_what_json_cannot_carry():
    with pytest.raises(TypeError):
        to_json({"x": object()})
