"""Credentials (docker's ``config.json``) and the registry auth challenge flow.

Credentials are looked up as docker does: ``credHelpers[host]`` (a ``docker-credential-<name>``
program), then ``auths[host].auth`` (base64 ``user:password``), then ``credsStore`` (a
program for every host).  Docker Hub's key is ``https://index.docker.io/v1/``.

:class:`Authenticator` answers a registry's ``WWW-Authenticate`` challenge: ``Basic`` sends
the credentials; ``Bearer realm=..,service=..,scope=..`` fetches a token from the realm
(anonymously when there are no credentials), and keeps it for reuse by every later request
that needs the same scopes, until it expires.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pybuild.atomicfile import write_atomic
from pybuild.errors import PybuildError

__all__ = [
    "DOCKER_HUB_AUTH_KEY",
    "Authenticator",
    "Challenge",
    "Credentials",
    "CredentialsError",
    "DockerConfig",
    "merge_scopes",
    "parse_challenges",
]

DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")


class CredentialsError(PybuildError):
    """config.json or a credential helper failed; the message names the file or program."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # a password, or an identity token when username is "<token>"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials(username={self.username!r}, password=***)"


def _config_key(host: str) -> str:
    return DOCKER_HUB_AUTH_KEY if host in _HUB_HOSTS else host


def _strip_scheme(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key)
    return key.split("/", 1)[0]


class DockerConfig:
    """``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``).

    ``get`` never writes; ``store``/``erase`` rewrite the file atomically (mode 0600) or hand
    the secret to the configured credential helper, leaving every other key as it was.
    """

    def __init__(self, path: Path | None = None):
        if path is None:
            base = os.environ.get("DOCKER_CONFIG")
            path = Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CredentialsError(f"{self.path}: cannot read docker config: {exc}") from None
        if not isinstance(data, dict):
            raise CredentialsError(f"{self.path}: not a JSON object")
        return data

    def _helper_for(self, data: dict, host: str) -> str | None:
        helpers = data.get("credHelpers") or {}
        for key in (host, _config_key(host)):
            if isinstance(helpers.get(key), str):
                return helpers[key]
        store = data.get("credsStore")
        return store if isinstance(store, str) and store else None

    def get(self, host: str) -> Credentials | None:
        data = self._load()
        helpers = data.get("credHelpers") or {}
        helper = next((helpers[k] for k in (host, _config_key(host)) if isinstance(helpers.get(k), str)), None)
        if helper:
            return _helper_get(helper, _config_key(host))
        auths = data.get("auths") or {}
        entry = None
        for key, value in auths.items():
            if key in (host, _config_key(host)) or _strip_scheme(key) == host:
                entry = value
                break
        if isinstance(entry, dict) and (entry.get("auth") or entry.get("username")):
            return _decode_auth(entry, self.path, host)
        store = data.get("credsStore")
        if isinstance(store, str) and store:
            return _helper_get(store, _config_key(host))
        return None

    def store(self, host: str, creds: Credentials) -> str:
        """Save ``creds`` for ``host``; return where they went (the file or the helper)."""
        data = self._load()
        helper = self._helper_for(data, host)
        if helper:
            _helper_run(helper, "store", json.dumps({"ServerURL": _config_key(host), "Username": creds.username,
                                                     "Secret": creds.password}))
            data.setdefault("auths", {}).setdefault(_config_key(host), {})
            self._write(data)
            return f"docker-credential-{helper}"
        auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        data.setdefault("auths", {})[_config_key(host)] = {"auth": auth}
        self._write(data)
        return str(self.path)

    def erase(self, host: str) -> bool:
        """Forget ``host``'s credentials; False when there were none."""
        data = self._load()
        helper = self._helper_for(data, host)
        found = False
        if helper:
            try:
                _helper_run(helper, "erase", _config_key(host))
                found = True
            except CredentialsError:
                pass
        auths = data.get("auths") or {}
        for key in [k for k in auths if k in (host, _config_key(host)) or _strip_scheme(k) == host]:
            del auths[key]
            found = True
        if found:
            self._write(data)
        return found

    def _write(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(data, indent="\t").encode() + b"\n")
        os.chmod(self.path, 0o600)


def _decode_auth(entry: dict, path: Path, host: str) -> Credentials:
    if entry.get("auth"):
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise CredentialsError(f"{path}: auths[{host!r}].auth is not base64 of user:password") from None
        if not sep:
            raise CredentialsError(f"{path}: auths[{host!r}].auth is not base64 of user:password")
        return Credentials(user, password)
    return Credentials(str(entry.get("username")), str(entry.get("password", "")))


def _helper_run(helper: str, action: str, stdin: str) -> str:
    program = f"docker-credential-{helper}"
    if shutil.which(program) is None:
        raise CredentialsError(f"credential helper {program} (from docker's config.json) is not on PATH")
    try:
        proc = subprocess.run([program, action], input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"{program} {action}: {exc}") from None
    if proc.returncode != 0:
        message = (proc.stdout.strip() or proc.stderr.strip() or f"exit status {proc.returncode}")
        raise CredentialsError(f"{program} {action}: {message}")
    return proc.stdout


def _helper_get(helper: str, server: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        out = _helper_run(helper, "get", server)
    except CredentialsError as exc:
        if "credentials not found" in str(exc).lower():
            return None
        raise
    try:
        obj = json.loads(out)
        return Credentials(str(obj["Username"]), str(obj["Secret"]))
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CredentialsError(f"{program} get: output is not {{\"Username\":..,\"Secret\":..}} JSON") from None


# -- challenges -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Challenge:
    scheme: str                 # "basic" or "bearer" (lower case)
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenges(header: str) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` (RFC 7235): ``Bearer realm="..",service="..",scope=".."``."""
    out: list[Challenge] = []
    pos = 0
    header = header or ""
    while pos < len(header):
        m = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9_-]*)").match(header, pos)
        if not m:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(header, pos)
            if not pm:
                break
            value = pm.group(2) if pm.group(2) is not None else pm.group(3)
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = pm.end()
        out.append(Challenge(scheme, params))
    return out


def merge_scopes(scopes) -> tuple[str, ...]:
    """One scope per resource with the union of its actions, sorted (pure):
    ``repository:a:pull`` + ``repository:a:pull,push`` -> ``repository:a:pull,push``."""
    actions: dict[str, list[str]] = {}
    for scope in scopes:
        if not scope:
            continue
        resource, sep, acts = scope.rpartition(":")
        if not sep or not resource:
            actions.setdefault(scope, [])
            continue
        merged = actions.setdefault(resource, [])
        merged += [a for a in acts.split(",") if a and a not in merged]
    return tuple(sorted(f"{r}:{','.join(sorted(a))}" if a else r for r, a in actions.items()))


class Authenticator:
    """Authorization headers for one registry host; thread-safe.

    ``header(scopes)`` returns a cached header for these scopes (or None); ``answer(challenge,
    scopes)`` obtains one after a 401. Tokens are reused per scope set until they expire.
    """

    def __init__(self, host: str, credentials: Credentials | None, fetch_token):
        self.host = host
        self.credentials = credentials
        self._fetch_token = fetch_token  # (realm, params, credentials) -> (token, expires_in | None)
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._basic = False
        self._lock = threading.Lock()
        self._fetch_lock = threading.Lock()

    def header(self, scopes: tuple[str, ...]) -> str | None:
        with self._lock:
            if self._basic and self.credentials:
                return self.credentials.basic_header()
            cached = self._tokens.get(merge_scopes(scopes))
            if cached and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
        return None

    def answer(self, challenges: list[Challenge], scopes: tuple[str, ...]) -> str | None:
        """A header answering the first supported challenge, or None when we cannot answer."""
        for ch in challenges:
            if ch.scheme == "bearer" and ch.params.get("realm"):
                wanted = list(scopes)
                if ch.params.get("scope"):
                    wanted += ch.params["scope"].split(" ")
                key = merge_scopes(wanted)
                # One fetch per scope set: threads that met the same 401 at once wait for the first.
                with self._fetch_lock:
                    with self._lock:
                        cached = self._tokens.get(key)
                    if cached and cached[1] > time.monotonic() and not ch.params.get("error"):
                        return "Bearer " + cached[0]
                    token, expires_in = self._fetch_token(ch.params["realm"], ch.params.get("service"),
                                                          key, self.credentials)
                    lifetime = max(10.0, float(expires_in or 60) - 10)
                    with self._lock:
                        self._tokens[key] = (token, time.monotonic() + lifetime)
                        self._tokens[merge_scopes(scopes)] = (token, time.monotonic() + lifetime)
                return "Bearer " + token
            if ch.scheme == "basic":
                if not self.credentials:
                    return None
                with self._lock:
                    self._basic = True
                return self.credentials.basic_header()
        return None
