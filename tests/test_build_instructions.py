"""How each instruction lands in the image config and the steps, checked on real builds."""

from __future__ import annotations

import json
import re

from test_build_e2e import _manifest


def _build(cli, tmp_path, dockerfile: str, tag: str = "t:1", *extra: str, files: dict | None = None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).write_text(text)
    return cli(*extra, "-t", tag, str(ctx))


def _config(cli, tag: str = "t:1") -> dict:
    digest = _manifest(cli, tag)["config"]["digest"]
    return json.loads((cli.root / "blobs" / "sha256" / digest.split(":")[1]).read_text())


def test_env_values_see_the_environment_from_before_the_instruction(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nENV A=1 B=x$A\nENV C=$A\n")
    assert res.code == 0, res.stderr
    env = _config(cli)["config"]["Env"]
    assert "A=1" in env and "B=x" in env and "C=1" in env


def test_healthcheck_onbuild_shell_stopsignal_expose_in_config(cli, tmp_path):
    res = _build(cli, tmp_path,
                 "FROM busybox:latest\n"
                 "HEALTHCHECK --interval=1m30s --timeout=5s --retries=3 CMD wget -q -O- localhost || exit 1\n"
                 "ONBUILD RUN echo triggered > /onbuild.txt\n"
                 "SHELL [\"/bin/sh\", \"-ec\"]\n"
                 "STOPSIGNAL SIGQUIT\n"
                 "EXPOSE 80 53/udp 8000-8001/tcp\n")
    assert res.code == 0, res.stderr
    c = _config(cli)["config"]
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
                                "Interval": 90_000_000_000, "Timeout": 5_000_000_000, "Retries": 3}
    assert c["OnBuild"] == ["RUN echo triggered > /onbuild.txt"]
    assert c["Shell"] == ["/bin/sh", "-ec"]
    assert c["StopSignal"] == "SIGQUIT"
    assert set(c["ExposedPorts"]) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}  # ranges expand, as BuildKit


def test_onbuild_triggers_run_in_the_child_and_are_not_inherited(cli, tmp_path):
    _build(cli, tmp_path, "FROM busybox:latest\nONBUILD RUN echo triggered > /onbuild.txt\n", "parent:1")
    res = _build(cli, tmp_path, "FROM parent:1\nRUN cat /onbuild.txt\n", "child:1")
    assert res.code == 0, res.stderr
    assert "triggered" in res.stderr
    assert "OnBuild" not in _config(cli, "child:1")["config"]


def test_copy_from_own_stage_number_is_an_error_not_a_hang(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nCOPY --from=0 /etc/passwd /p\n")
    assert res.code == 1
    assert "Dockerfile:2:13: COPY --from=0 names this stage or a later one" in res.stderr


def test_unsupported_flags_fail_before_any_step_runs(cli, tmp_path):
    # the step's output ("first-step-2") differs from its text, which the failure excerpt shows
    res = _build(cli, tmp_path, "FROM busybox:latest\nRUN echo first-step-$((1+1))\n"
                                "RUN --mount=type=cache,target=/c,bogus=1 true\n")
    assert res.code == 1
    assert "Dockerfile:3:13: RUN --mount=type=cache,target=/c,bogus=1: unexpected key 'bogus'" in res.stderr
    assert "first-step-2" not in res.stderr


def test_bad_expose_and_healthcheck_values_name_the_line(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nEXPOSE abc\n")
    assert res.code == 1 and "Dockerfile:2:8: EXPOSE abc" in res.stderr
    res = _build(cli, tmp_path, "FROM busybox:latest\nEXPOSE 80 99999\n")
    assert res.code == 1 and "Dockerfile:2:11: EXPOSE 99999: a port is a number from 0 to 65535" in res.stderr
    res = _build(cli, tmp_path, "FROM busybox:latest\nEXPOSE 80-70/udp\n")
    assert res.code == 1 and "Dockerfile:2:8: EXPOSE 80-70/udp: the range ends before it starts" in res.stderr
    res = _build(cli, tmp_path, "FROM busybox:latest\nHEALTHCHECK --interval=soon CMD true\n")
    assert res.code == 1 and "Dockerfile:2:24: HEALTHCHECK --interval=soon" in res.stderr


def test_run_network_flag_per_step(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nRUN --network=host cat /proc/net/dev\nRUN cat /proc/net/dev\n")
    assert res.code == 0, res.stderr
    blocks = re.split(r"#\d+ \[\d/3\] RUN", res.stderr)
    host_ifaces = {line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]}
    assert all(iface in blocks[1] for iface in host_ifaces)
    assert re.findall(r"^#\d+ [\d.]+ +(\w+):", blocks[2], re.M) == ["lo"]


def test_proxy_build_args_reach_run_without_arg_and_do_not_change_the_key(cli, tmp_path):
    df = "FROM busybox:latest\nRUN echo \"proxy=[$http_proxy]\"\n"
    res = _build(cli, tmp_path, df, "t:1", "--build-arg", "http_proxy=http://127.0.0.1:3128")
    assert "proxy=[http://127.0.0.1:3128]" in res.stderr
    res = _build(cli, tmp_path, df, "t:1", "--build-arg", "http_proxy=http://127.0.0.1:9999")
    assert "#2 CACHED" in res.stderr


def test_unknown_user_names_the_run_line(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nUSER ghost\nRUN true\n")
    assert res.code == 1
    assert re.search(r"Dockerfile:3:1: .*ghost", res.stderr), res.stderr


def test_copy_heredocs_become_files(cli, tmp_path):
    res = _build(cli, tmp_path,
                 "FROM busybox:latest\n"
                 "ARG WHO=world\n"
                 "COPY <<EOF /greeting.txt\n"
                 "hello \"$WHO\"\n"
                 "EOF\n"
                 "COPY --chmod=0755 <<'RAW' <<EOF2 /opt/\n"
                 "#!/bin/sh\n"
                 "echo $WHO\n"
                 "RAW\n"
                 "two\n"
                 "EOF2\n")
    assert res.code == 0, res.stderr
    out = cli("run", "t:1", "sh", "-c", "cat /greeting.txt /opt/RAW /opt/EOF2; stat -c %a /opt/RAW", check=True)
    assert out.stdout.splitlines() == ['hello "world"', "#!/bin/sh", "echo $WHO", "two", "755"]


def test_miss_reason_names_the_changed_build_arg(cli, tmp_path):
    df = "FROM busybox:latest\nARG VERSION=1\nRUN echo v$VERSION\n"
    _build(cli, tmp_path, df, "t:1")
    res = _build(cli, tmp_path, df, "t:1", "--build-arg", "VERSION=2")
    assert "cache miss: environment changed (build args or ENV): VERSION" in res.stderr
    assert "v2" in res.stderr


def test_out_of_memory_run_is_reported_as_such(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nRUN x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}\n",
                 "t:1", "--memory", "64m")
    assert res.code == 1
    assert re.search(r"Dockerfile:2:1: RUN .* killed: out of memory, limit 64 MiB", res.stderr), res.stderr
    assert not any(line.startswith("t ") for line in cli("images").stdout.splitlines())


def test_pids_limit_stops_a_fork_bomb_and_the_build_fails_cleanly(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nRUN for i in $(seq 100); do sleep 30 & done; wait\n",
                 "t:1", "--pids-limit", "20")
    assert res.code == 1
    assert "can't fork" in res.stderr or "Resource temporarily unavailable" in res.stderr, res.stderr


def test_security_insecure_needs_the_entitlement(cli, tmp_path):
    df = "FROM busybox:latest\nRUN --security=insecure grep CapEff /proc/self/status\n"
    res = _build(cli, tmp_path, df)
    assert res.code == 1 and "allow it with --allow security.insecure" in res.stderr
    res = _build(cli, tmp_path, df, "t:1", "--allow", "security.insecure")
    assert res.code == 0, res.stderr
    host_caps = next(line for line in open("/proc/self/status") if line.startswith("CapEff:"))
    assert host_caps.strip() in res.stderr  # all of the (root) caller's capabilities, not Docker's 14


def test_run_reports_oom_and_exits_137(cli, tmp_path):
    res = cli("run", "--memory", "64m", "busybox:latest", "sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a)")
    assert res.code == 137
    assert "container killed: out of memory, limit 64 MiB" in res.stderr


def test_shell_of_the_base_image_applies_to_run_and_cmd(cli, tmp_path):
    _build(cli, tmp_path, 'FROM busybox:latest\nSHELL ["/bin/sh", "-ec"]\n', "shellbase:1")
    res = _build(cli, tmp_path, "FROM shellbase:1\nRUN false; echo got-here\n", "child:1")
    assert res.code == 1 and not re.search(r"^#\d+ [\d.]+ got-here$", res.stderr, re.M)
    res = _build(cli, tmp_path, "FROM shellbase:1\nCMD echo child\n", "child:2")
    assert res.code == 0, res.stderr
    assert _config(cli, "child:2")["config"]["Cmd"] == ["/bin/sh", "-ec", "echo child"]


def test_onbuild_arg_consumes_its_build_arg_without_a_warning(cli, tmp_path):
    _build(cli, tmp_path, "FROM busybox:latest\nONBUILD ARG OBARG=dflt\nONBUILD RUN echo trigger $OBARG\n", "obp:1")
    res = _build(cli, tmp_path, "FROM obp:1\n", "obc:1", "--build-arg", "OBARG=given")
    assert res.code == 0, res.stderr
    assert "trigger given" in res.stderr
    assert "WARNING" not in res.stderr
    res = _build(cli, tmp_path, "FROM busybox:latest\n", "plain:1", "--build-arg", "NOBODY=1")
    assert "WARNING: build argument 'NOBODY' was given but no ARG in the built stages uses it" in res.stderr


def test_stopsignal_must_be_a_signal(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nSTOPSIGNAL SIGBOGUS\n")
    assert res.code == 1 and "Dockerfile:2:12: STOPSIGNAL SIGBOGUS: not a signal name or number" in res.stderr
    for ok in ("SIGQUIT", "TERM", "9", "SIGRTMIN+3"):
        assert _build(cli, tmp_path, f"FROM busybox:latest\nSTOPSIGNAL {ok}\n").code == 0


def test_pruned_step_says_its_result_is_gone(cli, tmp_path):
    df = "FROM busybox:latest\nRUN echo hi\n"
    _build(cli, tmp_path, df, "pr:1")
    cli("prune", "-a", "-f", check=True)
    res = _build(cli, tmp_path, df, "pr:1")
    assert "cache miss: same inputs as its last build, but that result is no longer cached" in res.stderr


def test_retried_failed_step_says_its_last_attempt_failed(cli, tmp_path):
    # not "no longer cached (pruned or removed)": nothing was pruned, the step never succeeded
    df = "FROM busybox:latest\nRUN exit 3\n"
    assert _build(cli, tmp_path, df, "bad:1").code != 0
    res = _build(cli, tmp_path, df, "bad:1")
    assert "#2 cache miss: same inputs as its last attempt, which failed or was stopped" in res.stderr, res.stderr


def test_run_sees_its_own_hostname_and_cgroup_root(cli, tmp_path):
    res = _build(cli, tmp_path, "FROM busybox:latest\nRUN hostname; cat /proc/self/cgroup | cut -d: -f3 | sort -u\n")
    assert res.code == 0, res.stderr
    lines = re.findall(r"^#\d+ [\d.]+ (.*)$", res.stderr, re.M)
    assert re.fullmatch(r"[0-9a-f]{12}", lines[0])
    assert set(lines[1:]) == {"/"}


def test_prune_all_drops_step_logs(cli, tmp_path):
    _build(cli, tmp_path, "FROM busybox:latest\nRUN echo logged\n")
    logs = cli.root / "logs"
    assert any(p.read_text() == "logged\n" for p in logs.iterdir())
    cli("prune", "-a", "-f", check=True)
    assert not logs.exists()


def test_workdir_made_after_user_is_owned_by_that_user(cli, tmp_path):
    # BuildKit: llb.Mkdir(wd, 0755, WithParents, WithUser(USER)); every dir it makes belongs to
    # the user (a bare uid gets gid = uid; an unknown name falls back to 0:0); existing dirs stay
    res = _build(cli, tmp_path,
                 "FROM busybox:latest\n"
                 "USER 4321\n"
                 "WORKDIR /num/sub\n"
                 "RUN touch mine\n"
                 "USER nobody\n"
                 "WORKDIR /named\n"
                 "USER 4321:daemon\n"
                 "WORKDIR /grp\n"
                 "USER ghost\n"
                 "WORKDIR /ghost\n"
                 "USER 4321:4321\n"
                 "WORKDIR /tmp/kept\n"
                 "USER root\n"
                 "RUN stat -c '%n %u:%g %a' /num /num/sub /num/sub/mine /named /grp /ghost /tmp /tmp/kept\n")
    assert res.code == 0, res.stderr
    lines = re.findall(r"^#\d+ [\d.]+ (/\S* \d+:\d+ \d+)$", res.stderr, re.M)
    # (RUN itself, as docker's, gives a uid without a passwd entry gid 0: only the mkdir uses gid = uid)
    assert lines == ["/num 4321:4321 755", "/num/sub 4321:4321 755", "/num/sub/mine 4321:0 644",
                     "/named 65534:65534 755", "/grp 4321:1 755", "/ghost 0:0 755",
                     "/tmp 0:0 1777", "/tmp/kept 4321:4321 755"], res.stderr


def test_workdir_key_includes_the_user(cli, tmp_path):
    df = "FROM busybox:latest\nUSER {}\nWORKDIR /w\nRUN stat -c 'owner=%u' /w\n"
    assert _build(cli, tmp_path, df.format(1000)).code == 0
    res = _build(cli, tmp_path, df.format(2000))
    assert res.code == 0, res.stderr
    assert re.search(r"^#(\d+) \[2/3\] WORKDIR /w\n#\1 cache miss", res.stderr, re.M), res.stderr
    assert "owner=2000" in res.stderr


def test_workdir_onto_a_file_fails_at_the_workdir_line(cli, tmp_path):
    for path, bad in (("/f", "/f"), ("/f/sub", "/f")):
        res = _build(cli, tmp_path, f"FROM busybox:latest\nRUN touch /f\nWORKDIR {path}\nRUN pwd\n")
        assert res.code == 1
        assert f"Dockerfile:3:1: WORKDIR {path}: mkdir {bad}: not a directory" in res.stderr, res.stderr
        assert re.search(r"^#(\d+) \[3/4\] WORKDIR .*\n(#\1 cache miss.*\n)?#\1 ERROR", res.stderr, re.M), res.stderr
        assert "[4/4] RUN pwd" not in res.stderr and f">>> WORKDIR {path}" in res.stderr
        assert "latest" in cli("images", check=True).stdout and not re.search(r"^t ", cli("images").stdout, re.M)
