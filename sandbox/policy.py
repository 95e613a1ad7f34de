"""The privilege policy of a sandboxed command, in one place.

Stdlib only: imported by ``_init.py``, which runs as ``python -I -S``.

What a RUN step's process gets (Docker's / BuildKit's defaults):

* capabilities: the 14 of ``DEFAULT_CAPABILITIES`` in the bounding, permitted and effective
  sets; inheritable and ambient empty (as Docker since the fix for CVE-2022-24769).  A non-root
  user ends up with no permitted/effective capabilities at all: the kernel clears them on
  ``setuid`` from 0 and we clear ambient, so only a file-capability binary within the bounding
  set could give some back (and ``no_new_privs`` stops that too).
* ``no_new_privs``: setuid-root binaries and file capabilities cannot raise privileges.
* seccomp: Docker's default profile (see the seccomp section below for what it means for a
  process with the default capabilities).
* privileged (BuildKit's ``RUN --security=insecure``): none of the above; the command keeps
  every capability pybuild has, no no_new_privs, no seccomp filter.

``apply(...)`` is called in the command's process right before ``execve`` and also switches
to the target user, because the order matters: the bounding set must be reduced while we
still have CAP_SETPCAP, ``setuid`` needs CAP_SETUID, and the final capset comes last.
"""

from __future__ import annotations

import ctypes
import os
import struct

if __package__:
    from . import syscalls_x86
else:  # imported by _init.py run as a script (its directory is on sys.path meanwhile)
    import syscalls_x86

# linux/capability.h
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

# Docker's default capability set (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)
DEFAULT_CAP_MASK = sum(1 << CAPABILITIES[n] for n in DEFAULT_CAPABILITIES)  # 0xa80425fb
INHERITABLE_CAP_MASK = 0  # Docker >= 20.10.14 (CVE-2022-24769): inheritable stays empty

PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PolicyError(Exception):
    pass


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
_libc.capget.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def _prctl(option: int, arg2: int = 0, what: str = "prctl") -> int:
    ret = _libc.prctl(option, arg2, 0, 0, 0)
    if ret < 0:
        raise PolicyError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return ret


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        n = 0  # probe the bounding set: PR_CAPBSET_READ fails with EINVAL past the last cap
        while _libc.prctl(PR_CAPBSET_READ, n + 1, 0, 0, 0) >= 0:
            n += 1
        return n


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of this thread."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capget(ctypes.byref(hdr), data) != 0:
        raise PolicyError(f"capget: {os.strerror(ctypes.get_errno())}")
    join = lambda a, b: a | (b << 32)
    return (join(data[0].effective, data[1].effective), join(data[0].permitted, data[1].permitted),
            join(data[0].inheritable, data[1].inheritable))


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise PolicyError(f"capset: {os.strerror(ctypes.get_errno())}")


def drop_bounding(keep_mask: int) -> None:
    for cap in range(last_cap() + 1):
        if not keep_mask & (1 << cap) and _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            _prctl(PR_CAPBSET_DROP, cap, f"prctl(PR_CAPBSET_DROP, {cap})")


def apply(uid: int, gid: int, sgids: list[int], privileged: bool = False,
          seccomp: bytes | None = None) -> None:
    """Switch to ``uid``/``gid``/``sgids`` and apply the policy to the calling process.

    Call as root (full capabilities) right before ``execve``; ``seccomp`` is the output of
    ``seccomp_program()`` (None: no filter; compile it before pivot_root, it imports nothing
    but is slow enough to be worth caching).  Raises PolicyError.
    """
    if not privileged:
        drop_bounding(DEFAULT_CAP_MASK)
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    try:
        os.setgroups(sgids)
        os.setgid(gid)
        os.setuid(uid)  # from 0 to non-0: the kernel clears permitted and effective
    except OSError as e:
        raise PolicyError(f"switching to uid {uid} gid {gid}: {e.strerror}") from None
    if privileged:
        return
    eff, prm, _ = capget()
    capset(eff & DEFAULT_CAP_MASK, prm & DEFAULT_CAP_MASK, INHERITABLE_CAP_MASK)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
    if seccomp is not None:
        install_seccomp(seccomp)  # last: from here on only the profile's syscalls work


PR_SET_DUMPABLE = 4
INIT_CAP_MASK = 1 << CAPABILITIES["KILL"]


def confine_init() -> None:
    """Called by the sandbox's PID 1 once it has forked the command: from then on it only reaps,
    forwards signals and kills what is left, so it keeps CAP_KILL (the command may run as
    another uid) and nothing else, gains nothing by exec (no_new_privs), and is not dumpable,
    so the container's processes cannot ptrace it or read its /proc files even though it no
    longer holds more capabilities than they do.  Raises PolicyError."""
    _prctl(PR_SET_DUMPABLE, 0, "prctl(PR_SET_DUMPABLE, 0)")
    drop_bounding(INIT_CAP_MASK)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")
    eff, prm, _ = capget()
    capset(eff & INIT_CAP_MASK, prm & INIT_CAP_MASK, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")


# ---------------------------------------------------------------------------------------------
# seccomp: Docker's default profile (moby profiles/seccomp/default.json) as it applies to a
# process holding only DEFAULT_CAPABILITIES, compiled to a classic BPF filter here (no
# libseccomp: the init is stdlib-only and must start fast).  Not applied when privileged.
#
#   default action            errno EPERM (the profile's defaultErrnoRet 1)
#   SECCOMP_ALLOW             allowed on every ABI
#   + ptrace, process_vm_readv/writev (kernel >= 4.8), arch_prctl, modify_ldt (x86),
#     chroot (CAP_SYS_CHROOT is in the default set)
#   socket                    allowed unless the family is AF_VSOCK (40)
#   personality               allowed only for PER_LINUX, PER_LINUX32, UNAME26 combinations, query
#   clone                     allowed only without CLONE_NEW* flags (mask 0x7e020000)
#   clone3                    errno ENOSYS, so libcs fall back to clone (flags cannot be checked)
#   everything else           EPERM: mount, unshare, setns, bpf, keyctl, add_key, kexec_*,
#                             init_module, reboot, swapon, perf_event_open, userfaultfd, ...
#   foreign architecture      the process is killed (libseccomp's default bad-arch action)
#
# Only x86_64 (with its i386 and x32 ABIs) has a syscall table here; elsewhere no filter is
# installed and `pybuild doctor` says so.

SECCOMP_ALLOW = frozenset(["accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev"])
SECCOMP_ALLOW_X86 = frozenset(("ptrace", "process_vm_readv", "process_vm_writev", "arch_prctl",
                               "modify_ldt", "chroot"))
AF_VSOCK = 40
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
CLONE_NAMESPACE_MASK = 0x7E020000
ENOSYS, EPERM = 38, 1

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

_LD_W_ABS, _JEQ_K, _JA, _RET_K = 0x20, 0x15, 0x05, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16


class _Asm:
    """A tiny BPF assembler: jumps to labels, resolved in ``assemble``."""

    def __init__(self):
        self.code: list[tuple] = []
        self.labels: dict[str, int] = {}
        self._n = 0

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def new(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def ld(self, off: int) -> None:
        self.code.append((_LD_W_ABS, 0, 0, off))

    def jeq(self, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((_JEQ_K, jt, jf, k))

    def ja(self, target: str) -> None:
        self.code.append((_JA, 0, 0, target))

    def ret(self, k: int) -> None:
        self.code.append((_RET_K, 0, 0, k))

    def assemble(self) -> bytes:
        out = []
        def rel(t: str | int, i: int) -> int:
            return t if isinstance(t, int) else self.labels[t] - i - 1

        for i, (code, jt, jf, k) in enumerate(self.code):
            jt, jf = rel(jt, i), rel(jf, i)
            if code == _JA:
                k, jt, jf = rel(k, i), 0, 0
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise PolicyError("seccomp: jump out of range")  # a bug in the generator
            out.append(struct.pack("=HBBI", code, jt, jf, k))
        return b"".join(out)


def _emit_abi(a: _Asm, table: dict[str, int]) -> None:
    """The checks for one ABI; the accumulator holds the syscall number on entry."""
    ret_eperm = SECCOMP_RET_ERRNO | EPERM
    special = []
    if "socket" in table:
        special.append(("socket", table["socket"]))
    for name in ("personality", "clone", "clone3"):
        if name in table:
            special.append((name, table[name]))
    for name, nr in special:
        skip = a.new("skip")
        a.jeq(nr, 0, skip)
        if name == "clone3":
            a.ret(SECCOMP_RET_ERRNO | ENOSYS)
        elif name == "socket":  # deny iff arg0 == AF_VSOCK (64-bit compare)
            allow = a.new("allow")
            a.ld(_OFF_ARG0)
            a.jeq(AF_VSOCK, 0, allow)
            a.ld(_OFF_ARG0 + 4)
            a.jeq(0, 0, allow)
            a.ret(ret_eperm)
            a.label(allow)
            a.ret(SECCOMP_RET_ALLOW)
        elif name == "personality":
            deny, allow = a.new("deny"), a.new("allow")
            a.ld(_OFF_ARG0 + 4)
            a.jeq(0, 0, deny)
            a.ld(_OFF_ARG0)
            for v in PERSONALITY_ALLOWED:
                a.jeq(v, allow, 0)
            a.label(deny)
            a.ret(ret_eperm)
            a.label(allow)
            a.ret(SECCOMP_RET_ALLOW)
        elif name == "clone":  # (arg0 & CLONE_NAMESPACE_MASK) == 0; the mask has no high bits
            a.ld(_OFF_ARG0)
            a.code.append((0x54, 0, 0, CLONE_NAMESPACE_MASK))  # BPF_ALU|BPF_AND|BPF_K
            a.jeq(0, 0, 1)
            a.ret(SECCOMP_RET_ALLOW)
            a.ret(ret_eperm)
        a.label(skip)
    if special:
        a.ld(_OFF_NR)
    allowed = sorted({table[n] for n in SECCOMP_ALLOW | SECCOMP_ALLOW_X86 if n in table})
    for i in range(0, len(allowed), 200):  # jeq offsets are 8 bit: a local "ret allow" per chunk
        chunk = allowed[i:i + 200]
        allow, nxt = a.new("allow"), a.new("next")
        for nr in chunk:
            a.jeq(nr, allow, 0)
        a.ja(nxt)
        a.label(allow)
        a.ret(SECCOMP_RET_ALLOW)
        a.label(nxt)
    a.ret(ret_eperm)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The default filter as an array of ``struct sock_filter``; None if the arch is unknown."""
    if (machine or os.uname().machine) != "x86_64":
        return None
    t = syscalls_x86
    a = _Asm()
    a.ld(_OFF_ARCH)
    a.jeq(AUDIT_ARCH_X86_64, 0, 1)
    a.ja("x86_64")
    a.jeq(AUDIT_ARCH_I386, 0, 1)
    a.ja("i386")
    a.ret(SECCOMP_RET_KILL_PROCESS)
    a.label("x86_64")
    a.ld(_OFF_NR)
    # x32: same checks on its own numbers, then the native ones
    a.code.append((0x45, 0, 1, X32_SYSCALL_BIT))  # BPF_JMP|BPF_JSET|BPF_K: x32 bit set?
    a.ja("x32")
    _emit_abi(a, dict(t.X86_64))
    a.label("x32")
    _emit_abi(a, dict(t.X32))  # x32 numbers carry X32_SYSCALL_BIT
    a.label("i386")
    a.ld(_OFF_NR)
    _emit_abi(a, dict(t.I386))
    return a.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(program: bytes) -> None:
    """Install ``program`` for this thread (needs no_new_privs or CAP_SYS_ADMIN)."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p).value)
    _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise PolicyError(f"installing the seccomp filter: {os.strerror(ctypes.get_errno())}")
