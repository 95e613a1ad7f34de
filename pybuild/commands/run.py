"""`pybuild run [OPTIONS] IMAGE|oci-archive:FILE [CMD...]`: a new container, as `docker run`.

The container gets a record in the store (see ``pybuild.runtime.containers``) that `ps`,
`logs`, `stop`, `kill`, `exec`, `inspect` and `rm` use.  In the foreground the command waits
and returns the container's exit status (125 when pybuild fails, 126/127 when the command
cannot be run / is not found); with ``-d`` a detached supervisor runs it and the id is printed.
"""

from __future__ import annotations

import argparse

NAME = "run"


def add_parser(sub) -> None:
    from pybuild.cli import _add_resource_flags, add_host_flag, add_userns_flag

    r = sub.add_parser("run", help="run a command in a new container from an image",
                       description="Like docker run. Example: pybuild run --rm -it busybox:latest sh")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument("-d", "--detach", action="store_true", help="run in the background, print the container id")
    r.add_argument("--name", help="container name (default: a generated one)")
    r.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    r.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set an environment variable (K alone: take it from this environment)")
    r.add_argument("--env-file", action="append", default=[], metavar="FILE", help="read K=V lines from FILE")
    r.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]",
                   help="bind mount HOST-PATH:CTR, named volume NAME:CTR, or anonymous volume CTR")
    r.add_argument("--mount", action="append", default=[], metavar="SPEC",
                   help="type=bind|volume|tmpfs,source=...,target=...[,readonly]")
    r.add_argument("--tmpfs", action="append", default=[], metavar="CTR[:OPTS]", help="mount a tmpfs at CTR")
    r.add_argument("-w", "--workdir", help="working directory inside the container")
    r.add_argument("-u", "--user", help="user (name, uid, uid:gid)")
    r.add_argument("--entrypoint", help="override the image's entrypoint")
    r.add_argument("--hostname", default=None, help="container host name (default: the short id)")
    r.add_argument("--network", choices=("none", "host", "bridge"), default=None,
                   help="network: bridge (default when available), none or host")
    r.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/PROTO]",
                   help="publish a container port on the host (bridge network)")
    add_host_flag(r, "the container (host-gateway: the bridge's gateway, 127.0.0.1 with --network host)")
    _add_resource_flags(r, "the container")
    add_userns_flag(r, "the container")
    r.add_argument("--read-only", action="store_true", help="mount the container's root file system read-only")
    r.add_argument("--stop-signal", help="signal `stop` sends (default: the image's STOPSIGNAL, else SIGTERM)")
    r.add_argument("--stop-timeout", type=int, default=None, metavar="SECONDS",
                   help="seconds `stop` waits before SIGKILL (default 10)")
    r.add_argument("image", help="NAME[:TAG], image id, or oci-archive:FILE")
    r.add_argument("cmd", nargs=argparse.REMAINDER)


def _userns_config(mode: str) -> dict | None:
    """The container record's user namespace mapping for ``--userns=MODE`` (None: the host's)."""
    from pybuild.cli import userns_idmap

    idmap = userns_idmap(mode)
    if idmap is None:
        return None
    return {"Mode": mode, "UidHost": idmap.uid_host, "GidHost": idmap.gid_host, "Size": idmap.size}


def bridge_available() -> bool:
    """Whether this installation has bridge networking (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec("pybuild.runtime.network") is not None


def _resolve_image(store, text: str):
    """(image, display name).  ``oci-archive:FILE`` stores the archive's blobs (content-addressed)
    and uses its one image by manifest digest: no tag is added or moved, whatever names the
    archive's index.json gives (a local ``hello:1.0`` stays what it was, as with `podman run
    oci-archive:`).  Until the container record names the manifest (a GC root) the caller's
    ``build_lease`` keeps the blobs; an archive with several images fails before anything is
    recorded (its blobs stay unreferenced: `prune` removes them)."""
    import os

    from pybuild.errors import PybuildError
    from pybuild.oci.image import load_image
    from pybuild.oci.store import ImageNotFound

    if text.startswith("oci-archive:"):
        from pybuild.oci.archive import ArchiveError, read_oci_archive

        path = text[len("oci-archive:"):]
        if not path:
            raise PybuildError(f"{text}: expected oci-archive:FILE")
        if not os.path.exists(path):
            raise PybuildError(f"{text}: no such file")
        if os.path.isdir(path):
            raise PybuildError(f"{text}: is a directory, not an archive file")
        try:
            loaded = read_oci_archive(path, store.content)
        except OSError as e:
            raise PybuildError(f"{text}: {e.strerror or e}") from None
        except (ArchiveError, ValueError) as e:
            raise PybuildError(f"{text}: {e}") from None
        digests = {d for _, d in loaded}
        if len(digests) != 1:
            raise PybuildError(f"{text}: the archive holds {len(digests)} images; run needs exactly one")
        try:
            return load_image(store.content, digests.pop()), text
        except ValueError as e:  # InvalidImage: a manifest/config that does not fit together
            raise PybuildError(f"{text}: {e}") from None
    try:
        return store.images.image(text), text
    except ImageNotFound as e:
        raise PybuildError(str(e).strip('"')) from None
    except ValueError as e:
        raise PybuildError(f"{text}: {e}") from None


def _mount_requests(args) -> list:
    """-v, --mount and --tmpfs parsed and checked, before anything is created: a bad value, a
    repeated target or a missing ``--mount type=bind`` source fails the run here, as docker's
    does ("bind source path does not exist"); a missing ``-v`` host path is created later."""
    import os

    from pybuild.runtime.options import RunOptionError, parse_mount, parse_tmpfs, parse_volume

    reqs = [parse_volume(v) for v in args.volume] + [parse_mount(m) for m in args.mount] + \
        [parse_tmpfs(t) for t in args.tmpfs]
    targets = [r.target for r in reqs]
    dup = next((t for t in targets if targets.count(t) > 1), None)
    if dup:
        raise RunOptionError(f"duplicate mount point: {dup}")
    for r in reqs:
        if r.type == "bind" and not r.create_host_dir and not os.path.exists(r.source):
            raise RunOptionError(f"{r.flag}: bind source path does not exist: {r.source}")
    return reqs


def _mounts_config(reqs, store, lowerdirs, image_volumes) -> list[dict]:
    import os
    import secrets

    from pybuild.runtime.options import MountRequest
    from pybuild.runtime.volumes import VolumeStore, seed_from_image

    reqs = list(reqs)
    targets = [r.target for r in reqs]
    # the image's VOLUMEs not covered by a flag get anonymous volumes, as docker does
    for path in sorted(image_volumes or {}):
        norm = os.path.normpath(path) if path.startswith("/") else None
        if norm and norm != "/" and norm not in targets:
            reqs.append(MountRequest("volume", norm, None))
    vols = VolumeStore(store.root)
    out = []
    for r in reqs:
        entry = {"Type": r.type, "Destination": r.target, "RW": not r.readonly}
        if r.type == "bind":
            if not os.path.exists(r.source):  # -v HOST:CTR only: _mount_requests refused --mount's
                os.makedirs(r.source, exist_ok=True)
            entry["Source"] = r.source
        elif r.type == "volume":
            name = r.source or secrets.token_hex(32)
            vols.ensure(name, seed=lambda dest, t=r.target: seed_from_image(lowerdirs, t, dest),
                        anonymous=r.source is None)
            entry.update(Source=name, Name=name, Anonymous=r.source is None)
        else:
            entry["Options"] = list(r.options)
        out.append(entry)
    return out


def run(args, store_factory) -> int:
    import os
    import sys
    from pathlib import Path

    from pybuild.cache.gc import build_lease
    from pybuild.errors import PybuildError
    from pybuild.runtime import launch
    from pybuild.runtime.containers import ContainerStore
    from pybuild.runtime.options import (RunOptionError, command_line, parse_env, parse_env_file,
                                         parse_signal)

    store = store_factory()
    store.clean_stale()
    network = args.network or ("bridge" if bridge_available() else "none")
    containers = ContainerStore(store.root)
    settle(store, containers, network=network == "bridge")

    if network == "bridge" and not bridge_available():
        raise RunOptionError("--network bridge: bridge networking is not available in this installation")
    if args.publish and network != "bridge":
        raise RunOptionError(f"-p needs the bridge network (--network {network} publishes nothing)")
    for name, addr in args.add_host:
        if addr == "host-gateway" and network == "none":
            raise RunOptionError(f"--add-host {name}:{addr}: --network none has no way to the host")
    if args.stop_timeout is not None and args.stop_timeout < -1:
        raise RunOptionError(f"--stop-timeout {args.stop_timeout}: must be >= 0 (-1: wait forever)")
    if args.interactive and args.tty and not args.detach and not os.isatty(0):
        raise RunOptionError("the input device is not a TTY (drop -t, or run from a terminal)")
    env_items: list[str] = []
    for name in args.env_file:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RunOptionError(f"--env-file {name}: {getattr(e, 'strerror', None) or e}") from None
        env_items += parse_env_file(name, text)
    env_items += args.env
    if args.publish:
        from pybuild.runtime import network as net

        for p in args.publish:
            try:
                net.parse_publish(p)
            except net.NetworkError as e:
                raise RunOptionError(str(e)) from None  # names the -p value
    if args.workdir is not None and not args.workdir.startswith("/"):
        raise RunOptionError(f"-w {args.workdir}: the working directory {args.workdir!r} is invalid, "
                             "it needs to be an absolute path")
    mount_requests = _mount_requests(args)  # before the image is loaded or any record is made

    with build_lease(store.root):  # until the record exists: then GC sees it as a root
        img, image_name = _resolve_image(store, args.image)
        c = img.config.get("config") or {}
        argv = command_line(c, args.entrypoint, args.cmd)
        if not argv:
            raise PybuildError(f"{image_name}: no command given and the image has no CMD or ENTRYPOINT")
        stop_signal = parse_signal(args.stop_signal if args.stop_signal else c.get("StopSignal"),
                                   "--stop-signal" if args.stop_signal else "the image's StopSignal")
        lowerdirs = store.snapshots.lowerdirs(img.layers)
        mounts = _mounts_config(mount_requests, store, lowerdirs, c.get("Volumes"))
        config = {
            "Image": image_name, "ImageId": img.id, "ImageManifest": img.manifest_digest,
            "Args": argv, "Env": parse_env(list(c.get("Env") or []), env_items, dict(os.environ)),
            "WorkingDir": args.workdir or c.get("WorkingDir") or "/", "User": args.user or c.get("User") or "",
            "Network": network, "Ports": list(args.publish), "Mounts": mounts,
            "ExtraHosts": [f"{name}:{addr}" for name, addr in args.add_host],
            "Resources": {"Memory": args.memory, "Cpus": args.cpus, "PidsLimit": args.pids_limit},
            "ReadOnly": args.read_only, "Tty": args.tty, "OpenStdin": args.interactive,
            "AutoRemove": args.rm, "Detach": args.detach, "StopSignal": stop_signal,
            "StopTimeout": 10 if args.stop_timeout is None else args.stop_timeout,
            "LowerDirs": [str(p) for p in lowerdirs], "Hostname": args.hostname,
            "Userns": _userns_config(args.userns),
        }
        try:
            ctr, lock_fd = containers.create(config, args.name)
        except BaseException:
            _drop_anonymous(store, mounts)
            raise
    config = ctr.config

    if args.detach:
        return _detach(store, containers, ctr, lock_fd)
    try:
        status = _foreground(store, ctr, lowerdirs, args)
    finally:
        os.close(lock_fd)
        if args.rm:
            launch.remove(store, containers, ctr, force=False)
            if args.image.startswith("oci-archive:"):
                _drop_unused_image(store, img)
    if status.oom_killed:
        mem = config["Resources"]["Memory"]
        print(f"pybuild: container killed: out of memory, limit {mem / (1 << 20):g} MiB" if mem
              else "pybuild: container killed: out of memory", file=sys.stderr)
    return status.code


def _drop_unused_image(store, img) -> None:
    """After `run --rm oci-archive:FILE`: the image was never tagged, so once its container is
    gone its snapshots (which `fsck` would report as garbage) and blobs are unreferenced unless
    an image, a container or a cache record also uses them.  Remove those of ``img`` that
    nothing reaches, under the exclusive GC lock; if a build or another command holds the store
    (GCBusy) or index.json is unreadable, leave them for `prune`."""
    from pybuild.cache import gc

    try:
        with gc.exclusive(store.root, wait=False):
            roots = gc.mark(store, include_cache=True)
            for layer in img.layers:
                if layer.diff_id not in roots.diff_ids:
                    store.snapshots.remove(layer.diff_id)
            for digest in [img.manifest_digest, img.config_digest] + [layer.digest for layer in img.layers]:
                if digest not in roots.blobs:
                    store.content.delete(digest)
    except (gc.GCBusy, ValueError, OSError):
        pass


def _drop_anonymous(store, mounts: list[dict]) -> None:
    from pybuild.runtime.volumes import VolumeStore

    vols = VolumeStore(store.root)
    for m in mounts:
        if m.get("Anonymous") and vols.exists(m["Source"]):
            vols.remove(m["Source"], [])


def open_runtime(store_factory):
    """(store, ContainerStore) after crash recovery: what every container command starts with."""
    from pybuild.runtime.containers import ContainerStore

    store = store_factory()
    containers = ContainerStore(store.root)
    settle(store, containers)
    return store, containers


def settle(store, containers, *, network: bool = True) -> None:
    """Crash recovery for every runtime command: records of killed pybuild processes are
    settled and their network endpoints released; with ``network``, also every stale bridge
    endpoint of the host (`run --network none|host` skips that sweep: it never touches the
    bridge, and a later bridge run or any other container command does it)."""
    from pybuild.runtime import launch

    if network and bridge_available():
        from pybuild.runtime import network

        try:
            network.cleanup_stale(store.root)
        except Exception:  # noqa: BLE001 - a host without nft/ip must still run --network none
            pass
    for c in containers.clean_stale():
        try:
            launch.release_network(store.root, c)
        except Exception:  # noqa: BLE001 - retried on the next start
            pass
        if c.config.get("AutoRemove"):
            launch._remove_anonymous_volumes(store.root, c)


def _foreground(store, ctr, lowerdirs, args):
    """Run attached: output to our stdout/stderr and, as docker does, into the container's log
    (so `logs` works for it too); with -t through a pty, else through pipes."""
    import os
    import signal
    import sys
    import threading

    from pybuild.runtime import launch
    from pybuild.runtime.logs import LogWriter, pump

    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    log = LogWriter(ctr.log_path)
    pty = None
    pumper = None
    to_close: list[int] = []
    old = {}
    try:
        if args.tty:
            from pybuild.runtime.tty import Pty

            pty = Pty()
            out = sys.stdout.buffer

            def sink(data: bytes) -> None:
                log.write("stdout", data)
                try:
                    out.write(data)
                    out.flush()
                except OSError:
                    pass

            pty.start(0 if args.interactive else None, sink, raw=args.interactive and os.isatty(0))
            stdio = (pty.slave, pty.slave, pty.slave)
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            to_close = [out_w, err_w]
            sys.stdout.flush()
            sys.stderr.flush()
            pumper = threading.Thread(target=pump, args=({out_r: "stdout", err_r: "stderr"}, log,
                                                         {"stdout": 1, "stderr": 2}), daemon=True)
            pumper.start()
            stdio = (0 if args.interactive else devnull, out_w, err_w)

            # SIGINT/SIGTERM are forwarded by the sandbox runner; these others by us
            def forward(sig, _frame):
                pid = launch.init_pid(os.getpid())
                if pid is not None:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass

            for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
                old[sig] = signal.signal(sig, forward)
        try:
            return launch.execute(store, ctr, lowerdirs, stdin=stdio[0], stdout=stdio[1], stderr=stdio[2])
        finally:
            for fd in to_close:
                os.close(fd)
            if pumper is not None:
                pumper.join()  # EOF once the container's copies of the pipes are closed
            if pty is not None:
                pty.finish()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        os.close(devnull)
        log.close()


def _detach(store, containers, ctr, lock_fd: int) -> int:
    import os
    import subprocess
    import sys

    from pybuild.runtime import launch

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "pybuild.runtime.supervisor", str(store.root), ctr.id,
             str(lock_fd), str(ready_w)],
            pass_fds=(lock_fd, ready_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    except BaseException:
        os.close(ready_r)
        os.close(ready_w)
        os.close(lock_fd)
        launch.remove(store, containers, ctr, force=True)
        raise
    os.close(ready_w)
    os.close(lock_fd)  # the supervisor holds the run now
    proc.wait()  # the first child exits at once (double fork)
    with os.fdopen(ready_r, "rb") as f:
        line = f.read().decode("utf-8", "replace").strip()
    if line == "ok":
        print(ctr.id)
        return 0
    msg = line.removeprefix("error ").strip() or "the container's supervisor failed to start"
    print(f"ERROR: {msg}", file=sys.stderr)
    return 125
