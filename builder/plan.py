"""Build planning: which stages to build, in which order, from which bases. Pure, no I/O.

The plan is a DAG of stages. A stage depends on another when its FROM names it
or when one of its `COPY --from=` names it (by name or index). Stages that the
target does not reach are skipped, as BuildKit does.

Pre-FROM ARGs ("global args") are visible in FROM lines only; a stage sees an
ARG once it declares it (taking the global value as default when it redeclares
one without a value). `--build-arg` overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from pybuild.builder.mounts import MountSpecError, mount_location, parse_mount
from pybuild.errors import BuildError
from pybuild.grammar import ast, expand_word

# BuildKit predefines these without an ARG line (they still need `ARG NAME` inside a stage).
PREDEFINED_ARGS = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


@dataclass(frozen=True)
class StagePlan:
    """One stage to build. `base_stage` is set when FROM names an earlier stage; else `base_image`."""

    stage: ast.Stage
    label: str                      # the stage name, or its index as a string
    base_image: str | None          # expanded FROM image ("scratch" included); None when base_stage is set
    base_stage: int | None
    copy_from: tuple[int, ...]      # indices of stages that COPY --from reads
    global_args: Mapping[str, str]  # expanded global ARG values, the defaults for redeclared ARGs


@dataclass(frozen=True)
class BuildPlan:
    stages: tuple[StagePlan, ...]   # topological order, only those the target needs
    target: int                     # index of the stage whose result is the image
    unused_build_args: tuple[str, ...] = field(default=())
    total_stages: int = 0


def location(node: ast.Instruction, where: tuple[int, int] | None = None) -> str:
    """"FILE:LINE:COL" (1-based) of the instruction `node`'s keyword, or of `where`, a (line, col)
    inside it (see `flag_location`, `word_location`)."""
    line, col = where or (node.span.start_line, node.span.start_col)
    return f"{node.span.file}:{line}:{col}"


_ANY: object = object()


def flag_location(node: ast.Instruction, name: str, value: object = _ANY, *, at_value: bool = True) -> str:
    """"FILE:LINE:COL" of `node`'s last `--name` flag (the last whose value is `value`, if given):
    of its value, or with `at_value=False` of the flag itself; the instruction's if there is none."""
    if value is _ANY:
        return location(node, node.flag_position(name, at_value=at_value))
    return location(node, node.flag_position(name, value, at_value=at_value))


def word_location(node: ast.Instruction, word: str) -> str:
    """"FILE:LINE:COL" of the argument `word` as written in `node`; the instruction's if not there."""
    return location(node, node.word_position(word))


def stage_index(ref: str, stages: tuple[ast.Stage, ...], before: int) -> int | None:
    """Index of the stage named (or numbered) `ref` among stages[:before], or None."""
    lowered = ref.lower()
    for s in stages[:before]:
        if s.name is not None and s.name.lower() == lowered:
            return s.index
    if ref.isdigit() and int(ref) < before:
        return int(ref)
    return None


def expand_global_args(dockerfile: ast.Dockerfile, build_args: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = dict(PREDEFINED_ARGS)
    for arg in dockerfile.global_args:
        for name, default in arg.pairs:
            if name in build_args:
                values[name] = build_args[name]
            elif default is not None:
                values[name] = _expand(default, values, arg)
            else:
                values.setdefault(name, "")
    return values


def _expand(word: str, env: Mapping[str, str], node: ast.Instruction) -> str:
    try:
        return expand_word(word, env)
    except ValueError as exc:
        raise BuildError(str(exc), word_location(node, word)) from None


NETWORK_MODES = ("default", "none", "host")
SUPPORTED_PLATFORMS = ("linux/amd64", "linux/x86_64", "linux/amd64/v1")


def check_supported(ins: ast.Instruction, allow: frozenset[str] = frozenset()) -> None:
    """Refuse, before anything runs, what this version would otherwise ignore or get wrong,
    and what needs an entitlement (`--allow`) the build was not given."""
    def refuse(flag: str) -> None:
        raise BuildError(f"{ins.keyword} --{flag} is not supported by pybuild yet",
                         flag_location(ins, flag, at_value=False))

    if isinstance(ins, ast.Run):
        for text in ins.mounts:
            try:
                parse_mount(text)  # keys and constant values now; the rest once expanded
            except MountSpecError as exc:
                raise BuildError(f"RUN --mount={text}: {exc}", mount_location(ins, text)) from None
        if ins.security == "insecure" and "security.insecure" not in allow:
            raise BuildError("RUN --security=insecure runs with all capabilities and no seccomp filter; "
                             "allow it with --allow security.insecure", flag_location(ins, "security"))
        if ins.security not in (None, "sandbox", "insecure"):
            raise BuildError(f"RUN --security={ins.security}: expected sandbox or insecure",
                             flag_location(ins, "security"))
        if ins.network is not None and ins.network not in NETWORK_MODES:
            raise BuildError(f"RUN --network={ins.network}: expected one of {', '.join(NETWORK_MODES)}",
                             flag_location(ins, "network"))
        if ins.has_flag("device"):
            refuse("device")
    elif isinstance(ins, (ast.Copy, ast.Add)):
        if isinstance(ins, ast.Add) and ins.has_flag("checksum") and not ins.checksum:
            raise BuildError("ADD --checksum needs a value (sha256:<hex> for a URL, a commit for git)",
                             flag_location(ins, "checksum"))
        for value in ins.flag_values("exclude"):
            if not value:
                raise BuildError(f"{ins.keyword} --exclude needs a pattern",
                                 flag_location(ins, "exclude", value, at_value=False))
    elif isinstance(ins, ast.From):
        if ins.platform and ins.platform.lower() not in SUPPORTED_PLATFORMS and "$" not in ins.platform:
            raise BuildError(f"FROM --platform={ins.platform}: only linux/amd64 can be built on this host",
                             flag_location(ins, "platform"))
    elif isinstance(ins, ast.Onbuild):
        check_supported(ins.instruction, allow)


def plan(dockerfile: ast.Dockerfile, build_args: Mapping[str, str], target: str | None = None,
         allow: frozenset[str] = frozenset()) -> BuildPlan:
    stages = dockerfile.stages
    if not stages:
        raise BuildError("no build stage in Dockerfile (it needs a FROM line)", dockerfile.filename)
    global_args = expand_global_args(dockerfile, build_args)

    plans: list[StagePlan] = []
    for stage in stages:
        image = _expand(stage.base.image, global_args, stage.base)
        if not image:
            raise BuildError("FROM names an empty image (an unset ARG?)", word_location(stage.base, stage.base.image))
        base_stage = stage_index(image, stages, stage.index)
        if base_stage is None and stage.name is not None and image.lower() == stage.name.lower():
            raise BuildError(f"stage {stage.name!r} uses itself as its base",
                             word_location(stage.base, stage.base.image))
        copy_from: list[int] = []
        for ins in stage.instructions:
            if isinstance(ins, ast.Copy) and ins.from_stage:
                src = ins.from_stage
                if "$" in src:
                    raise BuildError(f"COPY --from={src}: variable expansion is not supported for --from, "
                                     "use an ARG in a FROM line and name that stage", flag_location(ins, "from"))
                idx = stage_index(src, stages, stage.index)
                later = any((s.name or "").lower() == src.lower() for s in stages[stage.index:])
                if idx is None and (later or (src.isdigit() and int(src) < len(stages))):
                    raise BuildError(f"COPY --from={src} names this stage or a later one; "
                                     "it can only read stages defined before it", flag_location(ins, "from"))
                if idx is not None:
                    copy_from.append(idx)
            if isinstance(ins, ast.Run):  # RUN --mount=from=STAGE reads that stage too
                for text in ins.mounts:
                    try:
                        src = parse_mount(text).from_
                    except MountSpecError as exc:
                        raise BuildError(f"RUN --mount={text}: {exc}", mount_location(ins, text)) from None
                    idx = stage_index(src, stages, stage.index) if src else None
                    later = bool(src) and any((s.name or "").lower() == src.lower() for s in stages[stage.index:])
                    if src and idx is None and (later or (src.isdigit() and int(src) < len(stages))):
                        raise BuildError(f"RUN --mount from={src} names this stage or a later one; "
                                         "it can only read stages defined before it",
                                         mount_location(ins, text, "from"))
                    if idx is not None:
                        copy_from.append(idx)
        plans.append(StagePlan(stage=stage, label=stage.name or str(stage.index),
                               base_image=None if base_stage is not None else image,
                               base_stage=base_stage, copy_from=tuple(copy_from),
                               global_args=global_args))

    if target is None:
        target_index = len(stages) - 1
    else:
        found = stage_index(target, stages, len(stages))
        if found is None:
            names = ", ".join(s.name for s in stages if s.name) or "none"
            raise BuildError(f"target stage {target!r} not found (stages: {names})", "--target")
        target_index = found

    needed: set[int] = set()

    def visit(i: int) -> None:
        if i in needed:
            return
        needed.add(i)
        p = plans[i]
        if p.base_stage is not None:
            visit(p.base_stage)
        for j in p.copy_from:
            visit(j)

    visit(target_index)
    ordered = tuple(p for p in plans if p.stage.index in needed)  # earlier stages only depend on earlier ones
    for p in ordered:
        check_supported(p.stage.base, allow)
        for ins in p.stage.instructions:
            check_supported(ins, allow)

    consumed = {name for arg in dockerfile.global_args for name, _ in arg.pairs}
    for p in ordered:
        for ins in p.stage.instructions:
            if isinstance(ins, ast.Arg):
                consumed.update(name for name, _ in ins.pairs)
    unused = tuple(sorted(k for k in build_args if k not in consumed and k not in PREDEFINED_ARGS
                          and k not in PROXY_ARGS and k != "SOURCE_DATE_EPOCH"))  # the build itself uses it
    return BuildPlan(stages=ordered, target=target_index, unused_build_args=unused, total_stages=len(stages))
