"""`pybuild login [-u USER] [-p PASS | --password-stdin] REGISTRY`: check and save credentials.

Credentials go where docker keeps them (``~/.docker/config.json``, or its credential helper), so
docker, podman, skopeo and pybuild share one login.
"""

from __future__ import annotations

NAME = "login"


def add_parser(sub) -> None:
    p = sub.add_parser("login", help="log in to a registry (saved in ~/.docker/config.json)",
                       description="Like docker login. Example: echo $TOKEN | pybuild login -u ci "
                                   "--password-stdin registry.example.com")
    p.add_argument("registry", nargs="?", default="docker.io", help="host[:port] (default docker.io)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin: argv is visible to others)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def registry_host(text: str) -> str:
    """`https://host:5000/v2/` or `host:5000` -> `host:5000`; Docker Hub's aliases -> docker.io."""
    import re

    host = re.sub(r"^[a-z]+://", "", text.strip()).split("/", 1)[0]
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io", "docker.io") else host


def run(args, store_factory) -> int:
    import getpass
    import sys

    from pybuild.errors import UsageError
    from pybuild.registry.auth import Credentials, DockerConfig
    from pybuild.registry.client import RegistryClient, api_host

    host = registry_host(args.registry)
    if not host:
        raise UsageError(f"login: invalid registry {args.registry!r}")
    if args.password is not None and args.password_stdin:
        raise UsageError("login: --password and --password-stdin are mutually exclusive")
    username = args.username
    if username is None:
        if not sys.stdin.isatty() or args.password_stdin:
            raise UsageError("login: give --username (-u)")
        username = input("Username: ").strip()
    if args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise UsageError("login: give --password-stdin (and the password on standard input)")
    if not username or not password:
        raise UsageError("login: username and password must not be empty")
    creds = Credentials(username, password)
    client = RegistryClient(api_host(host), auth_host=host, credentials=creds)
    try:
        client.ping()  # raises Unauthorized with a clear message when the registry rejects them
    finally:
        client.close()
    where = DockerConfig().store(host, creds)
    print(f"Login Succeeded (credentials for {host} saved in {where})")
    return 0
