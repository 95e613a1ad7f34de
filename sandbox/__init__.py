"""sandbox: run one process in new mount/PID/UTS/IPC/net namespaces on an overlay rootfs."""

from .runner import ExitStatus, ProcessSpec, RootfsSpec, SandboxError, abort_all, run

__all__ = ["ExitStatus", "ProcessSpec", "RootfsSpec", "SandboxError", "abort_all", "run"]
