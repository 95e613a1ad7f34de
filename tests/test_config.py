"""pybuild.config: the config file's defaults, and flag > env > file precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from pybuild.config import ConfigError, config_path, load_settings, parse_settings


def test_no_file_means_defaults(tmp_path):
    s = load_settings({"HOME": str(tmp_path)})
    assert (s.path, s.root, s.jobs, s.progress, s.registry) == (None, None, None, None, {})


def test_xdg_file_is_found_and_parsed(tmp_path):
    cfg = tmp_path / "xdg" / "pybuild" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('root = "/srv/pb"\njobs = 3\nprogress = "plain"\n'
                   '[registry."docker.io"]\nmirrors = ["127.0.0.1:5000"]\n')
    s = load_settings({"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "HOME": "/nonexistent"})
    assert s.path == cfg and s.root == Path("/srv/pb") and s.jobs == 3 and s.progress == "plain"
    assert s.registry == {"docker.io": {"mirrors": ["127.0.0.1:5000"]}}


def test_pybuild_config_wins_and_must_exist(tmp_path):
    assert config_path({"PYBUILD_CONFIG": str(tmp_path / "c.toml")}) == (tmp_path / "c.toml", True)
    with pytest.raises(ConfigError, match="no such file"):
        load_settings({"PYBUILD_CONFIG": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize("text,msg", [
    ("jbos = 2", "unknown key 'jbos'"),
    ("jobs = 0", "jobs must be a positive integer"),
    ("jobs = true", "jobs must be a positive integer"),
    ('root = "relative"', "root must be an absolute path"),
    ('progress = "fancy"', "progress must be one of"),
    ("registry = 3", "'registry' must be a table"),
    ("jobs = ", "c.toml"),  # TOML syntax error names the file
])
def test_bad_files_name_the_file_and_key(tmp_path, text, msg):
    f = tmp_path / "c.toml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError, match=msg) as exc:
        load_settings({"PYBUILD_CONFIG": str(f)})
    assert str(f) in str(exc.value)


def test_parse_is_pure_and_accepts_empty():
    assert parse_settings({}, Path("/x")).root is None


def test_cli_uses_config_root_and_progress_and_env_overrides(cli, tmp_path):
    """The file's root is the store when $PYBUILD_ROOT is unset; the env var and flags win."""
    store = tmp_path / "from-config"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'root = "{store}"\nprogress = "rawjson"\n')
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    env = cli.env()
    env.pop("PYBUILD_ROOT")
    env["PYBUILD_CONFIG"] = str(cfg)
    env.pop("PYBUILD_PROGRESS", None)
    import subprocess
    import sys
    run = lambda *a, **kw: subprocess.run([sys.executable, "-m", "pybuild", *a], capture_output=True,  # noqa: E731
                                          text=True, env={**env, **kw}, timeout=120)
    res = run("build", "-t", "cfg:1", str(ctx))
    assert res.returncode == 0, res.stderr
    assert res.stderr.lstrip().startswith("{")  # rawjson from the file
    assert (store / "index.json").exists()
    assert "cfg" in run("images").stdout
    res = run("build", "--progress", "plain", str(ctx))
    assert res.stderr.startswith("#1 ")       # the flag wins over the file
    res = run("build", str(ctx), PYBUILD_PROGRESS="plain")
    assert res.stderr.startswith("#1 ")       # and so does the env var
    other = tmp_path / "env-root"
    assert "cfg" not in run("images", PYBUILD_ROOT=str(other)).stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("jobs = -1\n")
    res = run("images", PYBUILD_CONFIG=str(bad))
    assert res.returncode == 1 and f"ERROR: {bad}: jobs must be a positive integer" in res.stderr
