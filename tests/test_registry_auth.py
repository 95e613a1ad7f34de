"""Registry auth against real registries: htpasswd behind TLS (a CA made by the test, trusted via
certs.d), and token auth backed by the suite's token server (Bearer flow)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from pybuild.registry.client import Unauthorized
from pybuild.registry.push import push
from registry_server import (
    TokenServer,
    have_registry,
    htpasswd_line,
    make_certs,
    start_registry,
)

from pybuild.store import Store

pytestmark = [pytest.mark.registry,
              pytest.mark.skipif(not have_registry(), reason="docker-registry not installed (.ci/run installs it)")]

USER, PASSWORD = "ci-user", "s3cret-pass"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-registry")
    reg = start_registry(d / "reg", certs=make_certs(d / "certs"), htpasswd=htpasswd_line(USER, PASSWORD))
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(d / "tokens", users={USER: PASSWORD})
    reg = start_registry(d / "reg", token=tokens)
    yield reg, tokens
    reg.stop()
    tokens.stop()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("PYBUILD_CONFIG", str(tmp_path / "registries.toml"))
    (tmp_path / "registries.toml").write_text("")
    return h


def trust(home: Path, reg) -> Path:
    d = home / ".config" / "pybuild" / "certs.d" / reg.host
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(reg.certs.ca.read_bytes())
    return d


def docker_config(home: Path) -> dict:
    return json.loads((home / ".docker" / "config.json").read_text())


def test_tls_needs_the_ca_then_login_push_pull_logout(cli, tls_registry, home, tmp_path):
    reg = tls_registry
    res = cli("pull", f"{reg.host}/secure/bb:1")
    assert res.code == 1 and "TLS certificate not trusted" in res.stderr and "certs.d" in res.stderr
    assert "Traceback" not in res.stderr
    cert_dir = trust(home, reg)

    res = cli("push", "busybox:latest", f"{reg.host}/secure/bb:1")
    assert res.code == 1 and f"unauthorized: login to {reg.host} first" in res.stderr

    res = cli("login", "-u", USER, "--password-stdin", reg.host, input="wrong-password\n")
    assert res.code == 1 and "unauthorized" in res.stderr
    assert not (home / ".docker" / "config.json").exists()

    res = cli("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD + "\n", check=True)
    assert "Login Succeeded" in res.stdout
    auth = docker_config(home)["auths"][reg.host]["auth"]
    assert base64.b64decode(auth).decode() == f"{USER}:{PASSWORD}"
    assert oct((home / ".docker" / "config.json").stat().st_mode & 0o777) == "0o600"

    res = cli("push", "busybox:latest", f"{reg.host}/secure/bb:1", check=True)
    digest = Store.open(cli.root).images.resolve("busybox:latest")
    assert f"digest: {digest}" in res.stdout
    inspected = subprocess.run(["skopeo", "inspect", "--cert-dir", str(cert_dir), "--creds", f"{USER}:{PASSWORD}",
                                f"docker://{reg.host}/secure/bb:1"], capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Digest"] == digest

    fresh = type(cli)(tmp_path / "fresh")
    fresh("pull", f"{reg.host}/secure/bb:1", check=True)
    assert Store.open(fresh.root).images.resolve(f"{reg.host}/secure/bb:1") == digest

    res = cli("logout", reg.host, check=True)
    assert "Removing login credentials" in res.stdout and reg.host not in docker_config(home).get("auths", {})
    res = fresh("pull", f"{reg.host}/secure/bb:1")
    assert res.code == 1 and f"unauthorized: login to {reg.host} first" in res.stderr


def test_credential_helper_programs(cli, tls_registry, home, tmp_path, monkeypatch):
    """credHelpers / credsStore: docker-credential-<name> get/store/erase with docker's JSON protocol."""
    reg = tls_registry
    trust(home, reg)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vault = tmp_path / "vault.json"
    helper = bin_dir / "docker-credential-fake"
    helper.write_text(f"""#!/usr/bin/env python3
import json, sys, pathlib
vault = pathlib.Path({str(vault)!r})
data = json.loads(vault.read_text()) if vault.exists() else {{}}
action = sys.argv[1]
if action == "get":
    server = sys.stdin.read().strip()
    if server not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({{"ServerURL": server, "Username": data[server][0], "Secret": data[server][1]}}))
elif action == "store":
    req = json.loads(sys.stdin.read())
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
    vault.write_text(json.dumps(data))
elif action == "erase":
    data.pop(sys.stdin.read().strip(), None)
    vault.write_text(json.dumps(data))
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"credsStore": "fake"}))

    cli("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD, check=True)
    assert json.loads(vault.read_text()) == {reg.host: [USER, PASSWORD]}
    assert "auth" not in docker_config(home)["auths"].get(reg.host, {})  # the secret is not in the file
    cli("push", "busybox:latest", f"{reg.host}/helper/bb:1", check=True)

    # credHelpers for this host wins over auths and credsStore
    (home / ".docker" / "config.json").write_text(json.dumps({
        "credHelpers": {reg.host: "fake"},
        "auths": {reg.host: {"auth": base64.b64encode(b"ci-user:wrong").decode()}}}))
    cli("pull", f"{reg.host}/helper/bb:1", check=True)
    cli("logout", reg.host, check=True)
    assert json.loads(vault.read_text()) == {}


def test_bearer_token_flow_with_reuse_and_anonymous_tokens(cli, token_registry, home, tmp_path):
    reg, tokens = token_registry
    store = Store.open(cli.root)
    with pytest.raises(Unauthorized, match=f"login to {reg.host} first"):
        push(store, "busybox:latest", f"{reg.host}/public/bb:1", progress=lambda line: None)

    cli("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD, check=True)
    tokens.requests.clear()
    result = push(store, "busybox:latest", f"{reg.host}/public/bb:1", progress=lambda line: None)
    assert result.stats.uploaded == 2
    push_scope = [r for r in tokens.requests if r["scopes"] == ["repository:public/bb:pull,push"]]
    assert len(push_scope) == 1 and push_scope[0]["user"] == USER  # one token, reused by every request
    assert all(r["service"] == tokens.service for r in tokens.requests)
    push(store, "busybox:latest", f"{reg.host}/private/bb:1", progress=lambda line: None)

    # anonymous: the token server grants pull on public/* only
    (home / ".docker" / "config.json").unlink()
    fresh = type(cli)(tmp_path / "fresh")
    tokens.requests.clear()
    fresh("pull", f"{reg.host}/public/bb:1", check=True)
    assert tokens.requests and all(r["user"] is None for r in tokens.requests)
    res = fresh("pull", f"{reg.host}/private/bb:1")
    assert res.code == 1 and f"unauthorized: login to {reg.host} first" in res.stderr
    assert "Traceback" not in res.stderr

    res = cli("login", "-u", USER, "--password-stdin", reg.host, input="nope")
    assert res.code == 1 and "rejected the credentials" in res.stderr


def test_insecure_registry_accepts_an_untrusted_certificate(cli, tls_registry, home, tmp_path):
    reg = tls_registry
    res = cli("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD)
    assert res.code == 1 and "TLS certificate not trusted" in res.stderr
    (tmp_path / "registries.toml").write_text(f'[registry."{reg.host}"]\ninsecure = true\n')
    cli("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD, check=True)
    cli("push", "busybox:latest", f"{reg.host}/insecure/bb:1", check=True)
