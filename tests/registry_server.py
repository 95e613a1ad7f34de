"""Real registries for tests: Debian's `docker-registry` (CNCF distribution) on 127.0.0.1.

`start_registry(...)` runs one instance on a free port with a temp config and storage: plain
HTTP, htpasswd auth behind TLS (a CA made here with openssl), or `auth: token` backed by
`TokenServer`, a small issuer of RS256 JWTs signed with a key made here. Every process and
thread started is stopped by `stop()` (fixtures call it).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, **kw)


@dataclass
class Certs:
    ca: Path            # CA certificate (what clients must trust)
    cert: Path          # server certificate for 127.0.0.1 / localhost, signed by the CA
    key: Path


def make_certs(directory: Path) -> Certs:
    """A CA and a server certificate for IP 127.0.0.1 and localhost (openssl)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=pybuild test CA",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
         str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"),
         "-out", str(d / "server.crt"))
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key")


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line (apache2-utils' htpasswd -B; distribution accepts only bcrypt)."""
    return _run("htpasswd", "-Bbn", user, password, text=True).stdout.strip()


@dataclass
class Registry:
    host: str                       # 127.0.0.1:PORT
    root: Path
    process: subprocess.Popen
    log: Path
    certs: Certs | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def kill(self) -> None:
        self.stop()


def start_registry(root: Path, *, certs: Certs | None = None, htpasswd: str | None = None,
                   token: TokenServer | None = None, port: int | None = None) -> Registry:
    """Start `docker-registry serve` on 127.0.0.1 and wait until it accepts connections."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
             "storage:", "  filesystem:", f"    rootdirectory: {root / 'data'}", "  delete:", "    enabled: true",
             "http:", f"  addr: 127.0.0.1:{port}", f"  secret: {uuid.uuid4().hex}"]
    if certs:
        lines += ["  tls:", f"    certificate: {certs.cert}", f"    key: {certs.key}"]
    if htpasswd:
        (root / "htpasswd").write_text(htpasswd + "\n")
        lines += ["auth:", "  htpasswd:", "    realm: pybuild-test", f"    path: {root / 'htpasswd'}"]
    elif token:
        lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                  f"    issuer: {token.issuer}", f"    rootcertbundle: {token.cert}"]
    (root / "config.yml").write_text("\n".join(lines) + "\n")
    log = root / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    reg = Registry(f"127.0.0.1:{port}", root, proc, log, certs)
    deadline = time.monotonic() + 60
    while True:  # readiness poll (not an assertion on time)
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return reg
        except OSError:
            if time.monotonic() > deadline:
                reg.stop()
                raise RuntimeError(f"docker-registry did not listen on {port}: {log.read_text()[-2000:]}")
            time.sleep(0.05)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A registry token issuer (docker token auth spec): GET /token?service=&scope=... with
    optional Basic credentials. Valid `users` get every requested action; anonymous clients get
    `pull` on repositories under `public/` only; wrong credentials get 401."""

    directory: Path
    users: dict[str, str]
    service: str = "pybuild-test-registry"
    issuer: str = "pybuild-test-issuer"
    requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = Path(self.directory)
        d.mkdir(parents=True, exist_ok=True)
        self.key = d / "token.key"
        self.cert = d / "token.crt"
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=pybuild token issuer", "-keyout", str(self.key), "-out", str(self.cert))
        der = _run("openssl", "x509", "-in", str(self.cert), "-outform", "DER").stdout
        self._x5c = base64.b64encode(der).decode()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = _run("openssl", "dgst", "-sha256", "-sign", str(self.key), input=signing_input.encode()).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlparse(h.path).query)
        user = None
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(name) != password:
                h.send_response(401)
                h.send_header("Content-Type", "application/json")
                h.end_headers()
                h.wfile.write(b'{"details":"incorrect username or password"}')
                return
            user = name
        scopes = query.get("scope", [])
        with self._lock:
            self.requests.append({"user": user, "scopes": scopes, "service": query.get("service", [None])[0]})
        access = []
        for scope in scopes:
            for part in scope.split(" "):
                kind, _, rest = part.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository":
                    continue
                wanted = [a for a in actions.split(",") if a]
                granted = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
                access.append({"type": "repository", "name": name, "actions": granted})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        body = json.dumps({"token": self._sign(claims), "expires_in": 300}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def have_registry() -> bool:
    return Path(REGISTRY_BIN).exists() and shutil.which("openssl") is not None
