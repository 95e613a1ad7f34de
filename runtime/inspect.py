"""The `inspect` object of a container, in docker's shape (the fields pybuild has)."""

from __future__ import annotations

from .containers import Container
from .options import signal_name

__all__ = ["describe_container", "published_ports", "ports_map"]


def describe_container(c: Container) -> dict:
    cfg, st = c.config, c.state()
    status = st.get("Status", "created")
    return {
        "Id": c.id,
        "Created": cfg.get("Created", ""),
        "Path": (cfg.get("Args") or [""])[0],
        "Args": (cfg.get("Args") or [])[1:],
        "State": {
            "Status": status,
            "Running": status == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": bool(st.get("OOMKilled")),
            "Dead": False,
            "Pid": st.get("SupervisorPid", 0) if status == "running" else 0,
            "ExitCode": st.get("ExitCode", 0),
            "Error": st.get("Error", ""),
            "StartedAt": st.get("StartedAt", "0001-01-01T00:00:00Z"),
            "FinishedAt": st.get("FinishedAt", "0001-01-01T00:00:00Z"),
        },
        "Image": cfg.get("ImageId", ""),
        "Name": "/" + c.name,
        "LogPath": str(c.log_path) if cfg.get("Detach") else "",
        "Mounts": [{"Type": m["Type"], "Name": m.get("Name", ""), "Source": m.get("Source", ""),
                    "Destination": m["Destination"], "RW": m.get("RW", True)} for m in cfg.get("Mounts") or []],
        "Config": {
            "Hostname": cfg.get("Hostname", ""),
            "User": cfg.get("User", ""),
            "Tty": bool(cfg.get("Tty")),
            "OpenStdin": bool(cfg.get("OpenStdin")),
            "Env": [f"{k}={v}" for k, v in (cfg.get("Env") or {}).items()],
            "Cmd": cfg.get("Args") or [],
            "Image": cfg.get("Image", ""),
            "WorkingDir": cfg.get("WorkingDir", ""),
            "StopSignal": _stop_signal(cfg.get("StopSignal")),
            "StopTimeout": cfg.get("StopTimeout"),
        },
        "HostConfig": {
            "AutoRemove": bool(cfg.get("AutoRemove")),
            "NetworkMode": cfg.get("Network", ""),
            "PortBindings": cfg.get("Ports") or [],
            "ExtraHosts": cfg.get("ExtraHosts") or None,
            "ReadonlyRootfs": bool(cfg.get("ReadOnly")),
            "Memory": (cfg.get("Resources") or {}).get("Memory") or 0,
            "NanoCpus": int(((cfg.get("Resources") or {}).get("Cpus") or 0) * 1e9),
            "PidsLimit": (cfg.get("Resources") or {}).get("PidsLimit"),
        },
        "NetworkSettings": {"IPAddress": st.get("IPAddress", ""), "Ports": ports_map(published_ports(st))},
        "GraphDriver": {"Name": "overlay", "Data": {"UpperDir": str(c.upper), "WorkDir": str(c.work)}},
    }


def published_ports(st: dict) -> list[dict]:
    """The host ports a container publishes, as docker's API lists them (``{"IP", "PrivatePort",
    "PublicPort", "Type"}``, an ephemeral port resolved): those recorded at its start, none once
    it is no longer running (docker releases them at the exit)."""
    if st.get("Status") != "running":
        return []
    return [p for p in st.get("Ports") or [] if isinstance(p, dict)]


def ports_map(ports: list[dict]) -> dict[str, list[dict]]:
    """docker inspect's ``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort":
    "48581"}]}``, keys in port order, the bindings of one key in publishing order."""
    out: dict[str, list[dict]] = {}
    for p in sorted(ports, key=lambda p: (p["PrivatePort"], p["Type"])):  # stable: -p order within a key
        out.setdefault(f"{p['PrivatePort']}/{p['Type']}", []).append(
            {"HostIp": p["IP"], "HostPort": str(p["PublicPort"])})
    return out


def _stop_signal(value) -> str | None:
    """The record keeps the number `stop` sends; docker shows the name ("SIGTERM")."""
    return signal_name(value) if isinstance(value, int) else value
