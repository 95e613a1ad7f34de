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


def test_remembered_environment_keeps_names_not_values(tmp_path):
    from pybuild.builder.explain import MissExplainer

    ex = MissExplainer(tmp_path)
    ex.remember("parent", "RUN make", {"args": ["make"], "env": ["TOKEN=hunter2-secret", "A=1"]}, None)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache" / "last").iterdir())
    assert b"hunter2-secret" not in stored and b"TOKEN=sha256:" in stored
    assert ex.explain("parent", "RUN make", {"args": ["make"], "env": ["TOKEN=other", "A=1"]},
                      None) == "environment changed (build args or ENV): TOKEN"
    assert ex.explain("parent", "RUN make", {"args": ["make"], "env": ["TOKEN=hunter2-secret", "A=1"]},
                      None).startswith("same inputs")


def test_miss_reason_names_a_changed_file_of_a_directory_source_once(cli, tmp_path):
    """Regression: `COPY src/ /app/` used to report `src/a.py/a.py`."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.py").write_text("1\n")
    (tmp_path / "src/b.py").write_text("2\n")
    (tmp_path / "Dockerfile").write_text("FROM busybox\nCOPY src/ /app/\n")
    cli("build", str(tmp_path), check=True)
    (tmp_path / "src/a.py").write_text("changed\n")
    out = cli("build", "--progress", "plain", str(tmp_path), check=True).stderr
    assert "cache miss: copied files changed: src/a.py\n" in out
