"""sandbox: run one process in new mount/PID/UTS/IPC/net namespaces on an overlay rootfs."""

from .cgroups import Resources
from .runner import ExitStatus, ProcessSpec, RootfsSpec, SandboxError, abort_all, run

__all__ = ["ExitStatus", "ProcessSpec", "Resources", "RootfsSpec", "SandboxError", "abort_all", "run"]
