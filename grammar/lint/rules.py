"""The lint rules, one small function each, registered under BuildKit's rule names.

Every rule takes a :class:`Context` and yields ``(span, message)`` pairs; names, messages and URLs
follow moby/buildkit ``frontend/dockerfile/linter/ruleset.go``.  Rule order in :data:`RULES` is the
order in which same-position warnings are listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .. import ast as A
from ..expand import ExpansionError, Lex, expand_word

__all__ = ["Rule", "RULES", "Context", "rule", "suggest"]

Finding = tuple[A.SourceSpan, str]
_DOCS = "https://docs.docker.com/go/dockerfile/rule/"


@dataclass(frozen=True)
class Rule:
    name: str
    url: str
    func: Callable[["Context"], Iterator[Finding]]


RULES: dict[str, Rule] = {}


def rule(name: str, slug: str) -> Callable:
    """Register ``func`` as the rule ``name`` documented at ``docs.docker.com/go/dockerfile/rule/<slug>/``."""

    def deco(func: Callable[["Context"], Iterator[Finding]]):
        RULES[name] = Rule(name, f"{_DOCS}{slug}/", func)
        return func

    return deco


# ---- shared helpers --------------------------------------------------------------------------------

# Arguments every build defines without an ARG (BuildKit's automatic platform args and proxy args).
PLATFORM_ARGS = frozenset({
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
    "TARGETSTAGE",
})
PROXY_ARGS = frozenset({
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
})
# BuildKit's default PATH, which it adds to a stage's image env when the base image has none
# (dockerfile2llb: "make sure that PATH is always set"), before the instructions are checked.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The environment assumed for an external base image whose config the caller did not supply.
DEFAULT_IMAGE_ENV = {"PATH": DEFAULT_PATH}


class _Recorder(Mapping[str, str]):
    """An expansion environment that records the names looked up but not defined."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> str:
        return self.env[key]

    def __contains__(self, key: object) -> bool:
        if key in self.env:
            return True
        if isinstance(key, str) and key not in self.missing:
            self.missing.append(key)
        return False

    def __iter__(self):
        return iter(self.env)

    def __len__(self) -> int:
        return len(self.env)


def unmatched_vars(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Names a word reads that ``env`` does not define (like BuildKit's ``ProcessWordWithMatches``)."""
    rec = _Recorder(env)
    try:
        Lex(escape).process(word, rec)
    except ExpansionError:
        pass  # the builder reports malformed words; the linter only wants the names seen so far
    return rec.missing


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggest(name: str, options) -> str:
    """The closest option within two edits (BuildKit's ``suggest.Search``), or ``""``."""
    best, best_dist = "", 3
    for opt in sorted(set(options)):
        if opt == name:
            continue
        dist = _levenshtein(name, opt)
        if dist < best_dist and dist < len(name):
            best, best_dist = opt, dist
    return best


def keyword_as_written(ins: A.Instruction) -> str:
    """The instruction keyword with the casing the author used (``run``, ``Run``, ``RUN``)."""
    words = ins.original.split(None, 1)
    return words[0] if words else ins.keyword


def _split_words(text: str) -> list[str]:
    return text.split()


def _from_words(base: A.From) -> list[str]:
    """The FROM line's words after the keyword and its flags."""
    words = _split_words(base.original)[1:]
    return [w for w in words if not w.startswith("--")] if words else []


def _is_abs(path: str) -> bool:
    return path.startswith("/") or bool(re.match(r"^[A-Za-z]:[\\/]", path))


class Context:
    """What the rules share: the file, the build args, and per-stage variable scopes (computed once)."""

    def __init__(self, df: A.Dockerfile, build_args: Mapping[str, str],
                 base_env: Mapping[str, Mapping[str, str]] | None = None):
        self.df = df
        self.build_args = dict(build_args)
        self.base_env = dict(base_env or {})
        self.escape = df.escape

    def top_level(self) -> Iterator[A.Instruction]:
        """Every top-level instruction in file order (global ARGs, FROMs and stage bodies)."""
        items: list[A.Instruction] = list(self.df.global_args)
        for st in self.df.stages:
            items.append(st.base)
            items.extend(st.instructions)
        items.sort(key=lambda i: (i.span.start_line, i.span.start_col))
        return iter(items)

    def stage_index(self, name: str) -> int | None:
        """Index of the earlier stage a FROM names, or ``None`` for an external image."""
        key = name.lower()
        for st in self.df.stages:
            if st.name == key:
                return st.index
        return None

    def global_arg_env(self) -> dict[str, str]:
        """Global ARG values (defaults, overridden by build args) visible to FROM lines."""
        env: dict[str, str] = {}
        for ins in self.df.global_args:
            for key, default in ins.pairs:
                if key in self.build_args:
                    env[key] = self.build_args[key]
                elif default is not None:
                    env[key] = _expand_quiet(default, env, self.escape)
        return env

    def expand_base(self, image: str) -> str:
        return _expand_quiet(image, self.global_arg_env(), self.escape)


def _expand_quiet(word: str, env: Mapping[str, str], escape: str) -> str:
    try:
        return Lex(escape).process(word, env)[0]
    except ExpansionError:
        return word


# ---- rules ---------------------------------------------------------------------------------------

@rule("NoEmptyContinuation", "no-empty-continuation")
def no_empty_continuation(ctx: Context) -> Iterator[Finding]:
    """Blank lines inside a continuation (``RUN a \\`` + empty line + ``b``), which BuildKit
    deprecates; reported once per instruction, at its start, like BuildKit's parser warning."""
    for ins in ctx.top_level():
        if ins.span.empty_continuation_lines:
            yield ins.span, "Empty continuation line"


@rule("StageNameCasing", "stage-name-casing")
def stage_name_casing(ctx: Context) -> Iterator[Finding]:
    """Stage names should be lowercase (``FROM x AS Build``)."""
    for st in ctx.df.stages:
        words = _from_words(st.base)
        if len(words) >= 3 and words[1].lower() == "as":
            name = words[2]
            if name != name.lower():
                yield st.base.span, f"Stage name '{name}' should be lowercase"


@rule("FromAsCasing", "from-as-casing")
def from_as_casing(ctx: Context) -> Iterator[Finding]:
    """The ``AS`` keyword should have the casing of ``FROM`` (``FROM x as y`` is reported)."""
    for st in ctx.df.stages:
        words = _from_words(st.base)
        if len(words) < 3 or words[1].lower() != "as":
            continue
        from_kw, as_kw = keyword_as_written(st.base), words[1]
        if from_kw[:1].islower() != as_kw[:1].islower():
            yield st.base.span, f"'{as_kw}' and '{from_kw}' keywords' casing do not match"


@rule("ConsistentInstructionCasing", "consistent-instruction-casing")
def consistent_instruction_casing(ctx: Context) -> Iterator[Finding]:
    """All instruction keywords should share one casing, the majority's (ties count as uppercase)."""
    items = list(ctx.top_level())
    lower = upper = 0
    for ins in items:
        kw = keyword_as_written(ins)
        if kw == kw.lower():
            lower += 1
        elif kw == kw.upper():
            upper += 1
    majority_lower = lower > upper
    for ins in items:
        kw = keyword_as_written(ins)
        if majority_lower and kw != kw.lower():
            yield ins.span, f"Command '{kw}' should match the case of the command majority (lowercase)"
        elif not majority_lower and kw != kw.upper():
            yield ins.span, f"Command '{kw}' should match the case of the command majority (uppercase)"


@rule("DuplicateStageName", "duplicate-stage-name")
def duplicate_stage_name(ctx: Context) -> Iterator[Finding]:
    """Stage names should be unique (the parser already refuses duplicates; kept for models built by hand)."""
    seen: set[str] = set()
    for st in ctx.df.stages:
        if st.name is None:
            continue
        if st.name in seen:
            yield st.base.span, f'Duplicate stage name "{st.name}", stage names should be unique'
        seen.add(st.name)


@rule("JSONArgsRecommended", "json-args-recommended")
def json_args_recommended(ctx: Context) -> Iterator[Finding]:
    """CMD/ENTRYPOINT in shell form, unless a SHELL was set for the stage (or a stage it builds on)."""
    shell_set: dict[int, bool] = {}
    for st in ctx.df.stages:
        parent = ctx.stage_index(ctx.expand_base(st.base.image))
        has_shell = shell_set.get(parent, False) if parent is not None and parent < st.index else False
        for ins in st.instructions:
            if isinstance(ins, A.Shell):
                has_shell = True
            elif isinstance(ins, (A.Cmd, A.Entrypoint)) and isinstance(ins.command, A.ShellForm):
                if not has_shell:
                    yield ins.span, (f"JSON arguments recommended for {ins.keyword} to prevent "
                                     "unintended behavior related to OS signals")
        shell_set[st.index] = has_shell


@rule("MaintainerDeprecated", "maintainer-deprecated")
def maintainer_deprecated(ctx: Context) -> Iterator[Finding]:
    """MAINTAINER is deprecated; use ``LABEL org.opencontainers.image.authors=...``."""
    for ins in ctx.top_level():
        if isinstance(ins, A.Maintainer):
            yield ins.span, "Maintainer instruction is deprecated in favor of using label"


@rule("UndefinedArgInFrom", "undefined-arg-in-from")
def undefined_arg_in_from(ctx: Context) -> Iterator[Finding]:
    """FROM (image and ``--platform``) may only use global ARGs and the predefined platform args."""
    declared = [key for ins in ctx.df.global_args for key, _ in ins.pairs]
    env = {k: "" for k in declared} | {k: "" for k in PLATFORM_ARGS}
    for st in ctx.df.stages:
        words = [st.base.image] + [v for k, v in st.base.flags if k == "platform" and v]
        for word in words:
            for name in unmatched_vars(word, env, ctx.escape):
                hint = suggest(name, declared)
                msg = f"FROM argument '{name}' is not declared"
                yield st.base.span, msg + (f" (did you mean {hint}?)" if hint else "")


# What the platform args hold when the linter expands a FROM line (this builder's only platform).
_PLATFORM_DEFAULTS = {
    "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": "",
    "TARGETPLATFORM": "linux/amd64", "TARGETOS": "linux", "TARGETARCH": "amd64", "TARGETVARIANT": "",
}


@rule("InvalidDefaultArgInFrom", "invalid-default-arg-in-from")
def invalid_default_arg_in_from(ctx: Context) -> Iterator[Finding]:
    """A FROM image built from ARGs that, with their defaults alone (no ``--build-arg``), gives an
    empty or invalid image reference (``ARG TAG`` + ``FROM alpine:$TAG``).  Only FROM lines that use
    variables are checked: a literal bad name is the builder's error, not a default's."""
    from pybuild.oci.reference import InvalidReference, parse_reference  # pure; only imported when needed

    env: dict[str, str] = dict(_PLATFORM_DEFAULTS)
    for ins in ctx.df.global_args:
        for key, default in ins.pairs:
            env[key] = _expand_quiet(default, env, ctx.escape) if default is not None else ""
    for st in ctx.df.stages:
        if "$" not in st.base.image:
            continue
        try:
            name = Lex(ctx.escape).process(st.base.image, env)[0]
        except ExpansionError:
            continue  # the builder reports a malformed word
        try:
            parse_reference(name)
        except InvalidReference:
            yield st.base.span, f"Default value for ARG {st.base.image} results in empty or invalid base image name"


@rule("UndefinedVar", "undefined-var")
def undefined_var(ctx: Context) -> Iterator[Finding]:
    """Variables used where the builder expands them must be ENV/ARG-defined before use.

    Checked: ADD, COPY, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults (not
    RUN/CMD/ENTRYPOINT, whose shell expands).  A stage on an earlier stage starts with that stage's
    variables; one on an external image with that image's ENV when the caller supplied it
    (``Context.base_env``), else with ``PATH`` only; PATH is always set (BuildKit's default when
    the image has none), so ``ENV PATH=/x:$PATH`` is never reported.
    """
    global_defaults = {k: v for ins in ctx.df.global_args for k, v in ins.pairs}
    scopes: dict[int, dict[str, str]] = {}
    for st in ctx.df.stages:
        parent = ctx.stage_index(ctx.expand_base(st.base.image))
        if parent is not None and parent < st.index:
            env = dict(scopes[parent])
        else:
            image_env = ctx.base_env.get(ctx.expand_base(st.base.image))
            env = dict(image_env) if image_env is not None else dict(DEFAULT_IMAGE_ENV)
            env.setdefault("PATH", DEFAULT_PATH)
        known = env.keys() | PLATFORM_ARGS | PROXY_ARGS
        for ins in st.instructions:
            reported: set[str] = set()
            for word in _expanded_words(ins):
                for name in unmatched_vars(word, env, ctx.escape):
                    if name in known or name in reported:
                        continue
                    reported.add(name)
                    hint = suggest(name, env.keys())
                    msg = f"Usage of undefined variable '${name}'"
                    yield _var_span(ins, word, name), msg + (f" (did you mean ${hint}?)" if hint else "")
            if isinstance(ins, A.Env):
                new = {k: _expand_quiet(v, env, ctx.escape) for k, v in ins.pairs}
                env.update(new)
            elif isinstance(ins, A.Arg):
                for key, default in ins.pairs:
                    if key in ctx.build_args:
                        env[key] = ctx.build_args[key]
                    elif default is not None:
                        env[key] = _expand_quiet(default, env, ctx.escape)
                    elif global_defaults.get(key) is not None:
                        env[key] = global_defaults[key] or ""
                    else:
                        env[key] = ""  # declared without a value: defined (empty) for the linter
            known = known | env.keys()
        scopes[st.index] = env


def _var_span(ins: A.Instruction, word: str, name: str) -> A.SourceSpan:
    """``ins``'s span starting where the variable ``name`` is used in ``word`` (a flag value or an
    argument as written), also on a continuation line; the instruction's span if not found."""
    import dataclasses

    text = ins.original
    offset = None
    for (key, value), (raw, at) in zip(ins.flags, ins.span.flag_words):
        if value == word:
            offset = at + raw.find("=") + 1
    if offset is None and word:
        i = text.find(word, ins.span.args_offset)
        while i >= 0:
            if (i == 0 or text[i - 1] in A._WORD_BEFORE) and \
                    (i + len(word) == len(text) or text[i + len(word)] in A._WORD_AFTER):
                offset = i
                break
            i = text.find(word, i + 1)
    if offset is None:
        return ins.span
    for ref in ("${" + name, "$" + name):
        j = word.find(ref)
        if j >= 0:
            offset += j
            break
    line, col = ins.span.position(offset)
    return dataclasses.replace(ins.span, start_line=line, start_col=col)


def _expanded_words(ins: A.Instruction) -> list[str]:
    """The words of ``ins`` the builder runs through variable expansion."""
    flags = [v for k, v in ins.flags if v is not None and k in ("chown", "chmod", "from")]
    if isinstance(ins, (A.Copy, A.Add)):
        return flags + list(ins.sources) + [ins.dest]
    if isinstance(ins, (A.Env, A.Label)):
        return [w for pair in ins.pairs for w in pair]
    if isinstance(ins, A.Arg):
        return [v for _, v in ins.pairs if v is not None]
    if isinstance(ins, A.Expose):
        return list(ins.ports)
    if isinstance(ins, A.Workdir):
        return [ins.path]
    if isinstance(ins, A.User):
        return [ins.user]
    if isinstance(ins, A.StopSignal):
        return [ins.signal]
    if isinstance(ins, A.Volume):
        return list(ins.paths)
    return []


@rule("RedundantTargetPlatform", "redundant-target-platform")
def redundant_target_platform(ctx: Context) -> Iterator[Finding]:
    """``FROM --platform=$TARGETPLATFORM`` is the default and can be dropped."""
    for st in ctx.df.stages:
        platform = st.base.platform if st.base.platform is not None else st.base.flag("platform")
        if platform is not None and platform.strip() in ("$TARGETPLATFORM", "${TARGETPLATFORM}"):
            yield st.base.span, (f"Setting platform to predefined {platform.strip()} in FROM is redundant "
                                 "as this is the default behavior")


@rule("MultipleInstructionsDisallowed", "multiple-instructions-disallowed")
def multiple_instructions_disallowed(ctx: Context) -> Iterator[Finding]:
    """Only the last CMD, ENTRYPOINT or HEALTHCHECK of a stage counts; each earlier one is reported."""
    for st in ctx.df.stages:
        last: dict[str, A.Instruction] = {}
        for ins in st.instructions:
            if isinstance(ins, (A.Cmd, A.Entrypoint, A.Healthcheck)):
                prev = last.get(ins.keyword)
                if prev is not None:
                    yield prev.span, (f"Multiple {ins.keyword} instructions should not be used in the "
                                      "same stage because only the last one will be used")
                last[ins.keyword] = ins


@rule("WorkdirRelativePath", "workdir-relative-path")
def workdir_relative_path(ctx: Context) -> Iterator[Finding]:
    """A relative WORKDIR before any WORKDIR in the stage (or the stages it builds on) depends on the base image."""
    set_in: dict[int, bool] = {}
    for st in ctx.df.stages:
        parent = ctx.stage_index(ctx.expand_base(st.base.image))
        workdir_set = set_in.get(parent, False) if parent is not None and parent < st.index else False
        known: dict[str, str] = {}  # ENV/ARG values set in this stage, to judge the path as BuildKit does: expanded
        for ins in st.instructions:
            if isinstance(ins, (A.Env, A.Arg)):
                for key, value in ins.pairs:
                    known[key] = _expand_or_none(value or "", known) or ""
            if isinstance(ins, A.Workdir):
                path = _expand_or_none(ins.path, known)
                # A path built from variables this file does not set (e.g. the base image's ENV) can't be judged.
                if not workdir_set and path is not None and not _is_abs(path):
                    yield ins.span, f'Relative workdir "{ins.path}" can have unexpected results if the base image changes'
                workdir_set = True
        set_in[st.index] = workdir_set


def _expand_or_none(word: str, known: dict[str, str]) -> str | None:
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", word))
    if not names <= known.keys():
        return None
    try:
        return expand_word(word, known)
    except ValueError:
        return None


_SECRETS = re.compile(r"(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)")
_SECRETS_ALLOW = re.compile(r"(?i)(?:_|^)public(?:_|$)")


@rule("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env")
def secrets_used_in_arg_or_env(ctx: Context) -> Iterator[Finding]:
    """ARG/ENV names that look like credentials (``API_KEY``, ``DB_PASSWORD``, ``GITHUB_TOKEN``)."""
    for ins in ctx.top_level():
        if isinstance(ins, (A.Arg, A.Env)):
            for key, _ in ins.pairs:
                if _SECRETS.search(key) and not _SECRETS_ALLOW.search(key):
                    yield ins.span, f'Do not use ARG or ENV instructions for sensitive data ({ins.keyword} "{key}")'


@rule("LegacyKeyValueFormat", "legacy-key-value-format")
def legacy_key_value_format(ctx: Context) -> Iterator[Finding]:
    """``ENV key value`` / ``LABEL key value`` (whitespace separator) instead of ``key=value``."""
    for ins in ctx.top_level():
        if isinstance(ins, (A.Env, A.Label)):
            words = ins.original.split(None, 2)
            if len(words) >= 2 and "=" not in words[1]:
                kw = ins.keyword
                yield ins.span, f'"{kw} key=value" should be used instead of legacy "{kw} key value" format'
