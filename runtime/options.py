"""Pure parsing of `run`'s flags (docker's syntax) into the parts of a container config.

No I/O here: the caller reads ``--env-file`` and the host environment and passes them in.
Every error is a ``RunOptionError`` naming the flag and the offending text.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal
from dataclasses import dataclass, field, replace

from pybuild.errors import PybuildError

__all__ = ["RunOptionError", "MountRequest", "parse_volume", "parse_mount", "parse_tmpfs", "parse_env",
           "parse_env_file", "parse_signal", "signal_name", "command_line", "DEFAULT_PATH"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunOptionError(PybuildError):
    pass


@dataclass(frozen=True)
class MountRequest:
    """One volume, bind or tmpfs mount asked for on the command line.

    type "bind": ``source`` is a host path; "volume": ``source`` is a volume name, or None
    for an anonymous volume; "tmpfs": ``options`` are tmpfs mount options."""

    type: str
    target: str
    source: str | None = None
    readonly: bool = False
    options: tuple[str, ...] = ()
    create_host_dir: bool = False  # -v HOST:CTR creates a missing HOST dir; --mount refuses
    flag: str = field(default="", compare=False)  # the flag and its value, for messages: "--mount type=..."


def _target(flag: str, text: str, target: str) -> str:
    if not target.startswith("/"):
        raise RunOptionError(f"{flag} {text}: the container path {target!r} must be absolute")
    norm = posixpath.normpath(target)
    if norm == "/":
        raise RunOptionError(f"{flag} {text}: cannot mount over /")
    return norm


def parse_volume(text: str, cwd: str | None = None) -> MountRequest:
    """``-v HOST:CTR[:ro|rw]`` (HOST absolute, or starting with ``.``: relative to ``cwd``, the
    current directory by default, as docker 23+), ``-v NAME:CTR[:ro|rw]``, ``-v CTR`` (anonymous)."""
    return replace(_parse_volume(text, cwd), flag=f"-v {text}")


def _parse_volume(text: str, cwd: str | None) -> MountRequest:
    parts = text.split(":")
    mode = ""
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in ("ro", "rw"):
            raise RunOptionError(f"-v {text}: invalid mode {mode!r} (ro or rw)")
    if len(parts) == 1:
        return MountRequest("volume", _target("-v", text, parts[0]), None, mode == "ro")
    if len(parts) != 2 or not parts[0]:
        raise RunOptionError(f"-v {text}: expected HOST-PATH:CONTAINER-PATH[:ro], NAME:CONTAINER-PATH[:ro] "
                             "or CONTAINER-PATH")
    source, target = parts
    target = _target("-v", text, target)
    if source in (".", "..") or source.startswith(("./", "../")):  # docker 23+: relative to the cwd
        source = posixpath.join(cwd if cwd is not None else os.getcwd(), source)
    if source.startswith("/"):
        return MountRequest("bind", target, posixpath.normpath(source), mode == "ro", create_host_dir=True)
    from .volumes import VOLUME_NAME_RE

    if not VOLUME_NAME_RE.match(source):
        raise RunOptionError(f"-v {text}: {source!r} is neither an absolute host path nor a volume name "
                             "(letters, digits, _ . -)")
    return MountRequest("volume", target, source, mode == "ro")


def parse_mount(text: str) -> MountRequest:
    """``--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,tmpfs-size=N][,tmpfs-mode=M]``."""
    return replace(_parse_mount(text), flag=f"--mount {text}")


def _parse_mount(text: str) -> MountRequest:
    fields: dict[str, str] = {}
    readonly = False
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if sep and value.lower() not in ("1", "true", "0", "false"):
                raise RunOptionError(f"--mount {text}: invalid readonly value {value!r}")
            readonly = not sep or value.lower() in ("1", "true")
            continue
        if not sep:
            raise RunOptionError(f"--mount {text}: expected key=value, got {item!r}")
        fields[{"src": "source", "dst": "target", "destination": "target"}.get(key, key)] = value
    kind = fields.pop("type", "volume")
    target = fields.pop("target", None)
    if not target:
        raise RunOptionError(f"--mount {text}: target= is required")
    target = _target("--mount", text, target)
    source = fields.pop("source", None)
    if kind == "bind":
        if not source or not source.startswith("/"):
            raise RunOptionError(f"--mount {text}: a bind mount needs an absolute source=")
        req = MountRequest("bind", target, posixpath.normpath(source), readonly)
    elif kind == "volume":
        if source is not None:
            from .volumes import VOLUME_NAME_RE

            if not VOLUME_NAME_RE.match(source):
                raise RunOptionError(f"--mount {text}: invalid volume name {source!r}")
        req = MountRequest("volume", target, source, readonly)
    elif kind == "tmpfs":
        if source is not None:
            raise RunOptionError(f"--mount {text}: a tmpfs mount takes no source")
        opts = []
        if "tmpfs-size" in fields:
            size = fields.pop("tmpfs-size")
            if not _TMPFS_SIZE_RE.fullmatch(size) or size.endswith("%"):
                raise RunOptionError(f"--mount {text}: invalid tmpfs-size {size!r} (bytes, or with k/m/g: 64m)")
            opts.append(f"size={size}")
        if "tmpfs-mode" in fields:
            mode = fields.pop("tmpfs-mode")
            if not mode or any(c not in "01234567" for c in mode):
                raise RunOptionError(f"--mount {text}: invalid tmpfs-mode {mode!r} (octal)")
            opts.append(f"mode={mode}")
        req = MountRequest("tmpfs", target, None, readonly, tuple(opts))
    else:
        raise RunOptionError(f"--mount {text}: unknown type {kind!r} (bind, volume or tmpfs)")
    if fields:
        raise RunOptionError(f"--mount {text}: unknown option {sorted(fields)[0]!r}")
    return req


_TMPFS_FLAGS = ("noexec", "exec", "nosuid", "nodev", "ro", "rw")  # the sandbox always adds nosuid, nodev
# the values the kernel's tmpfs takes (memparse): a number with an optional k/m/g/t/p/e suffix,
# or (size only) a percentage of RAM; checked here so a bad one never reaches mount(2)
_TMPFS_SIZE_RE = re.compile(r"[0-9]+[kKmMgGtTpPeE]?|[0-9]+%")
_TMPFS_VALUES = {
    "size": (_TMPFS_SIZE_RE, "a number of bytes, with k/m/g, or a percentage: 64m, 50%"),
    "nr_inodes": (re.compile(r"[0-9]+[kKmMgG]?"), "a number, with k/m/g"),
    "mode": (re.compile(r"[0-7]{1,4}"), "octal, e.g. 1777"),
    "uid": (re.compile(r"[0-9]+"), "a number"),
    "gid": (re.compile(r"[0-9]+"), "a number"),
}


def parse_tmpfs(text: str) -> MountRequest:
    """``--tmpfs CTR[:opt,opt...]`` (size=64m, mode=1777, ro, ...)."""
    target, _, opts = text.partition(":")
    target = _target("--tmpfs", text, target)
    options, readonly = [], False
    for o in [o for o in opts.split(",") if o]:
        name, sep, value = o.partition("=")
        if name in _TMPFS_VALUES:
            pattern, expected = _TMPFS_VALUES[name]
            if not pattern.fullmatch(value):
                raise RunOptionError(f"--tmpfs {text}: invalid {name} {value!r} (expected {expected})")
        elif name not in _TMPFS_FLAGS or sep:
            raise RunOptionError(f"--tmpfs {text}: unknown option {o!r}")
        if o == "ro":
            readonly = True
        elif o != "rw":
            options.append(o)
    return MountRequest("tmpfs", target, None, readonly, tuple(options), flag=f"--tmpfs {text}")


def parse_env_file(name: str, text: str) -> list[str]:
    """Lines of an ``--env-file`` as docker reads them: ``K=V`` or ``K`` (from the host), blank
    lines and ``#`` comments skipped; ``name`` is used in errors."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key = stripped.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise RunOptionError(f"--env-file {name}:{n}: invalid variable name {key!r}")
        out.append(stripped if "=" in stripped else key)
    return out


def parse_env(image_env: list[str], items: list[str], host_env: dict[str, str]) -> dict[str, str]:
    """The container's environment: the image's Env, then each ``K=V`` or ``K`` (taken from
    ``host_env``, skipped when unset, as docker does); PATH defaults to the usual one."""
    env: dict[str, str] = {}
    for item in image_env:
        k, _, v = item.partition("=")
        env[k] = v
    for item in items:
        k, sep, v = item.partition("=")
        if not k or "\0" in item:
            raise RunOptionError(f"-e {item!r}: expected KEY=VALUE or KEY")
        if sep:
            env[k] = v
        elif k in host_env:
            env[k] = host_env[k]
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def parse_signal(text: str | int | None, flag: str = "--stop-signal") -> int:
    """A signal name (``SIGTERM``, ``TERM``, ``RTMIN+3``) or number; None means SIGTERM."""
    if text is None or text == "":
        return int(signal.SIGTERM)
    if isinstance(text, int) or str(text).isdigit():
        num = int(text)
        if num not in {int(s) for s in signal.valid_signals()}:
            raise RunOptionError(f"{flag} {text}: no such signal")
        return num
    name = str(text).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    base, plus, offset = name.partition("+")
    if base in ("SIGRTMIN", "SIGRTMAX"):
        n = int(getattr(signal, base)) + (int(offset) if plus and offset.isdigit() else 0) * (1 if base == "SIGRTMIN" else -1)
        if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
            return n
    sig = getattr(signal.Signals, name, None) if hasattr(signal.Signals, name) else None
    if sig is None:
        raise RunOptionError(f"{flag} {text}: no such signal")
    return int(sig)


def signal_name(num: int) -> str:
    """The name docker shows for a signal number: ``SIGTERM``, ``SIGRTMIN+3``; else the number."""
    if signal.SIGRTMIN < num < signal.SIGRTMAX:
        return f"SIGRTMIN+{num - signal.SIGRTMIN}"
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


def command_line(image_config: dict, entrypoint: str | None, cmd: list[str]) -> list[str]:
    """docker's rule: ``--entrypoint`` replaces the image's Entrypoint and drops its Cmd; a
    command on the command line replaces Cmd."""
    ep = [entrypoint] if entrypoint else list(image_config.get("Entrypoint") or [])
    if cmd:
        tail = list(cmd)
    else:
        tail = [] if entrypoint else list(image_config.get("Cmd") or [])
    return ep + tail
