#!/usr/bin/env python3
"""Parse speed and start-up, run by hand (not part of the tests).

Usage: python bench/bench_parse.py [N]     (N = runs per measurement, median reported; default 21)

1. Generates a 500-line multi-stage Dockerfile (every instruction kind, continuations, flags,
   quoted ENV/LABEL values, ${VAR} references, a heredoc).
2. In the same process and interleaved, times
     pybuild (fast):   pybuild.grammar.parse(text) + expand_word() of every word BuildKit expands
                       (FROM, ARG/ENV/LABEL values, COPY/ADD sources/dest and flags, WORKDIR, USER,
                        EXPOSE, VOLUME, STOPSIGNAL), with ARG/ENV scoping applied
     pybuild (lark):   the same with parse(text, engine="lark"), the grammar-only path (the
                       "before" figure: every instruction head and JSON array through lark)
     dockerfile-parse: DockerfileParser(fileobj=...).structure   (parse only, it has no expansion
                       of its own at that level)
   and prints the medians and the ratios to dockerfile-parse (issue 3 wants <= 1.0).
3. Process start-up, median of N: `python3 -c pass`, `python3 -c "import pybuild.grammar"`,
   `python3 -c "...parse('FROM a')"` (and with engine="lark", which loads lark's cached grammar),
   `pybuild --version`, and `pybuild parse` / `pybuild check`
   of a small Dockerfile (against an empty, not created, state directory).
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def make_dockerfile(lines: int = 500) -> str:
    out = ["# syntax=docker/dockerfile:1", "ARG BASE=alpine", 'ARG TAG="3.19"', "ARG PORT=8000"]
    stage = 0
    block = [
        "FROM ${{BASE}}:${{TAG}} AS stage{s}",
        "ARG VERSION=1.{s}",
        'ENV APP_HOME=/opt/app{s} PATH="/opt/app{s}/bin:$PATH" MODE=${{MODE:-prod}}',
        'LABEL org.opencontainers.image.version="${{VERSION}}" maintainer="team {s}"',
        "WORKDIR ${{APP_HOME}}",
        "RUN --mount=type=cache,target=/root/.cache apk add --no-cache curl \\",
        "    && echo building {s} \\",
        "    && rm -rf /tmp/*",
        "COPY --chown=1000:1000 --chmod=755 src/${{VERSION}}/ ${{APP_HOME}}/src/",
        'COPY ["requirements.txt", "setup.cfg", "${{APP_HOME}}/"]',
        "ADD --checksum=sha256:0123abcd https://example.com/pkg-${{VERSION}}.tgz /tmp/",
        "EXPOSE ${{PORT}} 9000/udp",
        "VOLUME ${{APP_HOME}}/data /var/log",
        "USER app:app",
        "ENV GREETING hello world {s}",
        'HEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost:${{PORT}}/ || exit 1',
        "STOPSIGNAL SIGTERM",
        "RUN <<EOF",
        "echo heredoc {s}",
        "EOF",
        'CMD ["python", "-m", "app", "--port", "8000"]',
        'ENTRYPOINT ["/sbin/tini", "--"]',
        "ONBUILD COPY . ${{APP_HOME}}",
        "",
    ]
    while len(out) < lines:
        out += [ln.format(s=stage) for ln in block]
        stage += 1
    out = out[:lines]
    # don't end inside a heredoc or a continuation
    while out[-1].endswith("\\") or out[-1].startswith(("RUN <<", "echo heredoc")):
        out.pop()
    return "\n".join(out) + "\n"


def pybuild_parse_expand(text: str, engine: str = "fast") -> int:
    from pybuild.grammar import ast as A
    from pybuild.grammar import expand_word, parse

    df = parse(text, engine=engine)
    esc = df.escape
    n = 0
    global_env: dict[str, str] = {}
    for arg in df.global_args:
        for k, v in arg.pairs:
            global_env[k] = expand_word(v, global_env, escape=esc) if v is not None else ""
            n += 1
    for stage in df.stages:
        expand_word(stage.base.image, global_env, escape=esc)
        n += 1
        env: dict[str, str] = {}
        for ins in stage.instructions:
            words: list[str] = [v for _, v in ins.flags if v is not None]
            if isinstance(ins, (A.Env, A.Arg)):
                for k, v in ins.pairs:
                    env[k] = expand_word(v, env, escape=esc) if v is not None else global_env.get(k, "")
                    n += 1
            elif isinstance(ins, A.Label):
                words += [w for pair in ins.pairs for w in pair]
            elif isinstance(ins, (A.Copy, A.Add)):
                words += [*ins.sources, ins.dest]
            elif isinstance(ins, A.Workdir):
                words.append(ins.path)
            elif isinstance(ins, A.User):
                words.append(ins.user)
            elif isinstance(ins, A.Expose):
                words += ins.ports
            elif isinstance(ins, A.Volume):
                words += ins.paths
            elif isinstance(ins, A.StopSignal):
                words.append(ins.signal)
            for w in words:
                expand_word(w, env, escape=esc)
                n += 1
    return n


def dockerfile_parse(text: str) -> int:
    from dockerfile_parse import DockerfileParser

    return len(DockerfileParser(fileobj=io.BytesIO(text.encode("utf-8"))).structure)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def startup(cmd: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 21
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # users get byte-code caching
    text = make_dockerfile(500)
    assert text.count("\n") >= 490
    words = pybuild_parse_expand(text)  # warm up: compiles the regexes once
    pybuild_parse_expand(text, "lark")  # builds/loads the lark grammar once
    dockerfile_parse(text)
    fast, lark, theirs = [], [], []
    for _ in range(n):  # interleaved so all three see the same machine state
        fast.append(timed(pybuild_parse_expand, text))
        lark.append(timed(pybuild_parse_expand, text, "lark"))
        theirs.append(timed(dockerfile_parse, text))
    mf, ml, mt = statistics.median(fast), statistics.median(lark), statistics.median(theirs)
    print(f"dockerfile: {text.count(chr(10))} lines, {words} words expanded by pybuild; median of {n} runs")
    print(f"pybuild parse+expand (fast path)   {mf * 1000:8.2f} ms")
    print(f"pybuild parse+expand (lark path)   {ml * 1000:8.2f} ms")
    print(f"dockerfile-parse parse             {mt * 1000:8.2f} ms")
    print(f"ratio fast/dockerfile-parse = {mf / mt:.2f}  (target <= 1.0)")
    print(f"ratio lark/dockerfile-parse = {ml / mt:.2f}  (before the fast path)")

    py = sys.executable
    pybuild = shutil.which("pybuild") or ""
    rows = [
        ("python3 -c pass", [py, "-c", "pass"]),
        ("python3 -c 'import pybuild.grammar'", [py, "-c", "import pybuild.grammar"]),
        ("python3 -c 'parse(\"FROM a\")'",
         [py, "-c", "import pybuild.grammar as g; g.parse('FROM a')"]),
        ("python3 -c 'parse(\"FROM a\", engine=\"lark\")' (cached grammar)",
         [py, "-c", "import pybuild.grammar as g; g.parse('FROM a', engine='lark')"]),
        ("pybuild --version", [pybuild, "--version"] if pybuild else [py, "-m", "pybuild", "--version"]),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        small = os.path.join(tmp, "Dockerfile")
        with open(small, "w", encoding="utf-8") as fh:
            fh.write('FROM busybox\nARG V=1\nENV APP=/app\nWORKDIR $APP\nCOPY . .\nRUN echo $V\nCMD ["sh"]\n')
        os.environ["PYBUILD_ROOT"] = os.path.join(tmp, "no-store")  # check must not find (or make) one
        cli = [pybuild] if pybuild else [py, "-m", "pybuild"]
        rows += [
            ("pybuild parse --json <7-line file>", [*cli, "parse", "--json", small]),
            ("pybuild check -f <7-line file>", [*cli, "check", "-f", small, tmp]),
        ]
        for label, cmd in rows:
            startup(cmd, 2)  # warm the byte-code and lark caches
            print(f"{label:58s} {startup(cmd, n) * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
