"""The cache-key format is a contract with every store in use: a change to it (canonical JSON,
the version tag, the payload's shape) turns every user's next build into a full rebuild. These
golden keys make such a change deliberate: bump KEY_VERSION and update them together."""

from __future__ import annotations

from pybuild.builder.keys import KEY_VERSION, step_key


def test_key_format_is_pinned():
    assert KEY_VERSION == "pybuild.v2"
    assert step_key(None, {"op": "RUN", "cmd": ["sh", "-c", "make"], "env": {"PATH": "/bin"}, "user": ""}) == (
        "sha256:2872533828f0c898957aaafd0ed30f89e94fade71dae25cab3b4516e3053470f")
    assert step_key("sha256:" + "0" * 64, {"op": "WORKDIR", "path": "/app", "user": "app"}) == (
        "sha256:1377fe1ebced28dfe09fd3617850d5dffdec5a8477880594214165b70015f396")


def test_key_ignores_dict_order_but_not_values():
    a = step_key(None, {"op": "RUN", "env": {"A": "1", "B": "2"}})
    assert a == step_key(None, {"env": {"B": "2", "A": "1"}, "op": "RUN"})
    assert a != step_key(None, {"op": "RUN", "env": {"A": "1", "B": "3"}})
    assert a != step_key("sha256:" + "1" * 64, {"op": "RUN", "env": {"A": "1", "B": "2"}})
