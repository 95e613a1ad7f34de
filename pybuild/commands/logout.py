"""`pybuild logout [REGISTRY]`: forget the saved credentials of a registry."""

from __future__ import annotations

NAME = "logout"


def add_parser(sub) -> None:
    p = sub.add_parser("logout", help="remove a registry's saved credentials",
                       description="Like docker logout. Example: pybuild logout registry.example.com")
    p.add_argument("registry", nargs="?", default="docker.io", help="host[:port] (default docker.io)")


def run(args, store_factory) -> int:
    from pybuild.commands.login import registry_host
    from pybuild.registry.auth import DockerConfig

    host = registry_host(args.registry)
    if DockerConfig().erase(host):
        print(f"Removing login credentials for {host}")
    else:
        print(f"Not logged in to {host}")
    return 0
