"""runtime.options: pure parsing of run's flags (docker's syntax)."""

from __future__ import annotations

import signal

import pytest

from pybuild.runtime.options import (MountRequest, RunOptionError, command_line, parse_env, parse_env_file,
                                     parse_mount, parse_signal, parse_tmpfs, parse_volume, signal_name)


def test_volume_forms():
    assert parse_volume("/host/dir:/data") == MountRequest("bind", "/data", "/host/dir", False, create_host_dir=True)
    assert parse_volume("/host/:/data/:ro").readonly
    assert parse_volume("cache:/var/cache") == MountRequest("volume", "/var/cache", "cache")
    assert parse_volume("/anon") == MountRequest("volume", "/anon", None)
    # docker 23+: a source starting with "." is a host path relative to the current directory
    assert parse_volume("./sub:/m", cwd="/work") == MountRequest("bind", "/m", "/work/sub", False,
                                                                create_host_dir=True)
    assert parse_volume("..:/m:ro", cwd="/work/x").source == "/work"
    assert parse_volume(".:/m", cwd="/work").source == "/work"


@pytest.mark.parametrize("text, message", [
    ("rel/dir:/data", "neither an absolute host path nor a volume name"),
    ("/h:data", "must be absolute"),
    ("/h:/data:rx", "invalid mode"),
    ("/h:/", "cannot mount over /"),
    ("a:b:c:d", "expected"),
])
def test_volume_errors_name_the_flag(text, message):
    with pytest.raises(RunOptionError, match=message) as e:
        parse_volume(text)
    assert str(e.value).startswith(f"-v {text}")


def test_mount_forms():
    assert parse_mount("type=bind,source=/h,target=/c,readonly") == MountRequest("bind", "/c", "/h", True)
    assert parse_mount("type=volume,src=v1,dst=/c") == MountRequest("volume", "/c", "v1")
    assert parse_mount("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1777") == \
        MountRequest("tmpfs", "/t", None, False, ("size=64m", "mode=1777"))
    for bad, msg in (("type=bind,target=/c", "absolute source"), ("type=nfs,target=/c", "unknown type"),
                     ("type=tmpfs,target=/t,tmpfs-mode=9", "octal"), ("type=volume,target=/c,color=red",
                                                                          "unknown option")):
        with pytest.raises(RunOptionError, match=msg):
            parse_mount(bad)


def test_tmpfs():
    assert parse_tmpfs("/run:size=1m,ro") == MountRequest("tmpfs", "/run", None, True, ("size=1m",))
    assert parse_tmpfs("/run:size=50%,mode=1777,uid=0,gid=0,nr_inodes=1k,noexec").options == (
        "size=50%", "mode=1777", "uid=0", "gid=0", "nr_inodes=1k", "noexec")
    with pytest.raises(RunOptionError, match="unknown option"):
        parse_tmpfs("/run:bogus")


@pytest.mark.parametrize("text, message", [
    ("/x:size=abc", "--tmpfs /x:size=abc: invalid size 'abc'"),
    ("/x:size=", "--tmpfs /x:size=: invalid size ''"),
    ("/x:size=1.5g", "--tmpfs /x:size=1.5g: invalid size '1.5g'"),
    ("/x:mode=999", "--tmpfs /x:mode=999: invalid mode '999' (expected octal"),
    ("/x:uid=root", "--tmpfs /x:uid=root: invalid uid 'root'"),
    ("/x:noexec=1", "--tmpfs /x:noexec=1: unknown option 'noexec=1'"),
])
def test_tmpfs_values_are_checked_before_mount(text, message):
    """A bad value used to reach mount(2) and come back as EINVAL naming a sandbox path."""
    with pytest.raises(RunOptionError) as e:
        parse_tmpfs(text)
    assert str(e.value).startswith(message), str(e.value)


def test_mount_requests_carry_their_flag_for_messages():
    assert parse_mount("type=bind,source=/h,target=/c").flag == "--mount type=bind,source=/h,target=/c"
    assert parse_volume("/h:/c").flag == "-v /h:/c"
    assert parse_tmpfs("/t:size=1m").flag == "--tmpfs /t:size=1m"
    with pytest.raises(RunOptionError, match="invalid tmpfs-size 'abc'"):
        parse_mount("type=tmpfs,target=/t,tmpfs-size=abc")


def test_env_precedence_and_host_lookup():
    env = parse_env(["A=image", "B=image"], ["B=flag", "C", "D"], {"C": "host"})
    assert env == {"A": "image", "B": "flag", "C": "host",
                   "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    assert parse_env_file("f", "# c\n\nX=1\n  Y\n") == ["X=1", "Y"]
    with pytest.raises(RunOptionError, match="--env-file f:2"):
        parse_env_file("f", "X=1\nBAD NAME=2\n")


def test_signals():
    assert parse_signal(None) == signal.SIGTERM
    assert parse_signal("SIGUSR1") == parse_signal("usr1") == parse_signal("10") == signal.SIGUSR1
    assert parse_signal("RTMIN+3") == signal.SIGRTMIN + 3
    with pytest.raises(RunOptionError, match="no such signal"):
        parse_signal("SIGBOGUS")


def test_signal_names_as_docker_shows_them():
    assert signal_name(15) == "SIGTERM" and signal_name(int(signal.SIGUSR1)) == "SIGUSR1"
    assert signal_name(parse_signal("RTMIN+3")) == "SIGRTMIN+3"
    assert signal_name(int(signal.SIGRTMIN)) == "SIGRTMIN" and signal_name(int(signal.SIGRTMAX)) == "SIGRTMAX"


def test_command_line_follows_docker():
    cfg = {"Entrypoint": ["/ep"], "Cmd": ["default"]}
    assert command_line(cfg, None, []) == ["/ep", "default"]
    assert command_line(cfg, None, ["x"]) == ["/ep", "x"]
    assert command_line(cfg, "/other", []) == ["/other"]  # --entrypoint drops the image's Cmd
    assert command_line({"Cmd": ["sh"]}, None, []) == ["sh"]
