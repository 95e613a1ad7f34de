"""Image references: ``[host[:port]/]path[:tag][@digest]``.

Validation follows the grammar of github.com/distribution/reference
(reference.go / regexp.go).  No normalisation is done: ``hello`` stays
``hello`` (it does not become ``docker.io/library/hello``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reference", "InvalidReference", "parse_reference", "DEFAULT_TAG", "DOCKER_HUB",
           "RemoteReference", "normalize_reference", "familiar_name"]

DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]*)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_RE = re.compile(_DOMAIN)
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(_TAG, re.ASCII)
_DIGEST_RE = re.compile(_DIGEST)
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")


class InvalidReference(ValueError):
    """The string is not a valid image reference."""

    def __init__(self, reference: str, reason: str):
        self.reference = reference
        self.reason = reason
        super().__init__(f"invalid reference {reference!r}: {reason}")


@dataclass(frozen=True)
class Reference:
    """A parsed reference.

    ``tag`` is ``"latest"`` when neither a tag nor a digest was given; it is
    ``None`` only for a pure digest reference (``name@sha256:...``).
    ``str(ref)`` is ``name:tag``, ``name@digest`` or ``name:tag@digest``.
    """

    name: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    def __str__(self) -> str:
        s = self.name
        if self.tag is not None:
            s += ":" + self.tag
        if self.digest is not None:
            s += "@" + self.digest
        return s

    @property
    def tagged(self) -> str:
        """``name:tag`` (the tag defaults to latest), without any digest."""
        return f"{self.name}:{self.tag or DEFAULT_TAG}"

    @property
    def domain(self) -> str | None:
        first, sep, _rest = self.name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            return first
        return None

    @property
    def path(self) -> str:
        d = self.domain
        return self.name[len(d) + 1 :] if d else self.name


def parse_reference(s: str | Reference) -> Reference:
    """Parse and validate ``[host[:port]/]path[:tag][@digest]``."""
    if isinstance(s, Reference):
        return s
    if not isinstance(s, str):
        raise TypeError(f"reference must be a str, not {type(s).__name__}")
    if not s:
        raise InvalidReference(s, "empty reference")
    if s != s.strip() or any(c.isspace() for c in s):
        raise InvalidReference(s, "contains whitespace")

    remainder = s
    digest = None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(s, f"invalid digest {digest!r} (want algorithm:hex, e.g. sha256:<64 hex>)")
        if digest.startswith("sha256:") and not _SHA256_RE.fullmatch(digest):
            raise InvalidReference(s, f"invalid sha256 digest {digest!r} (want 64 lowercase hex digits)")

    tag = None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(
                s, f"invalid tag {tag!r} (want [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})"
            )

    name = remainder
    if not name:
        raise InvalidReference(s, "empty repository name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(s, f"repository name longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if not _NAME_RE.fullmatch(name):
        first, sep, rest = name.partition("/")
        path = rest if sep and _DOMAIN_RE.fullmatch(first) else name
        if path.lower() != path and _PATH_RE.fullmatch(path.lower()):
            raise InvalidReference(s, f"repository name {name!r} must be lowercase")
        raise InvalidReference(
            s,
            f"invalid repository name {name!r} (path components are lowercase letters and digits "
            "separated by '.', '_', '__' or '-', joined by '/', optionally after 'host[:port]/')",
        )

    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(name=name, tag=tag, digest=digest)


@dataclass(frozen=True)
class RemoteReference:
    """A reference as a registry sees it, after docker's normalisation.

    ``registry`` is the host[:port] (``docker.io`` for Docker Hub), ``repository`` the path
    inside it (``library/busybox``); ``tag`` and ``digest`` as in :class:`Reference`.
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified name: ``docker.io/library/busybox``."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """The short name docker displays and our local store uses: ``busybox`` for
        ``docker.io/library/busybox``, ``user/app`` for ``docker.io/user/app``, else the full name."""
        return familiar_name(self.registry, self.repository)

    def local(self) -> Reference:
        """The local store's name for this image (familiar name, same tag and digest)."""
        return Reference(name=self.familiar, tag=self.tag, digest=self.digest)

    def with_tag(self, tag: str | None, digest: str | None = None) -> "RemoteReference":
        return RemoteReference(self.registry, self.repository, tag, digest)

    def __str__(self) -> str:
        return str(Reference(self.name, self.tag, self.digest))


def familiar_name(registry: str, repository: str) -> str:
    if registry == DOCKER_HUB:
        return repository.removeprefix("library/") if repository.count("/") == 1 else repository
    return f"{registry}/{repository}"


def normalize_reference(s: str | Reference) -> RemoteReference:
    """Docker's normalisation: ``busybox`` -> ``docker.io/library/busybox:latest``,
    ``user/app`` -> ``docker.io/user/app:latest``, ``host:5000/a/b:t`` stays on ``host:5000``.

    A first path component is a registry host when it contains ``.`` or ``:`` or is
    ``localhost`` (as in distribution/reference's ParseNormalizedNamed); ``index.docker.io``
    and ``registry-1.docker.io`` are Docker Hub.  Raises :class:`InvalidReference`.
    """
    ref = parse_reference(s)
    domain = ref.domain
    if domain is not None and domain != domain.lower() and "." not in domain and ":" not in domain:
        domain = None  # an upper-case first component is not a host for docker either
    if domain is None:
        registry, repository = DOCKER_HUB, ref.name
    else:
        registry, repository = domain, ref.name[len(domain) + 1:]
    if registry in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = "library/" + repository
    if repository != repository.lower():
        raise InvalidReference(str(s), f"repository name {repository!r} must be lowercase")
    return RemoteReference(registry, repository, ref.tag, ref.digest)
