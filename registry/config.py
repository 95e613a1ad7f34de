"""Registry settings: mirrors and insecure (plain HTTP / unverified TLS) registries.

They are the ``[registry."HOST"]`` tables of pybuild's config file (see :mod:`pybuild.config`:
``$PYBUILD_CONFIG``, else ``~/.config/pybuild/config.toml``, else ``/etc/pybuild/config.toml``;
no file means no mirrors and nothing insecure)::

    [registry."docker.io"]
    mirrors = ["mirror.internal:5000", "https://hub-cache.example.com"]

    [registry."build-cache.internal:5000"]
    insecure = true            # plain HTTP, or HTTPS without certificate verification

A mirror is tried first for pulls of that registry (in order), then the registry itself, as
containerd's hosts.toml does; pushes always go to the registry itself.  A mirror given
without a scheme uses the same rules as a registry (HTTPS; plain HTTP only for localhost or
insecure hosts).  CA files are found as docker does: ``/etc/docker/certs.d/<host>/ca.crt``
(and ``*.crt``; ``client.cert``/``client.key`` for client certificates), then
``~/.config/pybuild/certs.d/<host>/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pybuild.errors import PybuildError

__all__ = ["LOCAL_HOSTS", "RegistryConfig", "RegistryConfigError", "load_config", "parse_config"]

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class RegistryConfigError(PybuildError):
    """The registries config file is unreadable or malformed (the message names the file)."""


@dataclass(frozen=True)
class RegistryConfig:
    """Per-host settings; hosts are ``host[:port]`` exactly as in image references."""

    mirrors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    certs_dirs: tuple[Path, ...] = field(default_factory=lambda: default_certs_dirs())

    def mirrors_for(self, registry: str) -> tuple[str, ...]:
        return self.mirrors.get(registry, ())

    def is_insecure(self, host: str) -> bool:
        """Listed as insecure (plain HTTP and unverified TLS allowed)."""
        return host in self.insecure

    def allows_plain_http(self, host: str) -> bool:
        """Plain HTTP is allowed only for the loopback host names and insecure registries."""
        hostname = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
        return hostname in LOCAL_HOSTS or host in LOCAL_HOSTS or self.is_insecure(host)


def default_certs_dirs() -> tuple[Path, ...]:
    """docker's system-wide certs.d, then the user's (``$HOME`` read at call time)."""
    return (Path("/etc/docker/certs.d"), Path("~/.config/pybuild/certs.d").expanduser())


def load_config() -> RegistryConfig:
    """The registry tables of the config file, validated (RegistryConfigError names the file)."""
    from pybuild.config import ConfigError, load_settings

    try:
        found = load_settings()
    except ConfigError as exc:
        raise RegistryConfigError(str(exc)) from None
    if found.path is None:
        return RegistryConfig()
    return parse_config({"registry": found.registry}, str(found.path))


def parse_config(data: dict, source: str) -> RegistryConfig:
    unknown = set(data) - {"registry"}
    if unknown:
        raise RegistryConfigError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected [registry.\"HOST\"] tables)")
    registries = data.get("registry", {})
    if not isinstance(registries, dict):
        raise RegistryConfigError(f"{source}: 'registry' must be a table of [registry.\"HOST\"] tables")
    mirrors: dict[str, tuple[str, ...]] = {}
    insecure: set[str] = set()
    for host, table in registries.items():
        where = f'{source}: [registry."{host}"]'
        if not isinstance(table, dict):
            raise RegistryConfigError(f"{where} must be a table")
        bad = set(table) - {"mirrors", "insecure"}
        if bad:
            raise RegistryConfigError(f"{where}: unknown key {sorted(bad)[0]!r} (mirrors, insecure)")
        m = table.get("mirrors", [])
        if not isinstance(m, list) or not all(isinstance(x, str) and x for x in m):
            raise RegistryConfigError(f"{where}: mirrors must be a list of host[:port] or URLs")
        if m:
            mirrors[host] = tuple(x.rstrip("/") for x in m)
        flag = table.get("insecure", False)
        if not isinstance(flag, bool):
            raise RegistryConfigError(f"{where}: insecure must be true or false")
        if flag:
            insecure.add(host)
    return RegistryConfig(mirrors=mirrors, insecure=frozenset(insecure))
