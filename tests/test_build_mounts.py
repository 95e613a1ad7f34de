"""RUN --mount=type=cache|bind|tmpfs|secret|ssh, `--secret` and `--ssh`.

Parsing and defaults are checked as pure functions against BuildKit's keys and defaults; the
rest runs the real CLI (root, namespaces) on a private copy of a store holding busybox:latest.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import re
import secrets as pysecrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from conftest import Result
from pybuild.builder import mounts as m
from pybuild.cache.view import LayeredView

# -- pure: parsing and defaults ----------------------------------------------------------------------


def test_parse_keys_aliases_and_standalone_flags():
    spec = m.parse_mount("type=cache,dst=/root/.cache,id=pip,sharing=LOCKED,mode=0700,uid=1000,gid=1000,ro")
    assert (spec.type, spec.target, spec.id, spec.sharing, spec.mode, spec.uid, spec.gid, spec.readonly) == \
        ("cache", "/root/.cache", "pip", "locked", 0o700, 1000, 1000, True)
    spec = m.parse_mount("TARGET=/src,src=app,from=build,readwrite=true")  # keys are case-insensitive
    assert (spec.type, spec.target, spec.source, spec.from_, spec.readonly) == ("bind", "/src", "app", "build", False)
    assert m.parse_mount("type=secret,id=a,required").required is True
    assert m.parse_mount("type=secret,id=a,required=false").required is False
    assert m.parse_mount("type=tmpfs,target=/t,size=64m").size == 64 << 20
    assert m.parse_mount('type=bind,"target=/a,b"').target == "/a,b"  # CSV quoting, as BuildKit's csv reader


@pytest.mark.parametrize("text, message", [
    ("type=bind,target=/x,bogus=1", "unexpected key 'bogus'"),
    ("type=volume,target=/x", "unsupported mount type 'volume'"),
    ("type=cache,target=/x,sharing=sometimes", "unsupported sharing value 'sometimes'"),
    ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
    ("type=bind,target=/x,mode=0755", "mode not allowed for 'bind' type mounts"),
    ("type=tmpfs,target=/x,uid=1", "uid not allowed for 'tmpfs' type mounts"),
    ("type=bind,target=/x,required", "unexpected key 'required' for mount type 'bind'"),
    ("type=cache,target=/x,size=1m", "unexpected key 'size' for mount type 'cache'"),
    ("type=cache,target=/x,mode=999", "invalid value 999 for mode"),
    ("type=cache,target=/x,uid=-1", "invalid value -1 for uid"),
    ("type=bind,target=/x,ro=maybe", "invalid value for ro: maybe"),
    ("type=secret,id=a,from=base", "secret mount should not have a from"),
    ("type=secret,id=a,src=b", "both source and id can't be set"),
    ("type=bind,target=/x,env=A", "unexpected key 'env' for mount type 'bind'"),
    ("type=secret,id=a,env=1BAD", "invalid value 1BAD for env"),
    ("type=bind,target=/x,from=$STAGE", "'from' doesn't support variable expansion"),
    ("type=bind,target", "invalid field 'target' must be a key=value pair"),
])
def test_parse_errors_name_the_field(text, message):
    with pytest.raises(m.MountSpecError, match=re.escape(message)):
        m.parse_mount(text, lambda w: w)


def test_values_are_expanded_and_deferred_without_an_expander():
    env = {"CACHE": "/var/cache/apt", "MODE": "0700"}
    spec = m.parse_mount("type=cache,target=${CACHE},mode=$MODE", lambda w: w.replace("${CACHE}", env["CACHE"])
                         .replace("$MODE", env["MODE"]))
    assert (spec.target, spec.mode) == ("/var/cache/apt", 0o700)
    # planning has no values yet: the variable field is left for the solver, the rest is checked
    assert m.parse_mount("type=cache,target=$CACHE").target is None
    with pytest.raises(m.MountSpecError, match="unexpected key 'trget'"):
        m.parse_mount("type=cache,trget=$CACHE")


def test_defaults_as_buildkit():
    r = lambda text, wd="/", n=0: m.resolve(m.parse_mount(text), wd, n)
    bind = r("target=src", "/app")
    assert (bind.type, bind.target, bind.source, bind.readonly) == ("bind", "/app/src", "/", True)
    assert r("type=bind,target=/x,rw").readonly is False
    cache = r("type=cache,target=/root/.cache")
    assert (cache.id, cache.sharing, cache.mode, cache.uid, cache.gid, cache.readonly) == \
        ("/root/.cache", "shared", 0o755, 0, 0, False)
    tmpfs = r("type=tmpfs,target=/t")
    assert (tmpfs.readonly, tmpfs.size) == (False, None)
    secret = r("type=secret,id=npmrc")
    assert (secret.id, secret.target, secret.mode, secret.uid, secret.gid, secret.required) == \
        ("npmrc", "/run/secrets/npmrc", 0o400, 0, 0, False)
    assert r("type=secret,target=/root/.npmrc").id == ".npmrc"  # id = basename of the target
    env_only = r("type=secret,id=tok,env=TOKEN")
    assert (env_only.target, env_only.env) == (None, "TOKEN")  # env alone: no file
    assert r("type=secret,id=tok,env=TOKEN,target=/t").target == "/t"
    ssh0, ssh1 = r("type=ssh"), r("type=ssh,id=gh", n=1)
    assert (ssh0.id, ssh0.target, ssh0.mode) == ("default", "/run/buildkit/ssh_agent.0", 0o600)
    assert (ssh1.id, ssh1.target) == ("gh", "/run/buildkit/ssh_agent.1")
    for text in ("type=cache", "type=bind", "type=tmpfs,size=1m"):
        with pytest.raises(m.MountSpecError, match="needs a target"):
            r(text)
    with pytest.raises(m.MountSpecError, match="one of id, source or target is required"):
        r("type=secret")
    with pytest.raises(m.MountSpecError, match="root directory"):
        r("type=bind,target=/")


def test_key_definition_has_the_spec_and_no_contents():
    spec = m.resolve(m.parse_mount("type=secret,id=tok,env=T"), "/")
    assert spec.key_definition() == {"type": "secret", "id": "tok", "env": "T", "readonly": True,
                                     "required": False, "mode": 0o400, "uid": 0, "gid": 0}
    a = m.resolve(m.parse_mount("type=cache,target=/c"), "/").key_definition()
    b = m.resolve(m.parse_mount("type=cache,target=/c,sharing=locked"), "/").key_definition()
    assert a != b


def test_sizes_as_docker_units():
    assert [m.parse_size(s) for s in ("1024", "1k", "64m", "64MiB", "1.5g", "2 GB")] == \
        [1024, 1024, 64 << 20, 64 << 20, 3 << 29, 2 << 30]
    with pytest.raises(m.MountSpecError):
        m.parse_size("lots")


def test_secret_flag_forms():
    env = {"GH_TOKEN": "x"}
    assert m.parse_secret_flag("id=a,src=/f", env) == m.SecretSource("a", file="/f")
    assert m.parse_secret_flag("id=a,source=/f", env) == m.SecretSource("a", file="/f")
    assert m.parse_secret_flag("id=a,env=GH_TOKEN", env) == m.SecretSource("a", env="GH_TOKEN")
    assert m.parse_secret_flag("type=env,id=a,src=GH_TOKEN", env) == m.SecretSource("a", env="GH_TOKEN")
    assert m.parse_secret_flag("type=file,id=a,src=/f", env) == m.SecretSource("a", file="/f")
    assert m.parse_secret_flag("id=GH_TOKEN", env) == m.SecretSource("GH_TOKEN", env="GH_TOKEN")
    assert m.parse_secret_flag("id=notes.txt", env) == m.SecretSource("notes.txt", file="notes.txt")
    for bad, message in (("id=a,type=vault", "unsupported secret type"), ("src=", "needs an id"),
                         ("id=a,oops=1", "unexpected key 'oops'"), ("id=a,src=/f,env=B", "not both")):
        with pytest.raises(m.MountSpecError, match=message):
            m.parse_secret_flag(bad, env)


def test_ssh_flag_forms():
    assert m.parse_ssh_flag("default", {"SSH_AUTH_SOCK": "/s"}) == ("default", ("/s",))
    assert m.parse_ssh_flag("gh=/k1,/k2", {}) == ("gh", ("/k1", "/k2"))
    with pytest.raises(m.MountSpecError, match="SSH_AUTH_SOCK is not set"):
        m.parse_ssh_flag("default", {})


def test_secret_repr_never_shows_the_bytes():
    s = m.Secret(b"hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in repr({"id": s})
    assert s.value == b"hunter2"


def test_error_column_points_at_the_mount_value():
    from pybuild.grammar import parse

    # on a continuation line (the instruction's text has its lines joined: this was 4:32)
    df = parse("FROM x\n\nARG A\nRUN --network=none \\\n    --mount=type=cache,tgt=/x true\n", "df")
    assert m.mount_location(df.stages[0].instructions[1], "type=cache,tgt=/x") == "df:5:13"
    df = parse("FROM x\n  RUN --mount=a --mount=b true\n", "Dockerfile")
    run = df.stages[0].instructions[0]
    assert m.mount_location(run, "a") == "Dockerfile:2:15"
    assert m.mount_location(run, "b") == "Dockerfile:2:25"


# -- cache mount store: locking and instances (host side, no sandbox) -----------------------------


def _cache_spec(text: str) -> m.MountSpec:
    return m.resolve(m.parse_mount(text), "/")


def test_cache_sharing_modes(tmp_path):
    cache = m.CacheMounts(tmp_path)
    held = contextlib.ExitStack()
    try:
        shared1 = cache.acquire(_cache_spec("type=cache,target=/c,id=x"), None, held)
        shared2 = cache.acquire(_cache_spec("type=cache,target=/c,id=x"), None, held)
        assert shared1 == shared2                      # shared: one directory for everyone
        private = cache.acquire(_cache_spec("type=cache,target=/c,id=x,sharing=private"), None, held)
        assert private != shared1 and private.parent == shared1.parent  # in use -> a new instance
        lock_file = shared1.parent / "0.lock"
    finally:
        held.close()
    locked_stack = contextlib.ExitStack()
    try:
        locked = cache.acquire(_cache_spec("type=cache,target=/c,id=x,sharing=locked"), None, locked_stack)
        assert locked == shared1
        fd = os.open(lock_file, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # locked holds it exclusively for the step
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        # a private user now gets another instance; the idle one (1) is reused, not a third
        private_stack = contextlib.ExitStack()
        assert cache.acquire(_cache_spec("type=cache,target=/c,id=x,sharing=private"), None, private_stack) == private
        private_stack.close()
    finally:
        locked_stack.close()
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by close()
    finally:
        os.close(fd)
    meta = json.loads((shared1.parent / "meta.json").read_text())
    assert meta["id"] == "x" and meta["created"] and meta["last_used"]


def test_new_cache_dir_gets_mode_owner_and_seed(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("seed\n")
    stack = contextlib.ExitStack()
    try:
        d = m.CacheMounts(tmp_path / "root").acquire(
            _cache_spec("type=cache,target=/c,mode=0710,uid=123,gid=456,from=x,source=/sub"),
            lambda dest: m._seed(m.BindSource(LayeredView([src]), "/sub"), dest), stack)
    finally:
        stack.close()
    st = d.stat()
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o710", 123, 456)
    assert (d / "f").read_text() == "seed\n"


def test_cache_mount_usage_and_removal(tmp_path):
    stack = contextlib.ExitStack()
    d = m.CacheMounts(tmp_path).acquire(_cache_spec("type=cache,target=/c,id=big"), None, stack)
    (d / "blob").write_bytes(os.urandom(64 << 10))
    usage = m.cache_mount_usage(tmp_path)
    assert [(u.id, u.instances) for u in usage] == [("big", 1)] and usage[0].size >= 64 << 10
    assert m.remove_cache_mounts(tmp_path) == []  # in use: kept
    stack.close()
    assert [u.id for u in m.remove_cache_mounts(tmp_path)] == ["big"]
    assert m.cache_mount_usage(tmp_path) == []


# -- builds ------------------------------------------------------------------------------------------


def _ctx(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def _steps(output: str) -> dict[str, str]:
    """Step label -> CACHED or DONE, from plain progress."""
    labels: dict[str, str] = {}
    result: dict[str, str] = {}
    for line in output.splitlines():
        hit = re.match(r"#(\d+) \[(?:\S+ )?\d+/\d+\] (.*)$", line)
        if hit:
            labels[hit.group(1)] = hit.group(2)
            continue
        hit = re.match(r"#(\d+) (CACHED|DONE [\d.]+s)$", line)
        if hit and hit.group(1) in labels:
            result[labels[hit.group(1)]] = hit.group(2).split()[0]
    return result


def _build(cli, ctx: Path, *extra: str, check: bool = True, env: dict | None = None) -> Result:
    """`pybuild build --progress plain ... ctx`, with extra environment variables for the CLI."""
    proc = subprocess.run([sys.executable, "-m", "pybuild", "build", "--progress", "plain", *extra, str(ctx)],
                          capture_output=True, text=True, timeout=300, env={**cli.env(), **(env or {})}, check=False)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    if check:
        assert res.code == 0, res.output
    return res


def _blobs(archive: Path) -> list[bytes]:
    """Every blob of an OCI archive, gzip layers decompressed."""
    out = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and "/blobs/" in "/" + member.name:
                data = tar.extractfile(member).read()
                out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return out


def _layer_names(cli, ref: str, tmp_path: Path) -> set[str]:
    out = tmp_path / f"export-{ref.replace(':', '-')}.tar"
    cli("export", "-o", str(out), ref, check=True)
    with tarfile.open(out) as tar:
        return {n.lstrip("./") for n in tar.getnames()}


def test_cache_mount_persists_across_builds_and_never_enters_a_layer(cli, tmp_path):
    dockerfile = ("FROM busybox:latest\n"
                  "RUN echo {n} > /step\n"
                  "RUN --mount=type=cache,target=/var/cache/app,id=app-cache \\\n"
                  "    cat /step >> /var/cache/app/runs && cp /var/cache/app/runs /seen\n")
    ctx = _ctx(tmp_path, dockerfile.format(n=1))
    _build(cli, ctx, "-t", "c:1")
    ctx = _ctx(tmp_path, dockerfile.format(n=2))  # an earlier step changes: the RUN reruns
    second = _build(cli, ctx, "-t", "c:2")
    assert _steps(second.stderr)["RUN echo 2 > /step"] == "DONE"
    assert cli("run", "c:2", "cat", "/seen", check=True).stdout == "1\n2\n"  # it saw the first build's line
    names = _layer_names(cli, "c:2", tmp_path)
    assert "seen" in names and not any(n.startswith("var/cache/app") for n in names)
    usage = m.cache_mount_usage(cli.root)
    assert [u.id for u in usage] == ["app-cache"]
    assert (usage[0].path / "0" / "runs").read_text() == "1\n2\n"
    # the content is not part of the key: same definition, different cache content -> CACHED
    third = _build(cli, ctx, "-t", "c:3")
    assert all(state == "CACHED" for label, state in _steps(third.stderr).items() if label.startswith("RUN"))
    # prune -a removes cache mounts (as docker builder prune -a); plain prune keeps them
    cli("prune", "-f", check=True)
    assert m.cache_mount_usage(cli.root)
    res = cli("prune", "-a", "-f", "-v", check=True)  # -v lists what went
    assert "cache mount app-cache" in res.stdout
    assert re.search(r"^Cache mounts +1 +[1-9]", res.stdout, re.M)  # the report counts it
    assert m.cache_mount_usage(cli.root) == []


def test_cache_mount_options_and_stage_seed(cli, tmp_path):
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest AS seed\n"
        "RUN mkdir -p /opt/seed && echo seeded > /opt/seed/file\n"
        "FROM busybox:latest\n"
        "RUN --mount=type=cache,target=/c,from=seed,source=/opt/seed,mode=0700,uid=7,gid=8 \\\n"
        "    stat -c '%a %u %g' /c > /mode && cat /c/file > /got\n"
        "RUN --mount=type=cache,target=/ro,ro touch /ro/x 2> /err || echo refused > /ro-result\n"))
    _build(cli, ctx, "-t", "seeded:1")
    assert cli("run", "seeded:1", "cat", "/mode", "/got", "/ro-result", check=True).stdout == \
        "700 7 8\nseeded\nrefused\n"


def test_bind_context_hides_dockerignored_files_and_keys_on_content(cli, tmp_path):
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest\n"
        "WORKDIR /work\n"
        "RUN --mount=target=src,source=app \\\n"
        "    ls -A src > /listing && cat src/main.txt > /main && ! touch src/new 2>/dev/null\n"),
        {"app/main.txt": "v1\n", "app/.env": "ignored\n", "app/notes.log": "unrelated\n",
         ".dockerignore": "app/.env\napp/*.log\n"})
    first = _build(cli, ctx, "-t", "b:1")
    assert cli("run", "b:1", "cat", "/listing", "/main", check=True).stdout == "main.txt\nv1\n"
    (ctx / "app" / "notes.log").write_text("changed, but ignored\n")  # not visible, so not in the key
    second = _build(cli, ctx, "-t", "b:2")
    run_label = next(k for k in _steps(first.stderr) if k.startswith("RUN"))
    assert _steps(second.stderr)[run_label] == "CACHED"
    (ctx / "app" / "main.txt").write_text("v2\n")
    third = _build(cli, ctx, "-t", "b:3")
    assert _steps(third.stderr)[run_label] == "DONE"
    assert cli("run", "b:3", "cat", "/main", check=True).stdout == "v2\n"
    names = _layer_names(cli, "b:3", tmp_path)
    assert not any(n.startswith("work/src") for n in names)  # the mount point never enters a layer


def test_bind_rw_writes_are_discarded(cli, tmp_path):
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest\n"
        "RUN --mount=type=bind,target=/ctx,rw echo changed > /ctx/data.txt && cat /ctx/data.txt > /inside\n"
        "RUN --mount=type=bind,target=/ctx cat /ctx/data.txt > /after\n"), {"data.txt": "original\n"})
    _build(cli, ctx, "-t", "rw:1")
    assert (ctx / "data.txt").read_text() == "original\n"
    assert cli("run", "rw:1", "cat", "/inside", "/after", check=True).stdout == "changed\noriginal\n"


def test_bind_from_stage_and_image_and_tmpfs(cli, tmp_path):
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest AS build\n"
        "RUN mkdir /out && echo artefact > /out/a && echo layer2 > /out/b\n"
        "RUN rm /out/b\n"
        "FROM busybox:latest\n"
        "RUN --mount=from=build,source=/out,target=/in ls /in > /from-stage && cat /in/a >> /from-stage\n"
        "RUN --mount=from=busybox:latest,source=/bin/busybox,target=/bb test -x /bb && echo ok > /from-image\n"
        "RUN --mount=type=tmpfs,target=/scratch,size=1m \\\n"
        "    df -k /scratch | awk 'NR==2 {print $2}' > /tmpfs-size && echo x > /scratch/f\n"))
    _build(cli, ctx, "-t", "st:1")
    out = cli("run", "st:1", "cat", "/from-stage", "/from-image", "/tmpfs-size", check=True).stdout
    assert out == "a\nartefact\nok\n1024\n"  # /out/b was deleted in a later layer: not visible
    names = _layer_names(cli, "st:1", tmp_path)
    assert not any(n.startswith(("scratch", "in/", "bb")) for n in names)


def test_mount_errors_name_line_and_column_and_tag_nothing(cli, tmp_path):
    cases = [
        ("RUN --mount=type=cache,target=/c,colour=red true\n", "Dockerfile:2:13", "unexpected key 'colour'"),
        ("RUN --mount=type=cache true\n", "Dockerfile:2:13", "needs a target"),
        ("RUN --mount=type=secret,id=missing,required true\n", "Dockerfile:2:13",
         "secret 'missing' is required but was not given"),
        ("RUN --mount=type=bind,from=nosuchstage,target=/x true\n", "Dockerfile:2:23",
         "from=nosuchstage: no stage or local image of that name"),
        ("RUN --mount=type=bind,source=absent,target=/x true\n", "Dockerfile:2:13", "absent"),
        ("RUN --mount=type=ssh,required true\n", "Dockerfile:2:13", "ssh agent 'default' is required"),
    ]
    for line, where, message in cases:
        ctx = _ctx(tmp_path, "FROM busybox:latest\n" + line)
        res = _build(cli, ctx, "-t", "bad:1", check=False)
        assert res.code == 1, res.output
        assert where in res.stderr and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert "bad:1" not in cli("images", check=True).stdout
    # bad --secret flags are usage errors naming the flag, before anything runs
    ctx = _ctx(tmp_path, "FROM busybox:latest\nRUN --mount=type=secret,id=s true\n")
    for flag, message in ((f"id=s,src={tmp_path}/absent", f"--secret id=s,src={tmp_path}/absent: secret s: cannot read"),
                          ("id=s,env=PYBUILD_TEST_UNSET_VARIABLE", "environment variable PYBUILD_TEST_UNSET_VARIABLE"),
                          ("id=s,kind=file", "unexpected key 'kind'")):
        res = _build(cli, ctx, "-t", "bad:1", "--secret", flag, check=False)
        assert res.code == 2 and message in res.stderr, res.stderr


def test_optional_secret_missing_runs_without_it_and_secret_options(cli, tmp_path):
    secret_file = tmp_path / "s"
    secret_file.write_bytes(b"abc")
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest\n"
        "RUN --mount=type=secret,id=absent (test -e /run/secrets/absent && echo present || echo absent) > /r1\n"
        "RUN --mount=type=secret,id=s,target=/etc/app.key,mode=0440,uid=5,gid=6 \\\n"
        "    stat -c '%a %u %g %s' /etc/app.key > /r2\n"
        "RUN --mount=type=secret,id=s,env=S_ENV --mount=type=secret,id=fromenv,required \\\n"
        "    echo ${#S_ENV} $(cat /run/secrets/fromenv | wc -c) > /r3; ls /run/secrets > /r4\n"))
    _build(cli, ctx, "-t", "sec:1", "--secret", f"id=s,src={secret_file}", "--secret", "id=fromenv,env=FROM_ENV",
           env={"FROM_ENV": "12345"})
    out = cli("run", "sec:1", "cat", "/r1", "/r2", "/r3", "/r4", check=True).stdout
    assert out == "absent\n440 5 6 3\n3 5\nfromenv\n"
    names = _layer_names(cli, "sec:1", tmp_path)
    assert not any(n.startswith(("run/secrets", "etc/app.key")) for n in names)


def test_secret_value_is_not_part_of_the_key(cli, tmp_path):
    ctx = _ctx(tmp_path, "FROM busybox:latest\nRUN --mount=type=secret,id=s wc -c < /run/secrets/s > /n\n")
    secret_file = tmp_path / "s"
    secret_file.write_text("one")
    _build(cli, ctx, "-t", "k:1", "--secret", f"id=s,src={secret_file}")
    secret_file.write_text("a different value")
    res = _build(cli, ctx, "-t", "k:2", "--secret", f"id=s,src={secret_file}")
    assert _steps(res.stderr)["RUN --mount=type=secret,id=s wc -c < /run/secrets/s > /n"] == "CACHED"


def test_secret_and_build_arg_never_leak(cli, tmp_path):
    """The issue's leak test: a build-arg TOKEN and a --secret used by the same RUN."""
    secret_value = "sekrit-" + pysecrets.token_hex(12)
    arg_value = "argtok-" + pysecrets.token_hex(12)
    secret_file = tmp_path / "token"
    secret_file.write_text(secret_value)
    dockerfile = ("FROM busybox:latest\n"
                  "ARG TOKEN\n"
                  "RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOKEN_FROM_SECRET \\\n"
                  "    test \"$(cat /run/secrets/tok)\" = \"$TOKEN_FROM_SECRET\" && test -n \"$TOKEN\" && \\\n"
                  "    wc -c < /run/secrets/tok > /secret-size && echo ${#TOKEN} > /arg-size\n"
                  "RUN --mount=type=secret,id=tok test -s /run/secrets/tok && exit 3\n")
    ctx = _ctx(tmp_path, dockerfile)
    flags = ("--build-arg", f"TOKEN={arg_value}", "--secret", f"id=tok,src={secret_file}")
    outputs: list[str] = []
    failed = _build(cli, ctx, "-t", "leak:1", *flags, "--cache-report", "json", check=False)
    assert failed.code == 1 and "exited 3" in failed.stderr  # an error message with the secret in scope
    outputs.append(failed.output)
    (ctx / "Dockerfile").write_text(dockerfile.rsplit("RUN --mount=type=secret,id=tok test", 1)[0])
    for progress in ("plain", "rawjson"):
        res = cli("build", "--progress", progress, "--cache-report", "json", "--no-cache", "-t", "leak:1", *flags,
                  str(ctx), check=True)
        outputs.append(res.output)
    # the RUN really had both
    assert cli("run", "leak:1", "cat", "/secret-size", "/arg-size", check=True).stdout == \
        f"{len(secret_value)}\n{len(arg_value)}\n"
    history = cli("history", "--no-trunc", "leak:1", check=True).output
    inspect = cli("inspect", "leak:1", check=True).output
    outputs += [history, inspect]
    archive = tmp_path / "leak.tar"
    cli("save", "-o", str(archive), "leak:1", check=True)
    for text in outputs:
        assert secret_value not in text and arg_value not in text
    for blob in _blobs(archive):
        assert secret_value.encode() not in blob and arg_value.encode() not in blob
    # build-arg values stay out of history created_by (BuildKit writes `RUN |1 TOKEN=...`)
    config = json.loads(inspect)
    config = config[0] if isinstance(config, list) else config
    assert "|1" not in json.dumps(config)
    # the store: cache index and records, step logs, everything on disk (layers decompressed)
    for path in cli.root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            assert secret_value.encode() not in data, path
    assert any((cli.root / "logs").iterdir())


def _ssh_add_tree(ctx: Path) -> None:
    """ssh-add and the libraries it links, under ctx/fs/, so a busybox image can run it: the probe
    asks the agent behind the forwarded socket for its keys, the real protocol, not a file test."""
    binary = shutil.which("ssh-add")
    libs = re.findall(r"(/\S+)", subprocess.run(["ldd", binary], capture_output=True, text=True,
                                                check=True).stdout)
    for path in [binary, *libs]:
        dest = ctx / "fs" / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), dest)


def _agent_processes(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ssh-agent" in cmd and marker.encode() in cmd:
            pids.append(int(pid))
    return pids


@pytest.mark.skipif(not shutil.which("ssh-agent") or not shutil.which("ssh-keygen"),
                    reason="needs openssh-client (.ci/run installs it)")
def test_ssh_mount_forwards_an_agent(cli, tmp_path):
    key = tmp_path / "id_test"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pybuild-probe-key", "-f", str(key)],
                   check=True)
    ctx = _ctx(tmp_path, (
        "FROM busybox:latest\n"
        "COPY fs/ /\n"
        "RUN --mount=type=ssh,required stat -c '%a %F' $SSH_AUTH_SOCK > /sock && ssh-add -l > /keys\n"
        "RUN --mount=type=ssh,id=other,target=/agent.sock,mode=0666 echo $SSH_AUTH_SOCK > /env && "
        "stat -c '%a' /agent.sock > /mode\n"))
    _ssh_add_tree(ctx)
    # 1. a key file: pybuild starts a private agent for the build and stops it afterwards
    _build(cli, ctx, "-t", "ssh:1", "--ssh", f"default={key}", "--ssh", f"other={key}")
    out = cli("run", "ssh:1", "cat", "/sock", "/keys", "/env", "/mode", check=True).stdout
    assert out.startswith("600 socket\n") and "pybuild-probe-key (ED25519)" in out
    assert out.endswith("/agent.sock\n666\n")
    assert _agent_processes("pybuild-ssh-") == []
    assert not any(n.startswith(("run/buildkit", "agent.sock")) for n in _layer_names(cli, "ssh:1", tmp_path))
    # 2. `--ssh default` forwards the caller's own agent ($SSH_AUTH_SOCK), unchanged by the build
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(500):
            if sock.exists():
                break
            time.sleep(0.01)
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)}, check=True)
        mode_before = sock.stat().st_mode
        _build(cli, ctx, "-t", "ssh:2", "--no-cache", "--ssh", "default", "--ssh", f"other={sock}",
               env={"SSH_AUTH_SOCK": str(sock)})
        assert "pybuild-probe-key (ED25519)" in cli("run", "ssh:2", "cat", "/keys", check=True).stdout
        assert sock.stat().st_mode == mode_before and agent.poll() is None
    finally:
        agent.kill()
        agent.wait()
    res = _build(cli, ctx, "--ssh", "default", check=False, env={"SSH_AUTH_SOCK": ""})
    assert res.code == 2 and "SSH_AUTH_SOCK is not set" in res.stderr
