"""The user's configuration file: defaults that environment variables and flags override.

One TOML file, the first that exists of:

1. ``$PYBUILD_CONFIG`` (an error if it names a missing file),
2. ``$XDG_CONFIG_HOME/pybuild/config.toml`` (``~/.config/pybuild/config.toml``),
3. ``/etc/pybuild/config.toml``.

::

    root = "/srv/pybuild"          # the store; $PYBUILD_ROOT and --root win over it
    jobs = 4                       # build --jobs default
    progress = "plain"             # build --progress default; $PYBUILD_PROGRESS and the flag win

    [registry."docker.io"]         # see pybuild.registry.config
    mirrors = ["127.0.0.1:5000"]

    [registry."ci-cache.internal:5000"]
    insecure = true

Precedence, everywhere: flag > environment variable > this file > built-in default.
Reading is the only I/O; an unknown key or a wrong type is a ``ConfigError`` naming the file
and the key, so a typo never silently changes nothing.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pybuild.errors import PybuildError

__all__ = ["ConfigError", "Settings", "config_path", "load_settings", "parse_settings", "settings"]

PROGRESS_MODES = ("auto", "tty", "plain", "rawjson")


class ConfigError(PybuildError):
    """The config file is unreadable or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Settings:
    path: Path | None = None                  # the file these came from (None: no file)
    root: Path | None = None
    jobs: int | None = None
    progress: str | None = None
    registry: dict = field(default_factory=dict)  # the raw [registry."HOST"] tables


def config_path(env: dict[str, str] | None = None) -> tuple[Path | None, bool]:
    """The config file to read and whether it must exist (it must when named by $PYBUILD_CONFIG)."""
    env = os.environ if env is None else env
    if env.get("PYBUILD_CONFIG"):
        return Path(env["PYBUILD_CONFIG"]), True
    xdg = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    for candidate in (Path(xdg) / "pybuild" / "config.toml", Path("/etc/pybuild/config.toml")):
        if candidate.is_file():
            return candidate, False
    return None, False


def load_settings(env: dict[str, str] | None = None) -> Settings:
    path, required = config_path(env)
    if path is None:
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: no such file (named by $PYBUILD_CONFIG)") from None
        return Settings()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_settings(data, path)


def parse_settings(data: dict, path: Path) -> Settings:
    """Validate the parsed TOML; pure."""
    known = {"root", "jobs", "progress", "registry"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    root = data.get("root")
    if root is not None and (not isinstance(root, str) or not os.path.isabs(root)):
        raise ConfigError(f"{path}: root must be an absolute path")
    jobs = data.get("jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"{path}: jobs must be a positive integer")
    progress = data.get("progress")
    if progress is not None and progress not in PROGRESS_MODES:
        raise ConfigError(f"{path}: progress must be one of {', '.join(PROGRESS_MODES)}")
    registry = data.get("registry", {})
    if not isinstance(registry, dict):
        raise ConfigError(f"{path}: 'registry' must be a table of [registry.\"HOST\"] tables")
    return Settings(path=path, root=Path(root) if root else None, jobs=jobs, progress=progress,
                    registry=registry)


@functools.cache
def settings() -> Settings:
    """The process's settings, read once (commands are short-lived processes)."""
    return load_settings()
