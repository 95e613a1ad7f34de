"""`RUN --mount=...`: parse mount specs (pure) and prepare them for one step (host paths, locks, cleanup).

Parsing follows BuildKit's `instructions/commands_runmount.go`: a CSV list of `key=value`
fields, keys case-insensitive, `type` defaulting to `bind`; `ro`/`readonly`, `rw`/`readwrite`
and `required` may stand alone; values are expanded with the step's build args and ENV.
Defaults as BuildKit's:

  bind    source = root of the context (or of `from=`), read-only unless `rw` (writes discarded)
  cache   id = the target, sharing = shared, mode 0755, uid/gid 0, writable unless `ro`
  tmpfs   size unlimited
  secret  id = basename of the target, target = /run/secrets/<id> (none when only `env=` is
          given), mode 0400, uid/gid 0, not required
  ssh     id = "default", target = /run/buildkit/ssh_agent.<N>, mode 0600, uid/gid 0, not required

What the cache key sees (`MountSpec.key_definition`): the mount spec after defaults, plus for a
bind the source's content digest. Never a secret's bytes, never a cache mount's content.

Cache mounts live in `$PYBUILD_ROOT/cache/mounts/<sha256(id)>/`: `meta.json` (id, created,
last_used) and one data directory per instance (`0/`, and `1/`, `2/`... made by
`sharing=private` when the others are in use), each with a flock file (`0.lock`) that the step
holds shared (`shared`) or exclusive (`private`, `locked`). `pybuild prune -a` removes them
(`remove_cache_mounts`), under the GC lock builds hold a shared lease on.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import re
import selectors
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pybuild.cache.view import LayeredView
from pybuild.sandbox.runner import Mount

from pybuild.atomicfile import write_atomic

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
_KEYS = ("type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro", "rw",
         "readwrite", "required", "id", "sharing", "size", "mode", "uid", "gid", "env")
_SIZE = re.compile(r"(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFAULT_MODE = {"cache": 0o755, "secret": 0o400, "ssh": 0o600}


class MountSpecError(ValueError):
    """A `--mount`, `--secret` or `--ssh` value that cannot be used; str() says what is wrong."""


@dataclass(frozen=True)
class MountSpec:
    """One `RUN --mount`, as written (after variable expansion) or, after `resolve`, with defaults."""

    type: str = "bind"
    target: str | None = None
    source: str | None = None
    from_: str | None = None
    readonly: bool | None = None      # None: the type's default (read-only for bind/secret/ssh)
    id: str | None = None
    sharing: str | None = None
    required: bool = False
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None

    def key_definition(self) -> dict:
        """What of this (resolved) mount goes into the step's cache key: no contents, no host paths."""
        fields = {"type": self.type, "target": self.target, "source": self.source, "from": self.from_,
                  "readonly": self.readonly, "id": self.id, "sharing": self.sharing,
                  "required": self.required if self.type in ("secret", "ssh") else None,
                  "size": self.size, "mode": self.mode, "uid": self.uid, "gid": self.gid, "env": self.env}
        return {k: v for k, v in fields.items() if v is not None}


def _bool(key: str, value: str) -> bool:
    # Go's strconv.ParseBool
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise MountSpecError(f"invalid value for {key}: {value}")


def parse_size(text: str) -> int:
    """docker's units.RAMInBytes: "64m", "1.5g", "512k", "1024" (binary multiples)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise MountSpecError(f"invalid value for size: {text}")
    mult = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    return int(float(m.group(1)) * mult[m.group(2).lower() if m.group(2) else None])


def parse_mount(text: str, expand: Callable[[str], str] | None = None) -> MountSpec:
    """Parse one `--mount` value. Pure.

    With `expand` every value is expanded first (the solver passes the step's variables). Without
    it (planning), values holding a `$` are left for later, except `from`, which, as in BuildKit,
    may not use variables. Raises MountSpecError naming the offending field.
    """
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise MountSpecError(f"failed to parse csv mounts: {exc}") from None
    fields = rows[0] if rows else []
    spec = MountSpec()
    for item in fields:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            if key in ("readonly", "ro"):
                spec = replace(spec, readonly=True)
            elif key in ("readwrite", "rw"):
                spec = replace(spec, readonly=False)
            elif key == "required":
                if spec.type not in ("secret", "ssh"):
                    raise MountSpecError(f"unexpected key '{key}' for mount type '{spec.type}'")
                spec = replace(spec, required=True)
            else:
                raise MountSpecError(f"invalid field '{item}' must be a key=value pair")
            continue
        if key == "from" and "$" in value:
            raise MountSpecError("'from' doesn't support variable expansion, define alias stage instead")
        if expand is not None:
            value = expand(value)
        elif "$" in value:
            if key not in _KEYS:
                raise MountSpecError(f"unexpected key '{key}' in '{item}'")
            continue  # checked once the solver can expand it
        spec = _set_field(spec, key, value, item)
    _validate(spec)
    return spec


def _set_field(spec: MountSpec, key: str, value: str, item: str) -> MountSpec:
    if key == "type":
        kind = value.lower()
        if kind not in MOUNT_TYPES:
            raise MountSpecError(f"unsupported mount type {value!r} (expected {', '.join(MOUNT_TYPES)})")
        return replace(spec, type=kind)
    if key == "from":
        return replace(spec, from_=value)
    if key in ("source", "src"):
        return replace(spec, source=value)
    if key in ("target", "dst", "destination"):
        return replace(spec, target=value)
    if key in ("readonly", "ro"):
        return replace(spec, readonly=_bool(key, value))
    if key in ("readwrite", "rw"):
        return replace(spec, readonly=not _bool(key, value))
    if key == "required":
        if spec.type not in ("secret", "ssh"):
            raise MountSpecError(f"unexpected key '{key}' for mount type '{spec.type}'")
        return replace(spec, required=_bool(key, value))
    if key == "size":
        if spec.type != "tmpfs":
            raise MountSpecError(f"unexpected key '{key}' for mount type '{spec.type}'")
        return replace(spec, size=parse_size(value))
    if key == "id":
        return replace(spec, id=value)
    if key == "sharing":
        if value.lower() not in SHARING_MODES:
            raise MountSpecError(f"unsupported sharing value {value!r} (expected {', '.join(SHARING_MODES)})")
        return replace(spec, sharing=value.lower())
    if key == "mode":
        try:
            mode = int(value, 8)
        except ValueError:
            raise MountSpecError(f"invalid value {value} for mode") from None
        if not 0 <= mode <= 0o7777:
            raise MountSpecError(f"invalid value {value} for mode")
        return replace(spec, mode=mode)
    if key in ("uid", "gid"):
        if not value.isdigit() or int(value) >= 1 << 32:
            raise MountSpecError(f"invalid value {value} for {key}")
        return replace(spec, **{key: int(value)})
    if key == "env":
        if spec.type != "secret":
            raise MountSpecError(f"unexpected key '{key}' for mount type '{spec.type}'")
        if not _ENV_NAME.fullmatch(value):
            raise MountSpecError(f"invalid value {value} for env: not a variable name")
        return replace(spec, env=value)
    raise MountSpecError(f"unexpected key '{key}' in '{item}' (expected one of {', '.join(_KEYS)})")


def _validate(spec: MountSpec) -> None:
    if spec.type not in ("secret", "ssh", "cache"):
        for name in ("mode", "uid", "gid"):
            if getattr(spec, name) is not None:
                raise MountSpecError(f"{name} not allowed for {spec.type!r} type mounts")
    if spec.sharing is not None and spec.type != "cache":
        raise MountSpecError(f"invalid cache sharing set for {spec.type} mount")
    if spec.type == "secret":
        if spec.from_:
            raise MountSpecError("secret mount should not have a from")
        if spec.source and spec.id:
            raise MountSpecError("both source and id can't be set")
    if spec.type in ("tmpfs", "ssh") and spec.from_:
        raise MountSpecError(f"{spec.type} mount should not have a from")
    if spec.env is not None and spec.type != "secret":
        raise MountSpecError(f"unexpected key 'env' for mount type '{spec.type}'")


def resolve(spec: MountSpec, workdir: str, ssh_index: int = 0) -> MountSpec:
    """Fill in BuildKit's defaults; relative targets are taken from the working directory. Pure.

    `ssh_index` numbers the step's ssh mounts (their default targets differ). Raises
    MountSpecError when a required field is missing.
    """
    target = spec.target
    if target:
        target = _absolute(posixpath.join(workdir, target))
    if spec.type in ("bind", "cache", "tmpfs"):
        if not target:
            raise MountSpecError(f"mount type={spec.type} needs a target")
        if target == "/":
            raise MountSpecError(f"mount type={spec.type}: cannot mount over the root directory")
    mode = spec.mode if spec.mode is not None else _DEFAULT_MODE.get(spec.type)
    uid = spec.uid if spec.uid is not None else (0 if spec.type in _DEFAULT_MODE else None)
    gid = spec.gid if spec.gid is not None else (0 if spec.type in _DEFAULT_MODE else None)
    if spec.type == "bind":
        return replace(spec, target=target, source=_absolute(spec.source or "/"), readonly=spec.readonly is not False)
    if spec.type == "cache":
        source = _absolute(spec.source or "/") if spec.from_ else None
        return replace(spec, target=target, source=source, id=spec.id or target, sharing=spec.sharing or "shared",
                       readonly=bool(spec.readonly), mode=mode, uid=uid, gid=gid)
    if spec.type == "tmpfs":
        return replace(spec, target=target, readonly=bool(spec.readonly))
    if spec.type == "secret":
        secret_id = spec.id or spec.source or (posixpath.basename(target) if target else None)
        if not secret_id:
            raise MountSpecError("invalid secret mount: one of id, source or target is required")
        if not target and not spec.env:
            target = "/run/secrets/" + secret_id
        return replace(spec, id=secret_id, source=None, target=target, readonly=True, mode=mode, uid=uid, gid=gid)
    # ssh
    return replace(spec, id=spec.id or "default", target=target or f"/run/buildkit/ssh_agent.{ssh_index}",
                   readonly=True, mode=mode, uid=uid, gid=gid)


def _absolute(path: str) -> str:
    """`path` made absolute and clean ("//x/../y" -> "/y"; POSIX normpath would keep a leading "//")."""
    return posixpath.normpath("/" + path.lstrip("/"))


# -- --secret and --ssh flags (pure parsing) ------------------------------------------------------

@dataclass(frozen=True)
class SecretSource:
    """Where `--secret` takes a secret from: a file or an environment variable."""

    id: str
    file: str | None = None
    env: str | None = None


def parse_secret_flag(text: str, environ: Mapping[str, str]) -> SecretSource:
    """`--secret id=X[,src=FILE|,env=VAR]`, also `type=file|env` (with `src` naming the file or
    the variable), as buildx parses it. A bare `id=X` reads the variable X when it is set, else
    the file X. Pure (the environment is passed in)."""
    fields: dict[str, str] = {}
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise MountSpecError(f"failed to parse csv secret: {exc}") from None
    for item in rows[0] if rows else []:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise MountSpecError(f"invalid field '{item}' must be a key=value pair")
        if key in ("source", "src"):
            key = "src"
        if key not in ("type", "id", "src", "env"):
            raise MountSpecError(f"unexpected key '{key}' in '{item}' (expected type, id, src, env)")
        fields[key] = value
    kind = fields.get("type")
    if kind not in (None, "file", "env"):
        raise MountSpecError(f"unsupported secret type {kind!r} (expected file or env)")
    secret_id = fields.get("id") or ""
    src, env = fields.get("src"), fields.get("env")
    if kind == "env" and env is None:
        env, src = src, None
    if not secret_id:
        secret_id = src or env or ""
    if not secret_id:
        raise MountSpecError("secret needs an id")
    if src is None and env is None:
        if kind == "env" or (kind is None and secret_id in environ):
            env = secret_id
        else:
            src = secret_id
    if env is not None and src is not None:
        raise MountSpecError("secret: give either a file (src=) or an environment variable (env=), not both")
    return SecretSource(id=secret_id, file=src, env=env)


def parse_ssh_flag(text: str, environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """`--ssh default|ID[=SOCKET|KEY[,KEY...]]` -> (id, paths). A bare id means $SSH_AUTH_SOCK. Pure."""
    secret_id, sep, rest = text.partition("=")
    if not secret_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", secret_id):
        raise MountSpecError(f"invalid ssh id {secret_id!r}")
    paths = tuple(p for p in rest.split(",") if p) if sep else ()
    if not paths:
        sock = environ.get("SSH_AUTH_SOCK")
        if not sock:
            raise MountSpecError(f"--ssh {text}: SSH_AUTH_SOCK is not set; give a socket or key file "
                                 f"({secret_id}=PATH)")
        paths = (sock,)
    return secret_id, paths


# -- secrets ---------------------------------------------------------------------------------------

class Secret:
    """A secret's bytes. Its repr and str never show them, so a stray log line cannot leak them."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes):
        self._value = bytes(value)

    @property
    def value(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


def load_secret(source: SecretSource, environ: Mapping[str, str]) -> Secret:
    """Read a secret named on the command line (from its file or variable). Raises MountSpecError."""
    if source.env is not None:
        if source.env not in environ:
            raise MountSpecError(f"secret {source.id}: environment variable {source.env} is not set")
        return Secret(environ[source.env].encode())
    try:
        with open(os.path.expanduser(source.file), "rb") as f:
            return Secret(f.read())
    except OSError as exc:
        raise MountSpecError(f"secret {source.id}: cannot read {source.file}: {exc.strerror}") from None


# -- cache mounts ------------------------------------------------------------------------------------

def _mounts_dir(root: Path) -> Path:
    return Path(root) / "cache" / "mounts"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class CacheMountUsage:
    id: str
    path: Path
    size: int               # disk usage (allocated blocks) of every instance, in bytes
    instances: int
    created: str | None
    last_used: str | None


def _disk_usage(path: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def cache_mount_usage(root: Path | str) -> list[CacheMountUsage]:
    """Every cache mount in the store (for `pybuild du`), largest first. Reads only."""
    base = _mounts_dir(Path(root))
    out = []
    if not base.is_dir():
        return out
    for entry in sorted(base.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):  # .removing-*: a removal in progress
            continue
        try:
            meta = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        instances = sum(1 for p in entry.iterdir() if p.is_dir() and p.name.isdigit())
        out.append(CacheMountUsage(id=meta.get("id", entry.name), path=entry, size=_disk_usage(entry),
                                   instances=instances, created=meta.get("created"),
                                   last_used=meta.get("last_used")))
    out.sort(key=lambda u: (-u.size, u.id))
    return out


def remove_cache_mounts(root: Path | str) -> list[CacheMountUsage]:
    """Delete every cache mount not in use (`pybuild prune -a`); returns what was removed.

    Call under the GC's exclusive lock: builds hold a shared lease for their whole run, so no
    step has a cache mount open then. An instance whose flock is held anyway is left alone.
    """
    removed = []
    base = _mounts_dir(Path(root))
    for stale in base.glob(".removing-*") if base.is_dir() else ():  # left by an interrupted prune
        shutil.rmtree(stale, ignore_errors=True)
    for usage in cache_mount_usage(root):
        busy = False
        for lock_path in usage.path.glob("*.lock"):
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy = True
            finally:
                os.close(fd)
        if busy:
            continue
        # Rename first, so a half-finished removal never looks like a cache mount with missing files.
        doomed = usage.path.with_name(f".removing-{usage.path.name}-{os.getpid()}")
        os.rename(usage.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(usage)
    return removed


class CacheMounts:
    """The store's persistent cache mounts. `acquire` is safe across threads and processes."""

    def __init__(self, root: Path | str):
        self.base = _mounts_dir(Path(root))

    def _dir(self, cache_id: str) -> Path:
        return self.base / hashlib.sha256(cache_id.encode()).hexdigest()

    def acquire(self, spec: MountSpec, seed: Callable[[Path], None] | None,
                stack: contextlib.ExitStack) -> Path:
        """The data directory for the resolved cache `spec`, locked per `spec.sharing` until `stack`
        closes. A new instance is created with `spec.mode/uid/gid` and filled by `seed(dir)` (for
        `from=`) before it becomes visible (temp dir + rename)."""
        d = self._dir(spec.id)
        d.mkdir(parents=True, exist_ok=True)
        if spec.sharing == "private":
            index = 0
            while True:
                fd = self._lock(d, index)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    os.close(fd)
                    index += 1
        else:
            index = 0
            fd = self._lock(d, 0)
            fcntl.flock(fd, fcntl.LOCK_EX if spec.sharing == "locked" else fcntl.LOCK_SH)
        stack.callback(os.close, fd)
        data = d / str(index)
        if not data.is_dir():
            # One creator at a time: a rename onto an empty dir would replace the one another
            # build has just created and mounted.
            create_fd = os.open(d / "create.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(create_fd, fcntl.LOCK_EX)
                if not data.is_dir():
                    self._create(d, data, spec, seed)
            finally:
                os.close(create_fd)
        self._touch(d, spec.id)
        return data

    @contextlib.contextmanager
    def reading(self, cache_id: str):
        """`--cache-to ...,mounts=true`: the data directory of cache `cache_id` (instance 0), or None
        when it does not exist; held with a shared flock, so a `sharing=locked` step is not writing it."""
        d = self._dir(cache_id)
        if not (d / "0").is_dir():
            yield None
            return
        fd = self._lock(d, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield d / "0"
        finally:
            os.close(fd)

    def restore(self, cache_id: str, fill: Callable[[Path], None], *, mode: int, uid: int, gid: int) -> bool:
        """`--cache-from`: create cache `cache_id` (instance 0) filled by `fill(dir)`, with the given
        mode and owner, unless it exists. Atomic (temp dir + rename under the create lock, as
        `acquire`); on error nothing is left. True if it was created."""
        d = self._dir(cache_id)
        d.mkdir(parents=True, exist_ok=True)
        data = d / "0"
        create_fd = os.open(d / "create.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(create_fd, fcntl.LOCK_EX)
            if data.is_dir():
                return False
            self._create(d, data, MountSpec(type="cache", id=cache_id, mode=mode, uid=uid, gid=gid), fill)
        finally:
            os.close(create_fd)
        self._touch(d, cache_id)
        return True

    def _lock(self, d: Path, index: int) -> int:
        return os.open(d / f"{index}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _create(self, d: Path, data: Path, spec: MountSpec, seed: Callable[[Path], None] | None) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=d))
        try:
            if seed is not None:
                seed(tmp)
            os.chown(tmp, spec.uid or 0, spec.gid or 0)
            os.chmod(tmp, spec.mode if spec.mode is not None else 0o755)
            os.rename(tmp, data)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _touch(self, d: Path, cache_id: str) -> None:
        meta_path = d / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {"id": cache_id, "created": _now()}
        meta["last_used"] = _now()
        write_atomic(meta_path, json.dumps(meta, sort_keys=True).encode())


# -- bind sources ------------------------------------------------------------------------------------

def materialize(view: LayeredView, source: str, dest: Path, *, writable: bool) -> Path:
    """Write what `view` shows at `source` (a file or a directory) to `dest`, which must not
    exist, and return `dest`. Only what the view shows is there (a ContextView hides
    `.dockerignore`d files; whiteouts of lower layers are applied).

    Read-only results hard-link regular files where the file system allows (the caller mounts
    them read-only, so the originals cannot change); writable ones copy, so writes never reach
    the source. Ownership, modes and mtimes are kept. The caller removes `dest`.
    """
    entry = view.lookup(source)
    if entry is None:
        raise FileNotFoundError(errno.ENOENT, "not found", source)
    if not stat.S_ISDIR(entry.st.st_mode):
        _place(entry.real, entry.st, dest, writable)
        return dest
    dest.mkdir()
    dirs = [(dest, entry.st)]
    base = entry.path.rstrip("/")
    for child in view.walk(entry.path):
        rel = child.path[len(base) + 1:] if base else child.path[1:]
        out = dest / rel
        if stat.S_ISDIR(child.st.st_mode):
            out.mkdir()
            dirs.append((out, child.st))
        else:
            _place(child.real, child.st, out, writable)
    for path, st in reversed(dirs):  # modes last: a read-only dir must not stop its own filling
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns))
    return dest


def _place(real: Path, st: os.stat_result, out: Path, writable: bool) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if not writable:
            try:
                os.link(real, out)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        shutil.copyfile(real, out, follow_symlinks=False)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(real), out)
        os.lchown(out, st.st_uid, st.st_gid)
        return
    elif stat.S_ISFIFO(mode):
        os.mkfifo(out)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        os.mknod(out, mode, st.st_rdev)
    else:
        return  # sockets: nothing a bind mount can usefully show
    os.chown(out, st.st_uid, st.st_gid)
    os.chmod(out, stat.S_IMODE(mode))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- ssh agents -------------------------------------------------------------------------------------

class _AgentProxy:
    """A Unix socket at `path` (mode/uid/gid as the mount asks) whose connections are relayed to
    the agent socket `upstream`, so a step never sees the user's own socket file and the mount's
    mode does not change it. `close()` stops it and its relays."""

    def __init__(self, upstream: str, path: Path, mode: int, uid: int, gid: int):
        self.upstream = upstream
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ssh-agent-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(True)
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            up.connect(self.upstream)
        except OSError:
            conn.close()
            up.close()
            return
        sel = selectors.DefaultSelector()
        sel.register(conn, selectors.EVENT_READ, up)
        sel.register(up, selectors.EVENT_READ, conn)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            conn.close()
            up.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join()


class SshAgents:
    """The build's `--ssh` sources: id -> agent socket path. Key files get a private ssh-agent,
    started here and killed by `close()` (use as a context manager around the build)."""

    def __init__(self) -> None:
        self.sockets: dict[str, str] = {}
        self._agents: list[subprocess.Popen] = []
        self._dirs: list[str] = []

    def __enter__(self) -> SshAgents:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, ssh_id: str, paths: tuple[str, ...]) -> None:
        """Register `ssh_id`: one agent socket, or key files loaded into a new private agent.
        Raises MountSpecError (the message names the path) when that fails."""
        if len(paths) == 1 and _is_socket(paths[0]):
            self.sockets[ssh_id] = paths[0]
            return
        for p in paths:
            if _is_socket(p):
                raise MountSpecError(f"--ssh {ssh_id}: {p} is a socket; give one socket or key files, not both")
            if not os.path.isfile(p):
                raise MountSpecError(f"--ssh {ssh_id}: {p} is neither an agent socket nor a key file")
        agent = shutil.which("ssh-agent")
        adder = shutil.which("ssh-add")
        if not agent or not adder:
            raise MountSpecError(f"--ssh {ssh_id}: key files need ssh-agent and ssh-add (openssh-client)")
        d = tempfile.mkdtemp(prefix="pybuild-ssh-")
        self._dirs.append(d)
        sock = os.path.join(d, "agent.sock")
        proc = subprocess.Popen([agent, "-D", "-a", sock], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self._agents.append(proc)
        deadline = time.monotonic() + 10
        while not _is_socket(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.poll() is not None else "timeout"
                raise MountSpecError(f"--ssh {ssh_id}: ssh-agent did not start: {err}")
            time.sleep(0.01)
        env = {"SSH_AUTH_SOCK": sock, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for p in paths:
            res = subprocess.run([adder, "-q", p], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                 check=False)
            if res.returncode != 0:
                msg = res.stderr.decode(errors="replace").strip().splitlines()
                raise MountSpecError(f"--ssh {ssh_id}: cannot load key {p}"
                                     + (f": {msg[-1]}" if msg else " (a passphrase-protected key needs an agent)"))
        self.sockets[ssh_id] = sock

    def close(self) -> None:
        for proc in self._agents:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        self._agents.clear()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


# -- one step's mounts ---------------------------------------------------------------------------------

@dataclass
class BindSource:
    """Where a bind mount (or a cache mount's `from=` seed) reads: a view and a path in it."""

    view: LayeredView
    path: str


@dataclass
class PreparedMounts:
    """The sandbox mounts and extra environment of one step; `close()` releases locks and removes
    every temp dir and proxy socket the step got (idempotent)."""

    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> PreparedMounts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_mounts(specs: list[MountSpec], *, work_dir: Path, cache: CacheMounts,
                   sources: Mapping[int, BindSource], secrets: Mapping[str, Secret],
                   ssh: Mapping[str, str]) -> PreparedMounts:
    """Host side of a step's resolved mounts, in order. `work_dir` is a fresh private dir for
    materialized binds and proxy sockets (the caller removes it); `sources[i]` is the view for
    `specs[i]` when it is a bind or a cache mount with `from=`. Secrets go to a private dir on
    /dev/shm (memory) when there is one, so their bytes never touch the store's disk. A missing
    secret or ssh id is skipped unless the mount is `required` (the caller checked that).
    On error everything acquired so far is released before the exception propagates."""
    prepared = PreparedMounts()
    try:
        secret_dir: Path | None = None
        socket_dir: Path | None = None
        for i, spec in enumerate(specs):
            if spec.type == "bind":
                src = sources[i]
                out = materialize(src.view, src.path, work_dir / f"bind{i}", writable=not spec.readonly)
                prepared.mounts.append(Mount("bind", spec.target, out, readonly=bool(spec.readonly)))
            elif spec.type == "cache":
                seed = None
                if spec.from_:
                    src = sources[i]
                    seed = (lambda d, src=src: _seed(src, d))
                data = cache.acquire(spec, seed, prepared.stack)
                prepared.mounts.append(Mount("bind", spec.target, data, readonly=bool(spec.readonly)))
            elif spec.type == "tmpfs":
                opts = (f"size={spec.size}",) if spec.size else ()
                prepared.mounts.append(Mount("tmpfs", spec.target, None, readonly=bool(spec.readonly),
                                             options=opts))
            elif spec.type == "secret":
                secret = secrets.get(spec.id)
                if secret is None:
                    continue
                if spec.env:
                    prepared.env[spec.env] = secret.value.decode("utf-8", "surrogateescape")
                if spec.target:
                    if secret_dir is None:
                        secret_dir = _private_dir(work_dir)
                        prepared.stack.callback(shutil.rmtree, secret_dir, True)
                    path = secret_dir / f"secret{i}"
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(secret.value)
                    os.chown(path, spec.uid or 0, spec.gid or 0)
                    os.chmod(path, spec.mode if spec.mode is not None else 0o400)
                    prepared.mounts.append(Mount("bind", spec.target, path, readonly=True))
            elif spec.type == "ssh":
                upstream = ssh.get(spec.id)
                if upstream is None:
                    continue
                if socket_dir is None:  # short: a socket path must fit in 108 bytes
                    socket_dir = Path(tempfile.mkdtemp(prefix="pybuild-ssh-"))
                    prepared.stack.callback(shutil.rmtree, socket_dir, True)
                proxy = _AgentProxy(upstream, socket_dir / f"agent{i}.sock", spec.mode if spec.mode is not None else 0o600,
                                    spec.uid or 0, spec.gid or 0)
                prepared.stack.callback(proxy.close)
                prepared.mounts.append(Mount("bind", spec.target, proxy.path, readonly=False))
                prepared.env.setdefault("SSH_AUTH_SOCK", spec.target)
    except BaseException:
        prepared.close()
        raise
    return prepared


def _seed(src: BindSource, dest: Path) -> None:
    """Fill a new cache instance `dest` (an empty dir) with a copy of `src`."""
    tmp = dest / ".seed"
    materialize(src.view, src.path, tmp, writable=True)
    if tmp.is_dir():
        for name in os.listdir(tmp):
            os.rename(tmp / name, dest / name)
        tmp.rmdir()
    else:
        os.rename(tmp, dest / (posixpath.basename(src.path.rstrip("/")) or "source"))


def _private_dir(fallback: Path) -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback
    return Path(tempfile.mkdtemp(prefix="pybuild-secret-", dir=base))



def mount_location(ins, text: str, option: str | None = None) -> str:
    """"FILE:LINE:COL" of the `--mount` value `text` in instruction `ins` (an ast.Run), also on a
    continuation line; with `option` (e.g. "from"), of that `option=` field in it when it is
    written there; the instruction's start when it has no such flag."""
    line, col = ins.flag_position("mount", text)
    if option is not None:
        found = None
        for i, (key, val) in enumerate(ins.flags):
            if key == "mount" and val == text and i < len(ins.span.flag_words):
                found = ins.span.flag_words[i]
        if found is not None:
            word, offset = found
            start = word.find("=") + 1
            value = word[start:]
            for j in range(len(value)):
                if (j == 0 or value[j - 1] == ",") and value[j:].lstrip('"').lower().startswith(option + "="):
                    line, col = ins.span.position(offset + start + j)
                    break
    return f"{ins.span.file}:{line}:{col}"
