"""`images` and `ps` as scripts use them: REPOSITORY[:TAG], --filter, --format (docker's Go
template subset) and --no-trunc."""

from __future__ import annotations

import json

import pytest

from pybuild.commands._filters import bool_filter, label_match, parse_filters, path_match, reference_match
from pybuild.commands._format import Template
from pybuild.errors import UsageError


@pytest.mark.parametrize("pattern, text, expected", [
    ("busybox", "busybox", True), ("busy*", "busybox", True), ("*", "a/b", False), ("a/*", "a/b", True),
    ("a?c", "abc", True), ("a?c", "a/c", False), ("[ab]x", "bx", True), ("[^a]x", "ax", False),
    ("a\\*", "a*", True), ("a\\*", "ab", False), ("[", "[", False), ("app:1.*", "app:1.0", True),
])
def test_path_match_is_gos(pattern, text, expected):
    assert path_match(pattern, text) is expected


def test_reference_match_tries_name_tag_then_name():
    assert reference_match("app", "app", "1.0") and reference_match("app:1.0", "app", "1.0")
    assert not reference_match("app:2*", "app", "1.0") and not reference_match("ap", "app", "1.0")


def test_filter_parsing_and_errors():
    assert parse_filters(["dangling=true", "label=a=b", "label=c"], ("dangling", "label"), "images") == {
        "dangling": ["true"], "label": ["a=b", "c"]}
    with pytest.raises(UsageError, match="bad format of filter"):
        parse_filters(["dangling"], ("dangling",), "images")
    with pytest.raises(UsageError, match="invalid filter 'foo' \\(images knows dangling\\)"):
        parse_filters(["foo=1"], ("dangling",), "images")
    assert bool_filter({"dangling": ["TRUE"]}, "dangling") is True and bool_filter({}, "dangling") is None
    with pytest.raises(UsageError, match="true or false"):
        bool_filter({"dangling": ["yes"]}, "dangling")
    assert label_match(["a=b", "c"], {"a": "b", "c": ""}) and not label_match(["a=x"], {"a": "b"})


def test_template_subset():
    fields = {"Repository": "REPOSITORY", "Tag": "TAG", "ID": "IMAGE ID"}
    rows = [{"Repository": "app", "Tag": "1.0", "ID": "abc"}, {"Repository": "longer-name", "Tag": "x", "ID": "d"}]
    assert Template("{{.Repository}}:{{ .Tag }}", fields).lines(rows) == ["app:1.0", "longer-name:x"]
    assert Template("{{json .}}", fields).lines(rows[:1]) == ['{"Repository":"app","Tag":"1.0","ID":"abc"}']
    assert Template("{{json .ID}}", fields).lines(rows[:1]) == ['"abc"']
    assert Template("table {{.Repository}}\\t{{.ID}}", fields).lines(rows) == [
        "REPOSITORY    IMAGE ID", "app           abc", "longer-name   d"]
    # the whole Go template language, as docker's listings take it (the evaluator inspect -f uses)
    assert Template("{{if eq .Tag \"1.0\"}}{{upper .Repository}}{{else}}-{{end}}", fields).lines(rows) == ["APP", "-"]
    with pytest.raises(UsageError, match="no field 'Nope'"):
        Template("{{if .Nope}}x{{end}}", fields)
    assert Template("{{with .Tag}}{{.}}{{end}}", fields).lines(rows) == ["1.0", "x"]  # dot inside with: the tag
    with pytest.raises(UsageError, match="template parsing error"):
        Template("{{.ID", fields)
    with pytest.raises(UsageError, match="no field 'Nope'"):
        Template("{{.Nope}}", fields)


def test_images_reference_filter_and_format(cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nLABEL team=a\nRUN echo 1 > /one\n")
    cli("build", "-q", "-t", "app:1.0", str(tmp_path), check=True)
    (tmp_path / "Dockerfile").write_text("FROM busybox:latest\nRUN echo 2 > /two\n")
    dangling = cli("build", "-q", str(tmp_path), check=True).stdout.strip()

    def names(*args):
        return cli("images", *args, "--format", "{{.Repository}}:{{.Tag}}", check=True).stdout.split()

    assert sorted(names()) == ["<none>:<none>", "app:1.0", "busybox:latest"]
    assert names("app") == names("app:1.*") == names("-f", "reference=a*") == ["app:1.0"]
    assert names("nothing") == [] and names("app:2") == []
    assert names("-f", "dangling=true") == ["<none>:<none>"]
    assert sorted(names("-f", "dangling=false")) == ["app:1.0", "busybox:latest"]
    assert names("-f", "label=team=a") == ["app:1.0"] and names("-f", "label=team=b") == []
    assert "busybox:latest" not in names("-f", "since=busybox:latest")
    assert names("-f", "before=busybox:latest") == []
    assert cli("images", "-q", "--no-trunc", "-f", "dangling=true", check=True).stdout == dangling + "\n"
    row = json.loads(cli("images", "app", "--format", "{{json .}}", check=True).stdout)
    as_json = json.loads(cli("images", "app", "--format", "json", check=True).stdout)  # docker 23+
    # (CreatedSince may tick over between the two calls: compared apart)
    assert as_json.pop("CreatedSince").endswith(" ago") and row.pop("CreatedSince").endswith(" ago")
    assert as_json == row
    assert row["Repository"] == "app" and row["Digest"].startswith("sha256:") and len(row["ID"]) == 12
    table = cli("images", "--format", "table {{.Repository}}\\t{{.Size}}", check=True).stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "SIZE"] and len(table) == 4
    for bad, message in ((["-f", "foo=1"], "invalid filter 'foo'"), (["-f", "since=nope:1"], "No such image: nope:1"),
                         (["--format", "{{.Nope}}"], "no field 'Nope'")):
        res = cli("images", *bad)
        assert res.code != 0 and message in res.stderr and not res.stdout


def test_ps_filters_and_format(cli):
    for name, cmd in (("ok", "true"), ("three", "exit 3")):
        cli("run", "--network", "none", "--name", name, "busybox:latest", "sh", "-c", cmd)
    cli("run", "-d", "--network", "none", "--name", "up", "busybox:latest", "sleep", "60", check=True)
    try:
        def ps(*args):
            return cli("ps", *args, "--format", "{{.Names}}", check=True).stdout.split()

        assert ps() == ["up"] and ps("-a") == ["up", "three", "ok"]
        assert ps("-f", "status=exited") == ["three", "ok"]  # stopped ones without -a, as docker
        assert ps("-f", "exited=3") == ["three"] and ps("-f", "exited=0") == ["ok"]
        assert ps("-a", "-f", "name=^o") == ["ok"] and ps("-a", "-f", "name=e") == ["three"]
        assert ps("-a", "-f", "ancestor=busybox:latest", "-f", "status=running") == ["up"]
        by_id = cli("images", "-q", "--no-trunc", "busybox:latest", check=True).stdout.strip()
        cli("run", "--name", "byid", "--network", "none", by_id, "true", check=True)  # shown short, as docker
        assert cli("ps", "-a", "-f", "name=byid", "--format", "{{.Image}}", check=True).stdout == by_id[7:19] + "\n"
        cli("rm", "byid", check=True)
        full = cli("ps", "-q", "--no-trunc", check=True).stdout.split()
        assert len(full) == 1 and len(full[0]) == 64 and ps("-f", f"id={full[0][:5]}") == ["up"]
        row = json.loads(cli("ps", "--format", "{{json .}}", check=True).stdout)
        assert (row["State"], row["Networks"], row["Command"]) == ("running", "none", '"sleep 60"')
        res = cli("ps", "-f", "status=bogus")
        assert res.code != 0 and "invalid filter value" in res.stderr
    finally:
        cli("rm", "-f", "up", "ok", "three")
