"""Pure parts of the registry client: docker's name normalisation, auth challenges and scopes,
platform selection, the registries config, docker's config.json credentials."""

from __future__ import annotations

import base64
import json

import pytest
from pybuild.oci.reference import InvalidReference, normalize_reference, parse_reference
from pybuild.registry.auth import (
    Credentials,
    DockerConfig,
    merge_scopes,
    parse_challenges,
)
from pybuild.registry.client import RegistryError, api_host
from pybuild.registry.config import RegistryConfigError, load_config
from pybuild.registry.pull import select_platform

from pybuild.cli import _pull_policy_flags

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, full, familiar", [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("host:5000/a/b:t", "host:5000/a/b:t", "host:5000/a/b:t"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
    ("quay.io/org/app@" + DIGEST, "quay.io/org/app@" + DIGEST, "quay.io/org/app@" + DIGEST),
    ("127.0.0.1:5000/x:1@" + DIGEST, "127.0.0.1:5000/x:1@" + DIGEST, "127.0.0.1:5000/x:1@" + DIGEST),
])
def test_docker_normalisation(text, full, familiar):
    ref = normalize_reference(text)
    assert str(ref) == full
    assert str(ref.local()) == familiar
    assert parse_reference(text).name == parse_reference(str(ref.local())).name or "docker.io" in text


def test_normalisation_keeps_the_plain_parser_unchanged_and_rejects_bad_names():
    assert parse_reference("busybox").name == "busybox"  # no normalisation for other callers
    with pytest.raises(InvalidReference):
        normalize_reference("Upper/case")
    with pytest.raises(InvalidReference):
        normalize_reference("a@sha256:short")
    assert api_host("docker.io") == "registry-1.docker.io" and api_host("h:1") == "h:1"


def test_parse_challenges():
    (bearer,) = parse_challenges('Bearer realm="https://auth.example/token",service="registry.example",'
                                 'scope="repository:a/b:pull,push"')
    assert bearer.scheme == "bearer"
    assert bearer.params == {"realm": "https://auth.example/token", "service": "registry.example",
                             "scope": "repository:a/b:pull,push"}
    basic, = parse_challenges('Basic realm="pybuild test"')
    assert basic.scheme == "basic" and basic.params["realm"] == "pybuild test"
    two = parse_challenges('Basic realm="x", Bearer realm="https://t/token",error="insufficient_scope"')
    assert [c.scheme for c in two] == ["basic", "bearer"] and two[1].params["error"] == "insufficient_scope"


def test_merge_scopes():
    assert merge_scopes(["repository:a:pull", "repository:a:push,pull", "repository:b:pull"]) == (
        "repository:a:pull,push", "repository:b:pull")


INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
    {"digest": "sha256:" + "4" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
]}


def test_select_platform():
    assert select_platform(INDEX, "linux/amd64")["digest"].endswith("4" * 64)
    assert select_platform(INDEX, "linux/arm64/v8")["digest"].endswith("2" * 64)
    assert select_platform(INDEX, "linux/arm/v7")["digest"].endswith("1" * 64)
    with pytest.raises(RegistryError, match=r"no image for linux/s390x .*linux/amd64, linux/arm/v7, linux/arm64"):
        select_platform(INDEX, "linux/s390x")


def test_registries_config(tmp_path, monkeypatch):
    path = tmp_path / "registries.toml"
    path.write_text('[registry."docker.io"]\nmirrors = ["mirror.local:5000", "https://m2.example/"]\n'
                    '[registry."ci.internal:5000"]\ninsecure = true\n')
    monkeypatch.setenv("PYBUILD_CONFIG", str(path))
    cfg = load_config()
    assert cfg.mirrors_for("docker.io") == ("mirror.local:5000", "https://m2.example")
    assert cfg.is_insecure("ci.internal:5000") and not cfg.is_insecure("docker.io")
    assert cfg.allows_plain_http("127.0.0.1:5000") and cfg.allows_plain_http("localhost")
    assert cfg.allows_plain_http("ci.internal:5000") and not cfg.allows_plain_http("quay.io")
    path.write_text('[registry."x"]\nmirors = []\n')
    with pytest.raises(RegistryConfigError, match=r"registries.toml: \[registry.\"x\"\]: unknown key 'mirors'"):
        load_config()
    path.write_text('[registry."x"\n')
    with pytest.raises(RegistryConfigError, match="registries.toml"):
        load_config()
    monkeypatch.setenv("PYBUILD_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(RegistryConfigError, match="no such file"):
        load_config()


def test_docker_config_auths(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "https://reg.example:5000/v2/": {"auth": base64.b64encode(b"u:p:with:colons").decode()},
        "bad.example": {"auth": "not base64!"}}, "other": {"kept": True}}))
    cfg = DockerConfig(path)
    assert cfg.get("docker.io") == Credentials("hub", "pw")
    assert cfg.get("reg.example:5000") == Credentials("u", "p:with:colons")
    assert cfg.get("nowhere.example") is None
    with pytest.raises(Exception, match="not base64"):
        cfg.get("bad.example")
    assert "pw" not in repr(cfg.get("docker.io"))
    cfg.store("new.example", Credentials("n", "s"))
    data = json.loads(path.read_text())
    assert data["other"] == {"kept": True} and base64.b64decode(data["auths"]["new.example"]["auth"]) == b"n:s"
    assert cfg.erase("new.example") and not cfg.erase("new.example")


def test_pull_flag_rewriting_stops_at_a_containers_command():
    assert _pull_policy_flags(["build", "--pull=never", "."]) == ["build", "--pull-policy=never", "."]
    assert _pull_policy_flags(["build", "--pull", "."]) == ["build", "--pull", "."]
    assert _pull_policy_flags(["run", "img", "x", "--pull=1"]) == ["run", "img", "x", "--pull=1"]
