"""User-namespace id mappings for the sandbox (``ProcessSpec.userns``, ``--userns=auto``).

Pure parsing of ``/etc/subuid`` / ``/etc/subgid`` plus one reader (``default_idmap``).  A
sandbox with an ``IdMap`` runs in its own user namespace where container ids
``0 .. size-1`` are host ids ``uid_host .. uid_host+size-1`` (and the same for gids): the
container's root is an unprivileged host user.  The rootfs layers are idmapped mounts, so
files on disk keep their real (unshifted) ownership; see ``_init.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_HOST_BASE", "DEFAULT_SIZE", "IdMap", "IdMapError", "default_idmap", "parse_subid"]

# Without a subordinate range for root in /etc/subuid|subgid: host ids 100000..165535, the
# range useradd(8) gives the first user on Debian and Fedora (SUB_UID_MIN, SUB_UID_COUNT).
DEFAULT_HOST_BASE = 100000
DEFAULT_SIZE = 65536


class IdMapError(ValueError):
    """An id mapping is invalid, or /etc/subuid|subgid has no usable range."""


@dataclass(frozen=True)
class IdMap:
    """Container uids/gids ``0 .. size-1`` map to host ``uid_host ..`` / ``gid_host ..``."""

    uid_host: int = DEFAULT_HOST_BASE
    gid_host: int = DEFAULT_HOST_BASE
    size: int = DEFAULT_SIZE

    def validate(self) -> None:
        if self.size < 1 or self.size > (1 << 32) - 1:
            raise IdMapError(f"user namespace: invalid range size {self.size}")
        for what, base in (("uid", self.uid_host), ("gid", self.gid_host)):
            # Host id 0 inside the range would make the container's root (or another user)
            # the host's root: no isolation at all.
            if base < 1 or base + self.size > (1 << 32) - 1:
                raise IdMapError(f"user namespace: host {what} range {base}..{base + self.size - 1} "
                                 "must not include 0 and must fit in 32 bits")

    def map_line(self, kind: str) -> str:
        """The line for /proc/PID/uid_map (``kind="uid"``) or gid_map."""
        base = self.uid_host if kind == "uid" else self.gid_host
        return f"0 {base} {self.size}\n"

    def to_host(self, kind: str, container_id: int) -> int:
        base = self.uid_host if kind == "uid" else self.gid_host
        if not 0 <= container_id < self.size:
            raise IdMapError(f"{kind} {container_id} is outside the user namespace's range")
        return base + container_id


def parse_subid(text: str, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """The (start, count) ranges of ``text`` (subuid(5) format) owned by one of ``names``.

    Lines are ``owner:start:count``; the owner is a user name or a numeric uid.  Comments,
    blank and malformed lines are skipped, as shadow-utils does.
    """
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or parts[0] not in names:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            out.append((start, count))
    return out


def _first_range(path: Path, names: tuple[str, ...]) -> tuple[int, int] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdMapError(f"{path}: {e.strerror}") from None
    ranges = parse_subid(text, names)
    if not ranges:
        return None
    for start, count in ranges:
        if count >= DEFAULT_SIZE and start > 0:
            return start, DEFAULT_SIZE
    start, count = ranges[0]
    raise IdMapError(f"{path}: root's range {start}:{count} is smaller than the {DEFAULT_SIZE} ids "
                     "a container needs (uids 0..65535)")


def default_idmap(subuid: Path = Path("/etc/subuid"), subgid: Path = Path("/etc/subgid")) -> IdMap:
    """The mapping for ``--userns=auto``: root's first range of >= 65536 ids in
    /etc/subuid and /etc/subgid (user ``root`` or uid ``0``), else host ids 100000..165535."""
    names = ("root", "0")
    uid = _first_range(subuid, names)
    gid = _first_range(subgid, names)
    m = IdMap(uid_host=uid[0] if uid else DEFAULT_HOST_BASE,
              gid_host=gid[0] if gid else DEFAULT_HOST_BASE, size=DEFAULT_SIZE)
    m.validate()
    return m
