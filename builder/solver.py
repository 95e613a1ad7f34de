"""The build engine: runs a BuildPlan, stage by stage, step by step, through the cache.

Stages run in parallel threads (a stage waits only for the stages it reads);
steps within a stage run in order. For each filesystem step (RUN, COPY,
WORKDIR) the engine derives a cache key from the parent key and the step's
expanded definition (`builder.keys`), and either reuses the recorded layer
(CACHED) or executes the step:

  RUN      sandbox.run() on an overlay of the stage's snapshots; the upper dir is the diff
  COPY     files written into a fresh dir (no sandbox), read through a LayeredView
  WORKDIR  a directory created when the image lacks it

and turns the resulting directory into a layer (`cache.layers.write_layer`),
keeps the directory as the layer's snapshot, and records the key in the cache
index. Metadata instructions (ENV, LABEL, CMD, ...) only change the config.

Cleanup: every work dir a step creates is removed by that step, on success,
failure or interruption; sandbox.run() owns its namespaces and mounts.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import errno
import functools
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from pybuild.builder import copy as copyop
from pybuild.builder.chmod import ChmodError, SymbolicMode, parse_chmod
from pybuild.builder import fetch
from pybuild.builder import mounts as mountsop
from pybuild.builder.context import ContextView
from pybuild.builder.dockerignore import DockerIgnore
from pybuild.builder.explain import MissExplainer
from pybuild.builder.keys import result_key, step_key
from pybuild.builder.plan import (PROXY_ARGS, StagePlan, check_supported, flag_location, location, plan,
                                  stage_index, word_location)
from pybuild.cache.gc import build_lease
from pybuild.cache.index import CacheRecord
from pybuild.cache.transfer import (CacheExportSpec, CacheImportSpec, CacheSources, export_cache,
                                    snapshot_mounts)
from pybuild.cache.layers import LayerBlob, write_layer
from pybuild.cache.steplock import StepLock, StepLockCancelled
from pybuild.cache.view import LayeredView
from pybuild.errors import BuildError
from pybuild.grammar import DockerfileError, ast, expand_word, expand_words, parse
from pybuild.oci.image import Image, ImageRecord, as_oci_layers, canonical_json, new_config, write_image
from pybuild.oci.store import ImageNotFound
from pybuild.progress import Reporter, Step
from pybuild.sandbox import ProcessSpec, Resources, RootfsSpec, SandboxError, abort_all
from pybuild.sandbox.idmap import IdMap
from pybuild.sandbox.runner import run as sandbox_run
from pybuild.store import Store

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ["/bin/sh", "-c"]
HISTORY_COMMENT = "buildkit.dockerfile.v0"
LOG_TAIL_LINES = 40
_FS_STEPS = (ast.Run, ast.Copy, ast.Add, ast.Workdir)
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
_PORT = re.compile(r"\d{1,5}(-\d{1,5})?(/(tcp|udp|sctp))?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_LONE_HEREDOC = re.compile(r"<<-?(?P<q>[\"']?)[^\s\"']+(?P=q)")


def default_jobs() -> int:
    """Steps executing at once when --jobs is not given: twice the CPU count, at least 4.

    BuildKit bounds nothing by default; a bound of the core count itself made three
    independent CPU-bound stages on 2 cores take two rounds (2x one stage) where sharing the
    cores finishes them in 1.5x. Twice the cores lets the kernel share them (and overlaps steps
    that wait on the network or the disk) while a 30-stage build still cannot start 30 RUNs."""
    return max(4, 2 * (os.cpu_count() or 1))


@dataclass
class BuildOptions:
    context: Path
    dockerfile: ast.Dockerfile
    tags: list[str] = field(default_factory=list)
    # no tags: record the image nameless in the store anyway (the default output); False when the
    # image only goes to an archive, a directory or a registry
    keep_untagged: bool = True
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    network: str = "none"
    source_date_epoch: int | None = None
    ignore: DockerIgnore | None = None
    ignore_file: str = ".dockerignore"
    remember_context_digests: bool = True    # False for a throwaway context (stdin tar, URL): read once
    resources: Resources | None = None       # cgroup limits for every RUN (not part of cache keys)
    userns: IdMap | None = None              # --userns=auto: RUN in a user namespace (same result: not in keys)
    allow: frozenset[str] = frozenset()      # entitlements, e.g. "security.insecure"
    compression: str = "gzip"                # layer blobs: gzip, zstd or none (part of cache keys)
    no_cache_filter: frozenset[str] = frozenset()  # stage names whose steps must miss (lower case)
    cache_from: tuple[CacheImportSpec, ...] = ()   # --cache-from: records consulted after the local index
    cache_to: CacheExportSpec | None = None        # --cache-to: where to export this build's records
    jobs: int = 0                            # steps executing at once (RUN/COPY/ADD misses); 0 = default_jobs()
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: set on the final image only
    secrets: Mapping[str, mountsop.Secret] = field(default_factory=dict)  # --secret id -> bytes (never in keys)
    ssh: Mapping[str, str] = field(default_factory=dict)     # --ssh id -> agent socket path
    pull: str = "missing"                    # FROM images: "missing" pulls absent ones, "always", "never"
    # --add-host: name -> address in every RUN's /etc/hosts (in RUN keys when given, as BuildKit's
    # ExecOp carries them: a step may bake the address into its result)
    extra_hosts: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StageState:
    """What a stage has built so far: the image being assembled and what its next step is keyed
    on (``key``: the base's key, then each step's :func:`result_key`)."""

    layers: list[LayerBlob]
    config: dict
    key: str
    shell: list[str]
    args: dict[str, str] = field(default_factory=dict)       # ARGs declared in this stage, with values
    cmd_from_base: bool = True
    rebuilt: bool = False                                      # a step of this stage (or its base) ran
    keys: list[str] = field(default_factory=list)              # cache keys of its steps, base's first
    # When the stage's newest content was made: the base image's `created`, then each step's cache
    # record.  History and the image's `created` use it, so a fully cached rebuild (here, or on
    # another runner with --cache-from) writes the very same image, as a rebuild should.
    created: str | None = None


class Prepared(NamedTuple):
    """A filesystem step, ready to key and (on a miss) to execute."""

    definition: dict                     # what the cache key is derived from
    execute: Callable[[Step], LayerBlob | None]
    created_by: str                      # the history entry's text
    files: dict[str, str] | None = None  # for COPY/ADD: path -> digest, to name changed files on a miss


class StepFailed(BuildError):
    def __init__(self, message: str, location: str, log_tail: list[str], log_path: Path | None = None):
        super().__init__(message, location)
        self.log_tail = log_tail
        self.log_path = log_path  # the step's whole output, never clipped


class Solver:
    def __init__(self, store: Store, reporter: Reporter, options: BuildOptions):
        self.store = store
        self.reporter = reporter
        self.opts = options
        self._numbers = iter(range(1, 1 << 30))
        self._number_lock = threading.Lock()
        self.cancelled = threading.Event()
        self._created = _created(options.source_date_epoch)
        self.context_view = ContextView(options.context, options.ignore, options.ignore_file,
                                        checksums=store.index if options.remember_context_digests else None)
        self.cache = CacheSources.open(store.index, options.cache_from, warn=reporter.warning)
        self.used_records: dict[str, CacheRecord] = {}  # every step's record in this build (--cache-to)
        self.final_keys: list[str] = []                 # the target stage's step keys (--cache-to mode=min)
        self.cache_mount_ids: set[str] = set()          # RUN --mount=type=cache ids of this build (mounts=true)
        self.explainer = MissExplainer(store.root)
        self._trigger_args: set[str] = set()  # ARGs declared by base images' ONBUILD triggers
        self._pull_lock = threading.Lock()
        self._pulled: dict[str, str] = {}     # FROM text -> manifest digest pulled by this build
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()
        # Stage threads are cheap and wait on each other; what --jobs bounds is the work itself.
        self._executing = threading.BoundedSemaphore(options.jobs or default_jobs())

    # -- entry point ------------------------------------------------------------------------------
    def solve(self) -> ImageRecord:
        build_plan = plan(self.opts.dockerfile, self.opts.build_args, self.opts.target, self.opts.allow)
        results: dict[int, Future] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(build_plan.stages)), thread_name_prefix="stage") as pool:
            for sp in build_plan.stages:
                results[sp.stage.index] = pool.submit(self._build_stage, sp, results)
            try:
                final: StageState = results[build_plan.target].result()
                self.final_keys = list(final.keys)
                for f in results.values():
                    f.result()
                # Warn only now: a base image's ONBUILD triggers may declare ARGs too.
                for name in build_plan.unused_build_args:
                    # BUILDKIT_* build args are the builder's own switches (as BuildKit, no warning)
                    if name not in self._trigger_args and not name.startswith("BUILDKIT_"):
                        self.reporter.warning(f"build argument {name!r} was given but no ARG in the built "
                                              "stages uses it")
            except BaseException:
                # Stop the other stages: no new steps start, and running sandboxes are killed
                # (their init processes ignore the terminal's Ctrl-C, which only the main thread sees).
                self.cancelled.set()
                abort_all()
                raise
        return write_image(self.store.content, self._finish_config(final), final.layers)

    def _finish_config(self, state: StageState) -> dict:
        cfg = _copy.deepcopy(state.config)
        cfg["created"] = self._content_time(state)
        if self.opts.labels:  # like buildx --label: the final image only, after the Dockerfile's LABELs
            cfg["config"]["Labels"] = {**(cfg["config"].get("Labels") or {}), **self.opts.labels}
        return cfg

    def _number(self) -> int:
        with self._number_lock:
            return next(self._numbers)

    # -- stages -----------------------------------------------------------------------------------
    def _build_stage(self, sp: StagePlan, results: dict[int, Future]) -> StageState:
        stage = sp.stage
        state, unpacked = self._base_state(sp, results)
        instructions = self._onbuild_triggers(state, sp) + list(stage.instructions)
        fs_steps = [i for i in instructions if isinstance(i, _FS_STEPS)]
        total = 1 + len(fs_steps)
        prefix = f"[{stage.name} " if stage.name else "["
        counter = iter(range(2, total + 1))

        step = Step(self._number(), f"{prefix}1/{total}] FROM {sp.base_image or stage.base.image}")
        self.reporter.step_started(step)
        if unpacked:
            self.reporter.step_done(step)
            self.reporter.step_cache_info(step, cached=False, reason="base image unpacked")
        else:
            self.reporter.step_cached(step)
            self.reporter.step_cache_info(step, cached=True)

        for ins in instructions:
            if self.cancelled.is_set():
                raise BuildError("build cancelled")
            env = self._expansion_env(state)
            if isinstance(ins, _FS_STEPS):
                label = f"{prefix}{next(counter)}/{total}] {_one_line(ins.original)}"
                self._fs_step(ins, label, state, env, sp, results)
            else:
                self._metadata(ins, state, env, sp)
        return state

    def _base_state(self, sp: StagePlan, results: dict[int, Future]) -> tuple[StageState, bool]:
        """The stage's starting state, and whether base layers had to be unpacked for it."""
        if sp.base_stage is not None:
            parent: StageState = results[sp.base_stage].result()
            state = _copy.deepcopy(parent)
            state.args = {}
            state.cmd_from_base = True
            return state, False
        image = sp.base_image
        if image == "scratch":
            cfg = new_config(None)
            cfg["config"]["Env"] = [f"PATH={DEFAULT_PATH}"]
            return StageState(layers=[], config=cfg, key=step_key(None, {"from": "scratch"}),
                              shell=list(DEFAULT_SHELL)), False
        img = self._base_image(image, sp)
        img.layers = as_oci_layers(img.layers)  # docker schema2 bases: same blobs, OCI media types
        fresh = [layer for layer in img.layers if not self.store.snapshots.exists(layer.diff_id)]
        self.store.snapshots.lowerdirs(img.layers)
        cfg = new_config(img.config)
        base_created = cfg.pop("created", None)
        env = cfg["config"]["Env"] = list(cfg["config"].get("Env") or [])  # buildah writes "Env": null
        if not any(e.startswith("PATH=") for e in env):  # as BuildKit: "make sure that PATH is always set"
            env.append(f"PATH={DEFAULT_PATH}")
        shell = list(cfg["config"].get("Shell") or DEFAULT_SHELL)  # a base image's SHELL applies, as in BuildKit
        return StageState(layers=list(img.layers), config=cfg, key=step_key(None, {"from": img.manifest_digest}),
                          shell=shell, created=base_created if isinstance(base_created, str) else None), bool(fresh)

    def _base_image(self, image: str, sp: StagePlan) -> Image:
        """The FROM image: from the local store (docker's names: `busybox` finds `busybox:latest`,
        as does `docker.io/library/busybox`), pulled when absent (pull policy "missing"), always
        refreshed ("always"), or never pulled ("never"). Errors name the FROM line."""
        from pybuild.oci.reference import InvalidReference, normalize_reference

        try:
            remote = normalize_reference(image)
        except InvalidReference:
            remote = None
        names = [image] + ([str(remote.local())] if remote is not None else [])
        if self.opts.pull != "always":
            for name in names:
                try:
                    return self.store.images.image(name)
                except ImageNotFound:
                    continue
            if self.opts.pull == "never" or remote is None:
                raise BuildError(f"base image {image!r} not found in the local store and --pull=never forbids "
                                 "pulling it (see `pybuild images`, `pybuild pull`)" if remote is not None else
                                 f"base image {image!r} not found in the local store", self._image_location(sp))
        if remote is None:
            raise BuildError(f"base image {image!r} is not a valid image reference", self._image_location(sp))
        from pybuild.registry.client import RegistryError
        from pybuild.registry.pull import pull

        with self._pull_lock:  # two stages FROM the same image pull it once
            if image not in self._pulled:
                if self.opts.pull != "always":  # another stage may have pulled it meanwhile
                    try:
                        return self.store.images.image(str(remote.local()))
                    except ImageNotFound:
                        pass
                try:
                    result = pull(self.store, remote, progress=self.reporter.info)
                except (RegistryError, ValueError) as exc:
                    raise BuildError(f"base image {image!r} not found in the local store, and pulling it failed: {exc}",
                                     self._image_location(sp)) from None
                self._pulled[image] = result.manifest_digest
            from pybuild.oci.image import load_image
            return load_image(self.store.content, self._pulled[image])

    @staticmethod
    def _image_location(sp: StagePlan) -> str:
        """Where the stage's FROM names its base image."""
        return word_location(sp.stage.base, sp.stage.base.image)

    def _onbuild_triggers(self, state: StageState, sp: StagePlan) -> list[ast.Instruction]:
        """The base's ONBUILD triggers, parsed as instructions that run first; the image does not keep them."""
        triggers = state.config["config"].pop("OnBuild", None) or []
        if not triggers:
            return []
        source = f"ONBUILD triggers of {sp.base_image or sp.stage.base.image}"
        try:
            parsed = parse("FROM scratch\n" + "\n".join(triggers) + "\n", source)
        except DockerfileError as exc:
            raise BuildError(f"cannot parse the base image's ONBUILD triggers: {exc.message}",
                             self._image_location(sp)) from None
        instructions = list(parsed.stages[0].instructions)
        for ins in instructions:
            check_supported(ins, self.opts.allow)
            if isinstance(ins, ast.Arg):
                self._trigger_args.update(name for name, _ in ins.pairs)
        return instructions

    # -- variables --------------------------------------------------------------------------------
    def _expansion_env(self, state: StageState) -> dict[str, str]:
        """Values visible to word expansion: declared ARGs, then ENV (ENV wins)."""
        env = dict(state.args)
        env.update(_env_dict(state.config))
        return env

    def _run_env(self, state: StageState) -> dict[str, str]:
        """The environment of a RUN: the image's Env plus the stage's ARGs that no ENV shadows."""
        env = _env_dict(state.config)
        for k, v in state.args.items():
            env.setdefault(k, v)
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    # -- metadata instructions --------------------------------------------------------------------
    def _metadata(self, ins: ast.Instruction, state: StageState, env: dict[str, str], sp: StagePlan) -> None:
        c = state.config["config"]
        x = lambda w: self._expand(w, env, ins)  # noqa: E731
        if isinstance(ins, ast.Arg):
            for name, default in ins.pairs:
                if name in self.opts.build_args:
                    value = self.opts.build_args[name]
                elif default is not None:
                    value = x(default)
                elif name in sp.global_args:
                    value = sp.global_args[name]
                elif name in PROXY_ARGS and name in os.environ:
                    continue
                else:
                    continue
                state.args[name] = value
                env[name] = value
            return  # ARG leaves no history entry
        if isinstance(ins, ast.Env):
            # Every value sees the environment from before this instruction: `ENV A=1 B=$A` leaves B empty
            # unless A was already set, as docker does.
            current = _env_dict(state.config)
            current.update({name: x(value) for name, value in ins.pairs})
            c["Env"] = [f"{k}={v}" for k, v in current.items()]
        elif isinstance(ins, ast.Label):
            labels = c.get("Labels") or {}
            for name, value in ins.pairs:
                labels[x(name)] = x(value)
            c["Labels"] = labels
        elif isinstance(ins, ast.Expose):
            ports = c.get("ExposedPorts") or {}
            for word in ins.ports:
                for port in self._expand_list(word, env, ins):
                    try:
                        ports.update((key, {}) for key in exposed_ports(port))
                    except ValueError as exc:
                        raise BuildError(str(exc), word_location(ins, word)) from None
            c["ExposedPorts"] = ports
        elif isinstance(ins, ast.User):
            c["User"] = x(ins.user)
        elif isinstance(ins, ast.StopSignal):
            c["StopSignal"] = _stop_signal(x(ins.signal), ins)
        elif isinstance(ins, ast.Cmd):
            c["Cmd"] = self._command(ins.command, state)
            state.cmd_from_base = False
        elif isinstance(ins, ast.Entrypoint):
            c["Entrypoint"] = self._command(ins.command, state)
            if state.cmd_from_base:
                c.pop("Cmd", None)
        elif isinstance(ins, ast.Volume):
            vols = c.get("Volumes") or {}
            for word in ins.paths:
                for v in self._expand_list(word, env, ins):
                    vols[v] = {}
            c["Volumes"] = vols
        elif isinstance(ins, ast.Shell):
            state.shell = list(ins.args)
            c["Shell"] = list(ins.args)  # docker's extension field; OCI has none
        elif isinstance(ins, ast.Healthcheck):
            c["Healthcheck"] = self._healthcheck(ins, state, env)  # docker's extension field, as BuildKit writes
        elif isinstance(ins, ast.Onbuild):
            c["OnBuild"] = (c.get("OnBuild") or []) + [ins.instruction.original]
        elif isinstance(ins, (ast.Maintainer,)):
            state.config["author"] = ins.name
        else:
            raise BuildError(f"{type(ins).__name__.upper()} is not supported by this version of pybuild",
                             location(ins))
        self._history(state, ins, empty_layer=True)

    def _healthcheck(self, ins: ast.Healthcheck, state: StageState, env) -> dict:
        if ins.command is None:
            return {"Test": ["NONE"]}
        if isinstance(ins.command, ast.ExecForm):
            test = list(ins.command.args)
            if not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
                test = ["CMD"] + test
        else:
            test = ["CMD-SHELL", ins.command.text]
        out: dict = {"Test": test}
        for flag, field_name in (("interval", "Interval"), ("timeout", "Timeout"),
                                 ("start-period", "StartPeriod"), ("start-interval", "StartInterval")):
            value = ins.flag(flag)
            if value is not None:
                out[field_name] = self._duration(flag, self._expand(value, env, ins), ins)
        retries = ins.flag("retries")
        if retries is not None:
            retries = self._expand(retries, env, ins)
            if not retries.isdigit():
                raise BuildError(f"HEALTHCHECK --retries={retries}: expected a whole number",
                                 flag_location(ins, "retries"))
            out["Retries"] = int(retries)
        return out

    def _duration(self, flag: str, text: str, ins) -> int:
        """A Go duration ("30s", "1m30s", "500ms") in nanoseconds, as docker stores it."""
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise BuildError(f"HEALTHCHECK --{flag}={text}: expected a duration such as 30s or 1m30s",
                             flag_location(ins, flag))
        return int(sum(float(n) * _DURATION_NS[u] for n, u in parts))

    def _command(self, command, state: StageState) -> list[str]:
        if isinstance(command, ast.ExecForm):
            return list(command.args)
        return state.shell + [command.text]

    def _expand(self, word: str, env: Mapping[str, str], ins: ast.Instruction) -> str:
        try:
            return expand_word(word, env)
        except ValueError as exc:
            raise BuildError(str(exc), _word_or_flag_location(ins, word)) from None

    def _content_time(self, state: StageState) -> str:
        """SOURCE_DATE_EPOCH when given, else when the stage's content was made (never "now" for a
        cached result); "now" only for a stage with no dated content at all (scratch + metadata)."""
        if self.opts.source_date_epoch is not None:
            return self._created
        return state.created or self._created

    def _history(self, state: StageState, ins: ast.Instruction, empty_layer: bool, created_by: str | None = None):
        entry = {"created": self._content_time(state), "created_by": created_by or _one_line(ins.original),
                 "comment": HISTORY_COMMENT}
        if empty_layer:
            entry["empty_layer"] = True
        state.config.setdefault("history", []).append(entry)

    # -- filesystem steps -------------------------------------------------------------------------
    def _fs_step(self, ins, label: str, state: StageState, env: dict[str, str], sp: StagePlan,
                 results: dict[int, Future]) -> None:
        cleanup: list[Path] = []
        try:
            self._fs_step_in(ins, label, state, env, sp, results, cleanup)
        finally:
            for path in cleanup:
                shutil.rmtree(path, ignore_errors=True)

    def _fs_step_in(self, ins, label: str, state: StageState, env: dict[str, str], sp: StagePlan,
                    results: dict[int, Future], cleanup: list[Path]) -> None:
        step = Step(self._number(), label)
        self.reporter.step_started(step)
        try:
            self._run_step(step, ins, state, env, sp, results, cleanup)
        except BuildError as exc:
            # After Ctrl-C (or a failure elsewhere) the step was stopped by us: say so, not
            # "killed by signal 9", which reads like the step's own fault.
            self.reporter.step_failed(step, "cancelled" if self.cancelled.is_set() else str(exc))
            raise

    def _run_step(self, step: Step, ins, state: StageState, env: dict[str, str], sp: StagePlan,
                  results: dict[int, Future], cleanup: list[Path]) -> None:
        label = step.label
        if isinstance(ins, ast.Run):
            prepared = self._prepare_run(ins, state, env, sp, results)
        elif isinstance(ins, ast.Workdir):
            prepared = self._prepare_workdir(ins, state, env)
        else:
            prepared = self._prepare_copy(ins, state, env, sp, results, cleanup)
        definition, execute, created_by, files = prepared
        if self.opts.compression != "gzip":  # the recorded layer blob differs, so the key must too
            definition = {**definition, "compression": self.opts.compression}
        key = step_key(state.key, definition)
        with self._once(key):  # identical steps of parallel stages run once; the others then hit
            if self.cancelled.is_set():
                raise BuildError("build cancelled")
            self._execute_or_reuse(step, ins, state, sp, key, prepared, label)

    def _once(self, key: str) -> threading.Lock:
        with self._key_locks_guard:
            return self._key_locks.setdefault(key, threading.Lock())

    def _execute_or_reuse(self, step: Step, ins, state: StageState, sp: StagePlan, key: str,
                          prepared: Prepared, label: str) -> None:
        skip_reason = self._cache_skipped(sp)
        built_here = self.used_records.get(key)  # even with --no-cache: the same vertex, one build
        found = (built_here, None) if built_here is not None else (None if skip_reason else self.cache.get(key))
        if found is None and not skip_reason:
            # a miss: fill the key under its cross-process lock (cache/steplock.py), looking again
            # if another build held it: that build's result is then ours too
            lock = StepLock(self.store.root, key)
            try:
                if lock.acquire(on_wait=lambda pid: self._waiting_for(step, pid), cancelled=self.cancelled.is_set):
                    found = self.cache.get(key)
            except StepLockCancelled:
                raise BuildError("build cancelled") from None
            try:
                self._use_or_execute(step, ins, state, key, prepared, label, found, skip_reason)
            finally:
                lock.release()
        else:
            self._use_or_execute(step, ins, state, key, prepared, label, found, skip_reason)

    def _waiting_for(self, step: Step, pid: int | None) -> None:
        holder = f"pybuild process {pid}" if pid else "pybuild process"
        self.reporter.info(f"#{step.number} waiting: another {holder} is running this step; its result will be used")

    def _use_or_execute(self, step: Step, ins, state: StageState, key: str, prepared: Prepared, label: str,
                        found: tuple[CacheRecord, str | None] | None, skip_reason: str | None) -> None:
        definition, execute, created_by, files = prepared
        record = found[0] if found else None
        if record is not None:
            if found[1] is not None:
                self.reporter.info(f"#{step.number} cache imported from {found[1]}")
            self.reporter.step_cached(step)
            self.reporter.step_cache_info(step, cached=True, duration_s=time.monotonic() - step.started,
                                          saved_s=record.duration_s,
                                          bytes_reused=record.layer.size if record.layer else 0)
        else:
            reason = skip_reason or self._miss_reason(state, ins, definition, files)
            self.reporter.step_miss(step, reason)
            started = time.monotonic()
            try:
                with self._executing:
                    layer = execute(step)
            except BaseException:  # the next build's miss reason must not claim a result was made
                self.explainer.remember(state.key, ins.original, definition, files, failed=True)
                raise
            self.explainer.remember(state.key, ins.original, definition, files)
            record = CacheRecord(key=key, layer=layer, created=self._created_now(),
                                 duration_s=round(time.monotonic() - started, 3), description=label)
            self.store.index.put(key, record)
            state.rebuilt = True
            self.reporter.step_done(step)
            self.reporter.step_cache_info(step, cached=False, reason=reason, duration_s=record.duration_s)
        state.key = result_key(key, record.layer.diff_id if record.layer is not None else None)
        state.keys.append(key)
        state.created = record.created or state.created
        self.used_records[key] = record
        if record.layer is not None:
            state.layers.append(record.layer)
        self._history(state, ins, empty_layer=record.layer is None, created_by=created_by)

    def _cache_skipped(self, sp: StagePlan) -> str | None:
        """Why this stage's steps must not use the cache, if they must not."""
        if self.opts.no_cache:
            return "--no-cache"
        if sp.stage.name and sp.stage.name.lower() in self.opts.no_cache_filter:
            return f"--no-cache-filter {sp.stage.name}"
        return None

    def export_records(self, mode: str) -> list[CacheRecord]:
        """--cache-to: mode=min the final image's steps, mode=max every step of every built stage."""
        keys = self.final_keys if mode == "min" else list(self.used_records)
        return [self.used_records[k] for k in dict.fromkeys(keys)]

    def _miss_reason(self, state: StageState, ins, definition: dict, files: dict[str, str] | None) -> str:
        if self.opts.no_cache:
            return "--no-cache"
        if state.rebuilt:
            return "an earlier step was rebuilt"
        return (self.explainer.explain(state.key, ins.original, definition, files)
                or "not built before with these inputs (new instruction, base or earlier step)")

    def _created_now(self) -> str:
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _workdir_of(self, state: StageState) -> str:
        return state.config["config"].get("WorkingDir") or "/"

    def _prepare_workdir(self, ins: ast.Workdir, state: StageState, env):
        path = self._expand(ins.path, env, ins)
        if not path.startswith("/"):
            path = os.path.join(self._workdir_of(state), path)
        path = os.path.normpath(path)
        state.config["config"]["WorkingDir"] = path
        user = state.config["config"].get("User") or ""
        definition = {"op": "WORKDIR", "path": path}
        if user:  # the dirs it makes are the user's; only present when set, so root's keys stay as they were
            definition["user"] = user

        def execute(step: Step) -> LayerBlob | None:
            # As BuildKit's llb.Mkdir(wd, 0755, WithParents, WithUser(USER)): every directory made
            # (parents too) belongs to USER; existing ones are left alone; a non-directory on the
            # way fails this step ("mkdir /f: not a directory"), not the next RUN.
            view = LayeredView(self.store.snapshots.lowerdirs(state.layers))
            try:
                parts = view.resolve(path)
                existing = _workdir_existing(view, parts)
            except OSError as exc:
                raise BuildError(f"WORKDIR {path}: {exc.strerror or exc}", location(ins)) from None
            if existing == len(parts):
                return None
            owner = _workdir_owner(view, user)

            def fill(layer_dir: Path) -> None:
                copyop._make_parents(view, layer_dir, parts[:existing], None)  # their metadata, unchanged
                for i in range(existing + 1, len(parts) + 1):
                    out = layer_dir.joinpath(*parts[:i])
                    os.mkdir(out)
                    os.chmod(out, 0o755)
                    os.lchown(out, *owner)

            return self._layer_from(fill)

        return Prepared(definition, execute, f"WORKDIR {path}")

    def _run_command(self, ins: ast.Run, state: StageState) -> tuple[list[str], bytes | None]:
        """argv of a RUN, and what to feed its stdin (for a heredoc script with a #! line).

        As BuildKit does: `RUN <<EOF` alone runs the heredoc as a script (with its own
        interpreter when it starts with #!); any other shell-form heredoc goes to the shell
        with its body, so the shell handles `<<-`, quoting and expansion itself.
        """
        if isinstance(ins.command, ast.ExecForm) or not ins.heredocs:
            return self._command(ins.command, state), None
        text = ins.command.text.strip()
        if len(ins.heredocs) == 1 and _LONE_HEREDOC.fullmatch(text):
            body = ins.heredocs[0].chomped_content
            if body.startswith("#!"):
                interpreter = body[2:].splitlines()[0].split()
                if not interpreter:
                    raise BuildError("heredoc script has an empty #! line", location(ins))
                return interpreter + ["/dev/stdin"], body.encode()
            return state.shell + [body], None
        script = ins.command.text + "\n" + "".join(h.content + h.name + "\n" for h in ins.heredocs)
        return state.shell + [script], None

    def _run_mounts(self, ins: ast.Run, state: StageState, env: Mapping[str, str], sp: StagePlan,
                    results: dict[int, Future]):
        """The RUN's --mount specs (expanded, with defaults), the views binds and cache seeds read,
        and what of them goes into the cache key (for a bind also its source's content digest)."""
        specs: list[mountsop.MountSpec] = []
        sources: dict[int, mountsop.BindSource] = {}
        keys: list[dict] = []
        ssh_index = 0
        for text in ins.mounts:
            where = mountsop.mount_location(ins, text)

            def expand(word: str, where: str = where) -> str:
                try:
                    return expand_word(word, env)
                except ValueError as exc:  # e.g. ${VAR:?message}: point at the --mount value
                    raise BuildError(str(exc), where) from None

            try:
                spec = mountsop.resolve(mountsop.parse_mount(text, expand), self._workdir_of(state), ssh_index)
            except mountsop.MountSpecError as exc:
                raise BuildError(f"RUN --mount={text}: {exc}", where) from None
            ssh_index += spec.type == "ssh"
            key = spec.key_definition()
            if spec.type == "secret" and spec.required and spec.id not in self.opts.secrets:
                raise BuildError(f"RUN --mount=type=secret: secret {spec.id!r} is required but was not given "
                                 f"(--secret id={spec.id},src=FILE)", where)
            if spec.type == "ssh" and spec.required and spec.id not in self.opts.ssh:
                raise BuildError(f"RUN --mount=type=ssh: ssh agent {spec.id!r} is required but was not given "
                                 f"(--ssh {spec.id})", where)
            if spec.type == "bind" or (spec.type == "cache" and spec.from_):
                if spec.from_:
                    view, src_key, what = self._mount_from(spec.from_, sp, results,
                                                           mountsop.mount_location(ins, text, "from"))
                else:
                    view, src_key, what = self.context_view, "context", "build context"
                key["from"] = src_key
                if spec.type == "bind":
                    try:
                        matched = copyop.match_sources(view, [spec.source], what)
                        key["content"] = copyop.content_digest(copyop.content_manifest(view, matched))
                    except (copyop.CopyError, OSError) as exc:
                        raise BuildError(f"RUN --mount={text}: {exc}", where) from None
                sources[len(specs)] = mountsop.BindSource(view, spec.source)
            specs.append(spec)
            keys.append(key)
        return specs, sources, keys

    def _mount_from(self, name: str, sp: StagePlan, results: dict[int, Future], where: str):
        idx = stage_index(name, self.opts.dockerfile.stages, sp.stage.index)
        if idx is not None and idx in results:  # plan() made it a dependency (ONBUILD triggers: not)
            other: StageState = results[idx].result()
            return LayeredView(self.store.snapshots.lowerdirs(other.layers)), other.key, f"stage {name!r}"
        try:
            img = self.store.images.image(name)
        except ImageNotFound:
            raise BuildError(f"RUN --mount from={name}: no stage or local image of that name", where) from None
        return LayeredView(self.store.snapshots.lowerdirs(img.layers)), img.manifest_digest, f"image {name!r}"

    def _prepare_run(self, ins: ast.Run, state: StageState, expansion_env: Mapping[str, str] | None = None,
                     sp: StagePlan | None = None, results: dict[int, Future] | None = None):
        args, stdin_data = self._run_command(ins, state)
        mount_specs, mount_sources, mount_keys = (
            self._run_mounts(ins, state, expansion_env or {}, sp, results or {}) if ins.mounts else ([], {}, []))
        self.cache_mount_ids.update(m.id for m in mount_specs if m.type == "cache")
        env = self._run_env(state)
        user = state.config["config"].get("User") or None
        cwd = self._workdir_of(state)
        network = ins.network if ins.network not in (None, "default") else self.opts.network
        privileged = ins.security == "insecure"
        definition = {"op": "RUN", "args": args, "env": sorted(f"{k}={v}" for k, v in env.items()),
                      "user": user, "cwd": cwd, "network": network}
        if privileged:
            definition["security"] = "insecure"
        if self.opts.extra_hosts:
            definition["extra_hosts"] = sorted(f"{name}:{addr}" for name, addr in self.opts.extra_hosts.items())
        if mount_keys:
            definition["mounts"] = mount_keys
        # Proxy settings reach the step without an ARG line but stay out of the key, as in BuildKit:
        # a different proxy does not make a different result.
        proxies = {k: v for k, v in self.opts.build_args.items() if k in PROXY_ARGS and k not in env}
        run_env = {**env, **proxies}
        if stdin_data is not None:
            definition["stdin"] = stdin_data.decode()

        def execute(step: Step) -> LayerBlob:
            lowers = self.store.snapshots.lowerdirs(state.layers)
            work = self.store.snapshots.new_work_dir()
            try:
                upper, overlay_work = work / "upper", work / "work"
                upper.mkdir()
                overlay_work.mkdir()
                (work / "mounts").mkdir()
                try:
                    step_mounts = mountsop.prepare_mounts(
                        mount_specs, work_dir=work / "mounts", cache=mountsop.CacheMounts(self.store.root),
                        sources=mount_sources, secrets=self.opts.secrets, ssh=self.opts.ssh)
                except (OSError, mountsop.MountSpecError) as exc:
                    raise BuildError(f"RUN --mount: {exc}", location(ins)) from None
                with step_mounts:  # secrets, locks, agent proxies: released when the step ends
                    # under a user namespace the step's mounts are idmapped like its rootfs, so
                    # cache mounts, secrets and binds look (and are written) as without one
                    run_mounts = [dataclasses.replace(m, idmap=True) if m.type == "bind" else m
                                  for m in step_mounts.mounts]
                    spec = ProcessSpec(args=args, env={**run_env, **step_mounts.env}, cwd=cwd, user=user,
                                       network=network, privileged=privileged, resources=self.opts.resources,
                                       hostname=_short_id(definition), mounts=run_mounts,
                                       userns=self.opts.userns, extra_hosts=dict(self.opts.extra_hosts))
                    log_path = self.store.root / "logs" / f"{_short_id(definition)}.log"
                    status, tail = self._run_streaming(step, spec, RootfsSpec(lowers, upper, overlay_work),
                                                       stdin_data, location(ins), log_path)
                if status.oom_killed and status.code != 0:
                    limit = self.opts.resources.memory if self.opts.resources else None
                    raise StepFailed(f"RUN {_one_line(ins.original)[4:]} killed: out of memory"
                                     + (f", limit {_mib(limit)}" if limit else ""), location(ins), tail, log_path)
                if status.code != 0:
                    how = f"was killed by signal {status.signal}" if status.signal else f"exited {status.code}"
                    raise StepFailed(f"RUN {_one_line(ins.original)[4:]} {how}", location(ins), tail, log_path)
                layer = write_layer(upper, self.store.content, overlay_upper=True, compression=self.opts.compression,
                                    source_date_epoch=self.opts.source_date_epoch)
                self.store.snapshots.commit_dir(layer.diff_id, upper)
                return layer
            finally:
                shutil.rmtree(work, ignore_errors=True)

        created_by = "RUN " + " ".join(args) + " # buildkit"
        return Prepared(definition, execute, created_by)

    def _run_streaming(self, step: Step, spec: ProcessSpec, rootfs: RootfsSpec, stdin_data: bytes | None,
                       where: str, log_path: Path):
        """Run the step, streaming its output to the reporter and, whole, to `log_path`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        tail: list[str] = []
        stdin_fd = None
        if stdin_data is not None:
            stdin_fd, feed_fd = os.pipe()
            threading.Thread(target=_feed, args=(feed_fd, stdin_data), daemon=True).start()

        def pump() -> None:
            with os.fdopen(read_fd, "rb") as stream, open(log_path, "wb") as log:
                for raw in stream:
                    log.write(raw)
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    tail.append(line)
                    del tail[:-LOG_TAIL_LINES]
                    self.reporter.step_log(step, line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            status = sandbox_run(spec, rootfs, stdin=stdin_fd, stdout=write_fd, stderr=write_fd)
        except SandboxError as exc:
            raise BuildError(str(exc), where) from None
        finally:
            os.close(write_fd)
            if stdin_fd is not None:
                os.close(stdin_fd)
            reader.join()
        return status, tail

    def _prepare_copy(self, ins, state: StageState, env, sp: StagePlan, results: dict[int, Future],
                      cleanup: list[Path]):
        if ins.heredocs:
            return self._prepare_copy_heredocs(ins, state, env, cleanup)
        sources = [w for word in ins.sources for w in self._expand_list(word, env, ins)]
        is_add = isinstance(ins, ast.Add)
        remote = [s for s in sources if fetch.is_http_source(s) or fetch.is_git_source(s)] if is_add else []
        if not is_add and any(fetch.is_http_source(s) for s in sources):
            url = next(s for s in sources if fetch.is_http_source(s))
            raise BuildError("COPY cannot take a URL as a source (as in BuildKit); use ADD", word_location(ins, url))
        if is_add and ins.has_flag("checksum") and (len(sources) != 1 or not remote):
            raise BuildError("ADD --checksum needs exactly one source, a URL or a git repository (as in BuildKit, "
                             "local files are not checked)", flag_location(ins, "checksum", at_value=False))
        dest = self._expand(ins.dest, env, ins)
        if not dest.startswith("/"):
            wd = self._workdir_of(state)
            dest = os.path.join(wd, dest) + ("/" if dest.endswith("/") or dest in (".", "./") else "")
        what = "build context"
        if getattr(ins, "from_stage", None):
            src_view, src_key, what = self._copy_source(ins, sp, results)
        else:
            src_view, src_key = self.context_view, "context"
        staged = self._stage_remote(ins, env, remote, cleanup) if remote else None
        return self._copy_step(ins, state, env, src_view, src_key, what, sources, dest, staged)

    def _stage_remote(self, ins, env, remote: list[str], cleanup: list[Path]) -> dict[str, tuple]:
        """ADD's URL and git sources, fetched into a work dir this step removes:
        source -> (copy.Source, what the key names: the download's digest or the commit)."""
        checksum = self._expand(ins.flag("checksum"), env, ins) if ins.flag("checksum") else None
        work = self.store.snapshots.new_work_dir()
        cleanup.append(work)
        staged: dict[str, tuple] = {}
        for i, src in enumerate(remote):
            into = work / f"source-{i}"
            into.mkdir()
            where = word_location(ins, src)
            try:
                if fetch.is_git_source(src):
                    ref = fetch.parse_git_ref(src)
                    keep = _bool_flag(ins, "keep-git-dir", False)
                    commit = fetch.resolve_commit(ref)
                    if commit is None:  # an abbreviated commit: only a fetch resolves it
                        commit = fetch.checkout(ref, into, keep_git_dir=keep, checksum=checksum)
                        view = LayeredView([into / "tree"])
                        staged[src] = (copyop.Source(src, "/", view.lookup("/"), view=view, extract=False), commit)
                    else:  # the commit is the key, as for BuildKit: clone only if the step must run
                        if checksum is not None and not commit.startswith(checksum):
                            raise fetch.FetchError(f"checksum mismatch: expected commit {checksum}, "
                                                   f"{ref.ref or 'HEAD'} is {commit}")
                        staged[src] = (functools.partial(self._checkout, src, ref, into, keep, checksum, commit,
                                                         where), commit)
                elif checksum is not None:  # the checksum is the key: download only if the step must run
                    try:
                        fetch.check_checksum_syntax(checksum)
                    except fetch.FetchError as exc:  # a bad value: point at it
                        raise BuildError(f"ADD {src} failed: {exc}", flag_location(ins, "checksum")) from None
                    staged[src] = (functools.partial(self._download, ins, src, into, checksum, where), checksum)
                else:  # BuildKit too fetches the URL on every build and keys the step by what it got
                    got = self._download(ins, src, into, None, where)
                    staged[src] = (got, "sha256:" + copyop.file_sha256(got.entry))
            except fetch.FetchError as exc:
                raise BuildError(f"ADD {src} failed: {exc}", where) from None
        return staged

    def _checkout(self, src: str, ref, into: Path, keep: bool, checksum: str | None, expect: str | None,
                  where: str) -> copyop.Source:
        try:
            fetch.checkout(ref, into, keep_git_dir=keep, checksum=checksum, expect=expect)
        except fetch.FetchError as exc:
            raise BuildError(f"ADD {src} failed: {exc}", where) from None
        view = LayeredView([into / "tree"])
        return copyop.Source(src, "/", view.lookup("/"), view=view, extract=False)

    def _download(self, ins, src: str, into: Path, checksum: str | None, where: str) -> copyop.Source:
        name = fetch.url_filename(src)
        try:
            fetch.download(src, into, filename=name, checksum=checksum)
        except fetch.FetchError as exc:
            raise BuildError(f"ADD {src} failed: {exc}", where) from None
        view = LayeredView([into])
        return copyop.Source(src, name, view.lookup("/" + name), view=view,
                             extract=_bool_flag(ins, "unpack", False))

    def _prepare_copy_heredocs(self, ins, state: StageState, env, cleanup: list[Path]):
        """`COPY <<EOF /dest`: each heredoc becomes a file named after its delimiter, as in BuildKit.

        Unquoted delimiters get $VAR / ${VAR...} expanded with the build's values; quotes in the
        body are kept, since the body is file content, not a shell word.
        """
        markers = [w for w in ins.sources if w.startswith("<<")]
        if len(markers) != len(ins.sources):
            raise BuildError(f"{ins.keyword}: heredocs and files cannot be mixed in one instruction",
                             location(ins))
        tmp = Path(tempfile.mkdtemp(prefix="heredoc-", dir=self.store.snapshots.new_work_dir()))
        cleanup.append(tmp.parent)
        mtime = self.opts.source_date_epoch or 0
        for h in ins.heredocs:
            body = h.chomped_content if h.chomp else h.content
            if h.expand:
                body = _VARIABLE.sub(lambda m: self._expand(m.group(0), env, ins), body)
            path = tmp / h.name
            path.write_text(body, encoding="utf-8")
            os.chmod(path, 0o644)
            os.utime(path, (mtime, mtime))
        dest = self._expand(ins.dest, env, ins)
        if not dest.startswith("/"):
            dest = os.path.join(self._workdir_of(state), dest) + ("/" if dest.endswith("/") else "")
        return self._copy_step(ins, state, env, LayeredView([tmp]), "heredoc", "heredocs",
                               [h.name for h in ins.heredocs], dest)

    def _copy_step(self, ins, state: StageState, env, src_view: LayeredView, src_key: str, what: str,
                   sources: list[str], dest: str, staged: dict[str, tuple] | None = None):
        is_add = isinstance(ins, ast.Add)
        parents = _bool_flag(ins, "parents", False) if isinstance(ins, ast.Copy) else False
        excludes = [self._expand(p, env, ins) for p in ins.excludes]
        try:
            exclude = copyop.exclude_matcher(excludes)
        except ValueError as exc:
            raise BuildError(f"{ins.keyword} --exclude: {exc}", _bad_exclude_location(ins, excludes)) from None
        staged = staged or {}
        # Per source, in the written order: its matches, or (remote, keyed by checksum or commit)
        # the function that fetches it, called only if the step must run.
        picked = []
        for s in sources:
            try:
                picked.append(staged[s][0] if s in staged and callable(staged[s][0]) else
                              [staged[s][0]] if s in staged else
                              copyop.match_sources(src_view, [s], what, parents=parents))
            except (copyop.CopyError, OSError) as exc:
                raise BuildError(f"{ins.keyword} failed: {_copy_failure(exc, what)}", word_location(ins, s)) from None
        try:
            matched = [m for p in picked if not callable(p) for m in p]
            manifest = copyop.content_manifest(src_view, matched, exclude)
            manifest += [(s, s, staged[s][1]) for s, p in zip(sources, picked) if callable(p)]
        except (copyop.CopyError, OSError) as exc:
            raise BuildError(f"{ins.keyword} failed: {_copy_failure(exc, what)}", location(ins)) from None
        owner = self._owner(ins.chown, state, env, ins) if ins.chown else (0, 0)
        chmod = self._chmod(ins.chmod, env, ins) if ins.chmod else None
        definition = {"op": "ADD" if is_add else "COPY", "from": src_key, "sources": sources,
                      "content": copyop.content_digest(manifest), "dest": dest, "owner": list(owner),
                      "chmod": chmod.spec if isinstance(chmod, SymbolicMode) else chmod}
        # Only present when used, so keys of steps without these flags stay what they were.
        if parents:
            definition["parents"] = True
        if excludes:
            definition["exclude"] = excludes
        if staged:
            definition["remote"] = {s: fetched for s, (_, fetched) in staged.items()}
        if is_add and ins.has_flag("unpack"):
            definition["unpack"] = _bool_flag(ins, "unpack", True)
        if staged and ins.has_flag("keep-git-dir"):  # a deferred clone's key is only its commit
            definition["keep_git_dir"] = _bool_flag(ins, "keep-git-dir", False)
        files = {path: digest for _, path, digest in manifest}

        def execute(step: Step) -> LayerBlob:
            image = LayeredView(self.store.snapshots.lowerdirs(state.layers))
            now = [m for p in picked for m in ([p()] if callable(p) else p)]
            try:
                return self._layer_from(lambda d: copyop.copy_to_layer(
                    src_view, now, dest, image=image, layer_dir=d, owner=owner, chmod=chmod,
                    extract_archives=is_add and _bool_flag(ins, "unpack", True), exclude=exclude,
                    parents=parents, cancelled=self.cancelled.is_set))
            except (copyop.CopyError, OSError) as exc:
                raise BuildError(f"{ins.keyword} failed: {_copy_failure(exc, what)}", location(ins)) from None

        return Prepared(definition, execute, _one_line(ins.original), files)

    def _copy_source(self, ins, sp: StagePlan, results: dict[int, Future]):
        name = ins.from_stage
        idx = stage_index(name, self.opts.dockerfile.stages, sp.stage.index)
        if idx is not None:  # plan() made this stage a dependency, so its future exists
            other: StageState = results[idx].result()
            return (LayeredView(self.store.snapshots.lowerdirs(other.layers)), other.key, f"stage {name!r}")
        try:
            img = self.store.images.image(name)
        except ImageNotFound:
            raise BuildError(f"COPY --from={name}: no stage or local image of that name",
                             flag_location(ins, "from")) from None
        return LayeredView(self.store.snapshots.lowerdirs(img.layers)), img.manifest_digest, f"image {name!r}"

    def _expand_list(self, word: str, env, ins) -> list[str]:
        try:
            return expand_words(word, env)
        except ValueError as exc:
            raise BuildError(str(exc), word_location(ins, word)) from None

    def _owner(self, spec: str, state: StageState, env, ins) -> tuple[int, int]:
        spec = self._expand(spec, env, ins)
        user, _, group = spec.partition(":")
        view = LayeredView(self.store.snapshots.lowerdirs(state.layers))
        uid = _lookup_id(view, "/etc/passwd", user, 2)
        if uid is None:
            raise BuildError(f"--chown: user {user!r} not found in the image's /etc/passwd",
                             flag_location(ins, "chown"))
        if group:
            gid = _lookup_id(view, "/etc/group", group, 2)
            if gid is None:
                line, col = ins.flag_position("chown")
                if ins.chown == spec:  # written without variables: point at the group itself
                    col += len(user) + 1
                raise BuildError(f"--chown: group {group!r} not found in the image's /etc/group",
                                 location(ins, (line, col)))
        else:
            gid = uid if user.isdigit() else (_lookup_id(view, "/etc/passwd", user, 3) or 0)
        return uid, gid

    def _chmod(self, spec: str, env, ins) -> int | SymbolicMode:
        """--chmod's value, variables expanded as BuildKit does: an octal mode or a symbolic one."""
        value = self._expand(spec, env, ins)
        try:
            return parse_chmod(value)
        except ChmodError as exc:
            shown = spec if value == spec else f"{spec} ({value!r})"
            raise BuildError(f"--chmod={shown}: {exc}", flag_location(ins, "chmod")) from None

    def _layer_from(self, fill) -> LayerBlob | None:
        """Run `fill(dir)` on a fresh dir, turn the dir into a layer, keep it as that layer's snapshot."""
        work = self.store.snapshots.new_work_dir()
        try:
            layer_dir = work / "upper"
            layer_dir.mkdir()
            fill(layer_dir)
            layer = write_layer(layer_dir, self.store.content, compression=self.opts.compression,
                                source_date_epoch=self.opts.source_date_epoch)
            self.store.snapshots.commit_dir(layer.diff_id, layer_dir)
            return layer
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _bool_flag(ins, name: str, default: bool) -> bool:
    """A `--name[=true|false]` flag as BuildKit reads it (bare means true)."""
    if not ins.has_flag(name):
        return default
    value = ins.flag(name)
    if value is None or value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BuildError(f"{ins.keyword} --{name}={value}: expected true or false", flag_location(ins, name))


def _copy_failure(exc: Exception, what: str) -> str:
    """A COPY/ADD failure in words: a symlink loop (ELOOP) named as such, not as "[Errno 40]"."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        text = exc.strerror or ""
        path = text.split(": ", 1)[1] if ": " in text else (exc.filename or "?")
        return (f"{path!r} is a symlink loop in the {what}: its links lead back to themselves "
                "and never reach a file (too many levels of symbolic links)")
    return str(exc)


def _word_or_flag_location(ins, word: str) -> str:
    """Where `word` (an argument or a flag's value, unexpanded) is written in `ins`."""
    for name, value in ins.flags:
        if value == word:
            return flag_location(ins, name, value)
    return word_location(ins, word)


def _bad_exclude_location(ins, expanded: list[str]) -> str:
    """Where the first `--exclude` pattern that copy.exclude_matcher refuses is written."""
    for raw, pattern in zip(ins.excludes, expanded):
        try:
            copyop.exclude_matcher([pattern])
        except ValueError:
            return flag_location(ins, "exclude", raw)
    return location(ins)


def _short_id(definition: dict) -> str:
    """A RUN's host name: short, and the same every time the same step runs (reproducible output)."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()[:12]


def is_stop_signal(text: str) -> bool:
    """A signal name (SIGTERM, TERM) or number, as docker's signal.ParseSignal takes."""
    import signal as _signal

    if text.isdigit() and 0 < int(text) <= 64:
        return True
    name = text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
    return name in _signal.Signals.__members__ or re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", name) is not None


def exposed_ports(spec: str) -> list[str]:
    """The ExposedPorts keys of one EXPOSE word, as docker's nat.ParsePortSpecs: `80` ->
    `80/tcp`, `53/UDP` -> `53/udp`, a range `8000-8002` -> one key per port.  ValueError for a
    port outside 0-65535, a range that runs backwards, or anything else."""
    m = _PORT.fullmatch(spec)
    if not m:
        raise ValueError(f"EXPOSE {spec}: expected PORT, PORT/PROTO or a range such as 8000-8010/udp")
    ports, _, proto = spec.partition("/")
    first, _, last = ports.partition("-")
    start, end = int(first), int(last or first)
    if end > 65535:
        raise ValueError(f"EXPOSE {spec}: a port is a number from 0 to 65535")
    if end < start:
        raise ValueError(f"EXPOSE {spec}: the range ends before it starts")
    return [f"{port}/{(proto or 'tcp').lower()}" for port in range(start, end + 1)]


def _stop_signal(text: str, ins) -> str:
    if is_stop_signal(text):
        return text
    raise BuildError(f"STOPSIGNAL {text}: not a signal name or number", word_location(ins, ins.signal))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB"


def _feed(fd: int, data: bytes) -> None:
    """Write `data` to a pipe and close it; a reader that exits early just ends the write."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def _workdir_existing(view: LayeredView, parts: list[str]) -> int:
    """How many leading components of the resolved WORKDIR `parts` exist in the image (all
    directories); OSError ENOTDIR, worded as BuildKit's, at the first that is not a directory."""
    import stat as _stat

    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        entry = view.lookup(prefix, follow_final=False)
        if entry is None:
            return i - 1
        if not _stat.S_ISDIR(entry.st.st_mode):
            raise OSError(errno.ENOTDIR, f"mkdir {prefix}: not a directory")
    return len(parts)


def _workdir_owner(view: LayeredView, user: str) -> tuple[int, int]:
    """uid, gid of the dirs a WORKDIR makes under USER `user`, resolved as BuildKit's file op does
    (client/llb WithUser, solver/llbsolver/ops/user_linux.go readUser): a number is the uid and,
    without a group, the gid too; "root" is 0; a name is looked up in the image's /etc/passwd
    (its uid and gid) and a group name in /etc/group. A name not found is no error there: the
    user falls back to 0:0, the group to the user's gid."""
    name, _, group = user.partition(":")
    if not name or name == "root":
        uid = gid = 0
    elif name.isdigit():
        uid = gid = int(name)
    else:
        uid = _lookup_id(view, "/etc/passwd", name, 2)
        gid = (_lookup_id(view, "/etc/passwd", name, 3) or 0) if uid is not None else 0
        uid = uid or 0
    if group:
        found = 0 if group == "root" else _lookup_id(view, "/etc/group", group, 2)
        gid = gid if found is None else found
    return uid, gid


def _lookup_id(view: LayeredView, path: str, name: str, field_index: int) -> int | None:
    """A numeric id from a passwd/group file in the image (`name` may already be numeric)."""
    if name.isdigit():
        return int(name)
    entry = view.lookup(path)
    if entry is None:
        return None
    with open(entry.real, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if len(fields) > field_index and fields[0] == name and fields[field_index].isdigit():
                return int(fields[field_index])
    return None


def _env_dict(config: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in config.get("config", {}).get("Env") or []:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _created(source_date_epoch: int | None) -> str:
    when = (datetime.fromtimestamp(source_date_epoch, timezone.utc) if source_date_epoch is not None
            else datetime.now(timezone.utc))
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def export_build_cache(store: Store, reporter: Reporter, spec: CacheExportSpec, solver: Solver) -> None:
    """--cache-to: this build's records (and with mounts=true its cache mounts' contents) to a
    directory or a registry. CacheTransferError on failure; the caller holds the build lease."""
    mounts = (snapshot_mounts(mountsop.CacheMounts(store.root), solver.cache_mount_ids, store.content,
                              compression=solver.opts.compression) if spec.mounts else [])
    records = solver.export_records(spec.mode)
    if spec.ref is not None:
        from pybuild.registry.cache import export_cache_to_registry  # the registry client is big
        pushed = export_cache_to_registry(store, records, spec.ref, mounts=mounts)
        layers = len({r.layer.digest for r in records if r.layer} | {m.layer.digest for m in mounts})
        uploaded = f" ({pushed.push.stats.uploaded} blobs uploaded)"
    else:
        layers, uploaded = export_cache(store.content, records, spec.dest, mounts).layers, ""
    reporter.info(f"exported {len(records)} cache records, {len(mounts)} cache mounts and {layers} layers"
                  f"{uploaded} to {spec.target} (mode={spec.mode})")


def build(store: Store, reporter: Reporter, options: BuildOptions) -> ImageRecord:
    """Build the image and tag it. Tags are written only after every step and blob succeeded.

    The whole build holds a GC lease, so a concurrent `prune`/`rmi` never sweeps blobs
    or snapshots this build reads or has written but not yet tagged.
    """
    with build_lease(store.root):
        solver = Solver(store, reporter, options)
        try:
            for mount_id, origin in solver.cache.restore_mounts(mountsop.CacheMounts(store.root)):
                reporter.info(f"cache mount {mount_id!r} restored from {origin}")
            record = solver.solve()
        finally:
            solver.context_view.save_checksums()
            solver.cache.close()
        if options.cache_to is not None:  # before tagging: a failed export fails the build
            export_build_cache(store, reporter, options.cache_to, solver)
        for tag in options.tags:
            store.images.tag(tag, record.manifest)
        if not options.tags and options.keep_untagged:
            store.images.keep_untagged(record.manifest)  # docker's <none> image: usable by its id
    return record
