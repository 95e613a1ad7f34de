"""HTTP to one registry: endpoint discovery (HTTPS, or plain HTTP where allowed), TLS trust,
retries with backoff, timeouts, and the auth challenge round trip.

Every failure a user can cause or meet (refused connection, bad certificate, 401/403/404,
a registry that keeps failing) is raised as :class:`RegistryError` with a one-line message
naming the registry; callers never see a requests exception.
"""

from __future__ import annotations

import atexit
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from pybuild.errors import PybuildError

from .auth import Authenticator, Credentials, DockerConfig, parse_challenges
from .config import RegistryConfig, load_config

__all__ = ["Body", "NotFound", "RegistryClient", "RegistryError", "Unauthorized", "api_host"]

DEFAULT_TIMEOUT = (15.0, 120.0)       # connect, read (seconds between bytes)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "pybuild (+registry client)"
# A request body, or something that makes a fresh one: retries must resend it from the start.
Body = bytes | Callable[[], Iterable[bytes]] | None


class RegistryError(PybuildError):
    """A registry operation failed; the message is one line naming the registry."""


class Unauthorized(RegistryError):
    """401 after answering the challenge (or no credentials to answer it with), or 403."""


class NotFound(RegistryError):
    """404: no such repository, manifest, tag or blob."""


def api_host(registry: str) -> str:
    """The host to talk to: Docker Hub's API lives on registry-1.docker.io."""
    return "registry-1.docker.io" if registry == "docker.io" else registry


def _error_text(resp: requests.Response) -> str:
    """The registry's error list (``{"errors": [{"code", "message"}]}``) as one line."""
    try:
        errors = resp.json().get("errors") or []
        parts = [f"{e.get('code', '').lower() or 'error'}: {e.get('message', '')}".rstrip(": ")
                 for e in errors if isinstance(e, dict)]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


_BUNDLES: dict[tuple, str] = {}
_BUNDLE_LOCK = threading.Lock()


def _system_ca_file() -> str | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def tls_settings(host: str, config: RegistryConfig) -> tuple[str | bool, tuple[str, str] | None]:
    """(``verify``, ``cert``) for requests: the system CAs plus every ``*.crt`` in
    ``<certs_dir>/<host>/`` (docker's certs.d layout), and ``client.cert``+``client.key``.

    The combined CA bundle is a temp file made once per process and removed at exit.
    """
    extra: list[Path] = []
    client_cert = None
    for base in config.certs_dirs:
        d = base / host
        if not d.is_dir():
            continue
        extra += sorted(p for p in d.glob("*.crt") if p.is_file())
        for cert in sorted(d.glob("*.cert")):
            key = cert.with_suffix(".key")
            if key.is_file():
                client_cert = (str(cert), str(key))
    system = _system_ca_file()
    if not extra:
        return (system or True), client_cert
    key = (system, *map(str, extra))
    with _BUNDLE_LOCK:
        if key not in _BUNDLES:
            fd, path = tempfile.mkstemp(prefix="pybuild-ca-", suffix=".pem")
            with os.fdopen(fd, "wb") as f:
                for p in ([Path(system)] if system else []) + extra:
                    f.write(p.read_bytes().rstrip(b"\n") + b"\n")
            atexit.register(lambda p=path: os.path.exists(p) and os.unlink(p))
            _BUNDLES[key] = path
        return _BUNDLES[key], client_cert


class RegistryClient:
    """Requests to one registry endpoint (a registry or a mirror of one).

    ``endpoint`` is ``host[:port]`` or a URL (``http://mirror:5000``); ``auth_host`` is the name
    credentials are stored under (``docker.io`` for Docker Hub).  The scheme is chosen on first
    use: HTTPS with verification; plain HTTP only when the server does not speak TLS and the host
    is loopback or listed insecure; an insecure host also accepts an unverified certificate.
    Thread-safe: layers are fetched through one client from several threads.
    """

    def __init__(self, endpoint: str, *, auth_host: str | None = None, config: RegistryConfig | None = None,
                 docker_config: DockerConfig | None = None, credentials: Credentials | None = None,
                 retries: int = 4, timeout: tuple[float, float] = DEFAULT_TIMEOUT, backoff: float = 0.25):
        self.config = config if config is not None else load_config()
        scheme, _, rest = endpoint.rpartition("://")
        self.host = rest.rstrip("/")
        self._scheme: str | None = scheme or None
        self.auth_host = auth_host or self.host
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self._verify, self._cert = tls_settings(self.host, self.config)
        self._ping_lock = threading.Lock()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self._credentials_given = credentials
        self._docker_config = docker_config
        self._auth: Authenticator | None = None

    # -- endpoint -----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._scheme is None:
            with self._ping_lock:
                if self._scheme is None:
                    self._scheme = self._discover_scheme()
        return f"{self._scheme}://{self.host}"

    def _discover_scheme(self) -> str:
        plain_ok = self.config.allows_plain_http(self.host)
        try:
            self._send("GET", f"https://{self.host}/v2/", timeout=self.timeout, retry=False)
            return "https"
        except requests.exceptions.SSLError as exc:
            text = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
                if self.config.is_insecure(self.host):
                    self._verify = False
                    return "https"
                raise RegistryError(
                    f"{self.host}: TLS certificate not trusted ({_short(exc)}); put the registry's CA in "
                    f"/etc/docker/certs.d/{self.host}/ca.crt or ~/.config/pybuild/certs.d/{self.host}/ca.crt"
                ) from None
            if not plain_ok:
                raise RegistryError(f"{self.host}: TLS handshake failed ({_short(exc)}); plain HTTP is only used "
                                    "for localhost or registries listed insecure in the registries config") from None
            return "http"
        except requests.exceptions.ConnectionError as exc:
            if plain_ok:
                return "http"  # e.g. port 80 open, 443 closed; a refusal is reported on the real request
            raise RegistryError(f"cannot connect to {self.host}: {_short(exc)}") from None

    # -- auth -------------------------------------------------------------------------------------
    @property
    def auth(self) -> Authenticator:
        if self._auth is None:
            creds = self._credentials_given
            if creds is None:
                creds = (self._docker_config or DockerConfig()).get(self.auth_host)
            self._auth = Authenticator(self.auth_host, creds, self._fetch_token)
        return self._auth

    def _fetch_token(self, realm: str, service: str | None, scopes: tuple[str, ...],
                     creds: Credentials | None) -> tuple[str, float | None]:
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params += [("scope", s) for s in scopes if s]
        headers = {"Authorization": creds.basic_header()} if creds else {}
        realm_host = requests.utils.urlparse(realm).netloc
        verify, cert = tls_settings(realm_host, self.config)
        if realm_host == self.host and self._verify is False:
            verify = False
        try:
            resp = self._send("GET", realm, params=params, headers=headers, verify=verify, cert=cert)
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"{self.host}: cannot get a token from {realm}: {_short(exc)}") from None
        if resp.status_code in (401, 403):
            raise Unauthorized(f"unauthorized: {self.auth_host}: the token server rejected the "
                               + ("credentials (check `pybuild login`)" if creds else
                                  f"anonymous request; login to {self.auth_host} first"))
        if resp.status_code != 200:
            raise RegistryError(f"{self.host}: token server {realm}: {_error_text(resp)}")
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise RegistryError(f"{self.host}: token server {realm} answered without a token")
        return token, body.get("expires_in")

    # -- requests ---------------------------------------------------------------------------------
    def _send(self, method: str, url: str, *, retry: bool = True, body: Body = None,
              verify=None, cert=None, **kw) -> requests.Response:
        """One logical request with retries on dropped connections, timeouts, 429 and 5xx."""
        kw.setdefault("timeout", self.timeout)
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            data = body() if callable(body) else body
            try:
                resp = self.session.request(method, url, data=data,
                                            verify=self._verify if verify is None else verify,
                                            cert=self._cert if cert is None else cert, **kw)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                _close(data)
                if isinstance(exc, requests.exceptions.SSLError) or attempt + 1 >= attempts:
                    raise
                time.sleep(self.backoff * 2 ** attempt)
                continue
            except BaseException:
                _close(data)
                raise
            _close(data)  # the body is sent once a response is in
            if resp.status_code in RETRY_STATUSES and attempt + 1 < attempts:
                wait = self.backoff * 2 ** attempt
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    wait = min(float(retry_after), 30.0)
                resp.close()
                time.sleep(wait)
                continue
            return resp
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, scopes: tuple[str, ...], ok: Iterable[int] = (200,),
                body: Body = None, what: str = "", **kw) -> requests.Response:
        """``method`` on ``path`` (``/v2/...`` or an absolute upload URL), authenticated for
        ``scopes``. Returns a response whose status is in ``ok``; otherwise raises RegistryError
        (``NotFound`` on 404 when 404 is not in ``ok``, ``Unauthorized`` on 401/403)."""
        url = path if "://" in path else self.base_url + path
        headers = dict(kw.pop("headers", None) or {})
        what = what or f"{method} {path}"
        auth = self.auth.header(scopes)
        if auth:
            headers["Authorization"] = auth
        try:
            resp = self._send(method, url, body=body, headers=headers, **kw)
            if resp.status_code == 401:
                challenges = parse_challenges(resp.headers.get("WWW-Authenticate", ""))
                resp.close()
                answer = self.auth.answer(challenges, scopes)
                if answer is None:
                    raise Unauthorized(f"unauthorized: login to {self.auth_host} first (`pybuild login "
                                       f"{self.auth_host}`)")
                headers["Authorization"] = answer
                resp = self._send(method, url, body=body, headers=headers, **kw)
        except requests.exceptions.SSLError as exc:
            raise RegistryError(f"{self.host}: TLS error: {_short(exc)}") from None
        except requests.exceptions.ConnectionError as exc:
            raise RegistryError(f"cannot connect to {self.host}: {_short(exc)}") from None
        except requests.exceptions.Timeout:
            raise RegistryError(f"{self.host}: timed out during {what}") from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"{self.host}: {what}: {_short(exc)}") from None
        if resp.status_code in ok:
            return resp
        text = _error_text(resp)
        resp.close()
        if resp.status_code == 401:
            if self.auth.credentials is None:
                raise Unauthorized(f"unauthorized: login to {self.auth_host} first (`pybuild login {self.auth_host}`)")
            raise Unauthorized(f"unauthorized: {self.auth_host} rejected the credentials for {what}: {text}")
        if resp.status_code == 403:
            raise Unauthorized(f"denied: {self.auth_host} refused {what}: {text}")
        if resp.status_code == 404:
            raise NotFound(f"not found: {self.host}: {what}: {text}")
        raise RegistryError(f"{self.host}: {what} failed: {text}")

    def ping(self) -> None:
        """Check that the endpoint is a registry and that our credentials (if any) are accepted."""
        self.request("GET", "/v2/", scopes=(), what="login check")

    def close(self) -> None:
        self.session.close()


def _close(data) -> None:
    close = getattr(data, "close", None)
    if callable(close):
        close()


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 exception, without the noise."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "Temporary failure in name resolution",
                   "CERTIFICATE_VERIFY_FAILED", "Connection reset by peer", "Read timed out",
                   "RemoteDisconnected", "Connection aborted", "WRONG_VERSION_NUMBER"):
        if marker in text:
            if marker == "CERTIFICATE_VERIFY_FAILED":
                i = text.find("certificate verify failed")
                return text[i:].split(")")[0] if i >= 0 else "certificate verify failed"
            return marker[0].lower() + marker[1:]
    return text.splitlines()[0][:200] if text else type(exc).__name__
