"""The kernel's launcher, `python -m peftlab.grader.launcher POLICY_JSON -- COMMAND...` (see `sandbox.wrap`).

Started once per submission, before bubblewrap: it makes itself die with the
grader's worker (PR_SET_PDEATHSIG, kept across the exec of bubblewrap,
`die_with_parent`), closes every descriptor but 0, 1 and 2, and sets resource
limits (address space, CPU seconds, processes, file size); when the grader
runs as root the kernel later drops to a per-worker user id, which a batch
locks (`peftlab.grader.uids`). Under bubblewrap it passes bubblewrap, by
descriptor, a seccomp filter that refuses new user namespaces
(`seccomp_no_userns`) and the sandbox's /etc/passwd and /etc/group; as root it
mounts a 1 MiB tmpfs over the kernel's socket folder in a mount namespace of
its own. Then it execs the command. It imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import stat
import sys
from pathlib import Path

from .sandbox import Policy, as_root, kernel_env, private_sockets
from .uids import processes_of

SOCKET_BYTES = 1 * 2**20  # the kernel's socket folder: sockets take no space, the connection file 300 bytes
SOCKET_INODES = 64


def die_with_parent(parent: int | None = None) -> None:
    """Linux: this process gets SIGKILL when its parent dies (PR_SET_PDEATHSIG).

    The signal survives exec (of anything but a set-user-id program), so a launcher that calls this and
    then execs bubblewrap makes bubblewrap die with the grader's worker. With `parent`, the pid the caller
    was started by: if that one already died before the call (too late for the signal), exit at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if parent is not None and os.getppid() != parent:
            os._exit(1)


def _apply_limits(policy: Policy, sandboxed: bool) -> None:
    def cap(which, value):
        soft, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))

    cap(resource.RLIMIT_AS, policy.memory_bytes)
    cap(resource.RLIMIT_CPU, policy.cpu_seconds)
    cap(resource.RLIMIT_FSIZE, policy.max_file_bytes)
    cap(resource.RLIMIT_CORE, 0)
    if hasattr(resource, "RLIMIT_NPROC"):
        # The limit counts every process of the user id: as root the sandbox gets its own id
        # (see bwrap_args); otherwise leave room for the processes this user already runs.
        mine = 0 if as_root(policy) else processes_of(os.getuid())
        cap(resource.RLIMIT_NPROC, mine + policy.max_processes)
    if as_root(policy) and not sandboxed:  # under bubblewrap, setpriv drops privileges after the mounts
        os.setgroups([])
        os.setgid(policy.uid)
        os.setuid(policy.uid)


_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {"x86_64": {"unshare": 272, "clone": 56, "clone3": 435},
             "aarch64": {"unshare": 97, "clone": 220, "clone3": 435}}
CLONE_NEWUSER = 0x10000000


def seccomp_no_userns(machine: str | None = None) -> bytes | None:
    """A seccomp BPF program (for bubblewrap's --seccomp) that refuses new user namespaces.

    unshare() and clone() with CLONE_NEWUSER get EPERM; clone3(), whose flags sit in memory a filter cannot
    read, gets ENOSYS, so the C library falls back to clone() (as Docker's and Flatpak's filters do); a
    foreign ABI (32-bit or x32 calls on x86_64) gets ENOSYS. Everything else is allowed. bubblewrap's own
    --disable-userns needs a user namespace of its own, which a root grader does not make (bwrap_args).
    None on an architecture this does not know."""
    import platform
    import struct

    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    nr = _SYSCALLS[machine]
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [  # (code, jump if true, jump if false, k): jumps count instructions skipped
        (ld, 0, 0, 4),  # 0: the ABI
        (jeq, 1, 0, _AUDIT_ARCH[machine]),  # 1
        (ret, 0, 0, enosys),  # 2: another ABI
        (ld, 0, 0, 0),  # 3: the system call's number
        (jge, 7, 0, 0x40000000),  # 4: x32 calls -> 12
        (jeq, 6, 0, nr["clone3"]),  # 5 -> 12
        (jeq, 1, 0, nr["unshare"]),  # 6 -> 8
        (jeq, 0, 2, nr["clone"]),  # 7 -> 8, else -> 10
        (ld, 0, 0, 16),  # 8: the low half of the first argument, the flags (both ABIs are little-endian)
        (jset, 1, 0, CLONE_NEWUSER),  # 9 -> 11
        (ret, 0, 0, allow),  # 10
        (ret, 0, 0, eperm),  # 11
        (ret, 0, 0, enosys),  # 12
    ]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _etc_files(policy: Policy) -> dict[str, str]:
    """/etc/passwd and /etc/group as the sandbox sees them: root, the kernel's user (home /tmp), nobody."""
    uid = policy.uid if as_root(policy) else os.getuid()
    gid = policy.uid if as_root(policy) else os.getgid()
    passwd = (f"root:x:0:0:root:/root:/usr/sbin/nologin\nstudent:x:{uid}:{gid}:student:/tmp:/usr/sbin/nologin\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    group = f"root:x:0:\nstudent:x:{gid}:\nnogroup:x:65534:\n"
    return {"/etc/passwd": passwd, "/etc/group": group}


def _data_fd(data: bytes, name: str) -> int:
    fd = os.memfd_create(name, 0)  # Linux, like bubblewrap: a file in memory, inherited by bubblewrap
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def _bwrap_extras(policy: Policy) -> list[str]:
    """Arguments that pass bubblewrap data by descriptor: the seccomp filter, /etc/passwd and /etc/group."""
    args = []
    program = seccomp_no_userns()
    if program is not None:
        args += ["--seccomp", str(_data_fd(program, "seccomp"))]
    for dest, text in _etc_files(policy).items():
        args += ["--perms", "0644", "--ro-bind-data", str(_data_fd(text.encode(), Path(dest).name)), dest]
    return args


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _private_socket_folder(policy: Policy) -> None:
    """A tmpfs of SOCKET_BYTES over the kernel's socket folder, seen by this process and its children only.

    In a mount namespace of the launcher's own (it is root): the host's folder keeps the connection file
    the kernel reads, copied into the tmpfs here; whatever the kernel writes beside its sockets lands in
    the tmpfs, bounded, and vanishes with the last process of the namespace, however the kernel ends. The
    grader reaches the sockets through /proc/PID/root (`SandboxKernelManager`)."""
    folder = policy.sockets
    carried = {}
    for name in os.listdir(folder):  # the grader's own files (connection.json), made before the launch
        path = os.path.join(folder, name)
        if stat.S_ISREG(os.lstat(path).st_mode):
            carried[name] = Path(path).read_bytes()
    libc = _libc()
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    ms_rec, ms_private, flags = 0x4000, 0x40000, 0x2 | 0x4 | 0x8  # MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(ctypes.get_errno(), "making the mounts private failed")
    options = f"size={SOCKET_BYTES},nr_inodes={SOCKET_INODES},mode=0700,uid={policy.uid},gid={policy.uid}"
    if libc.mount(b"tmpfs", folder.encode(), b"tmpfs", flags, options.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mounting a tmpfs on {folder} failed")
    for name, data in carried.items():
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chown(path, policy.uid, policy.uid)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m peftlab.grader.launcher POLICY_JSON -- COMMAND...")
    parent = int(os.environ.get("JPY_PARENT_PID") or os.getppid())  # jupyter_client names the worker
    die_with_parent(parent)  # and so does bubblewrap, exec'd below: nothing outlives the grader's worker
    os.closerange(3, 65536)  # the kernel inherits no descriptor of the grader's but its own pipes (0, 1, 2)
    policy = Policy(**json.loads(argv[0]))
    cmd = argv[2:]
    sandboxed = Path(cmd[0]).name == "bwrap"
    _apply_limits(policy, sandboxed)
    if sandboxed:
        if private_sockets(policy):
            try:
                _private_socket_folder(policy)
            except OSError as exc:  # no mount privilege (a container): the sockets stay on the host's folder
                print(f"peftlab.grader.launcher: no private tmpfs for the kernel's sockets ({exc}); its socket "
                      "folder is bounded by the file size limit only", file=sys.stderr, flush=True)
        end = cmd.index("--")  # bubblewrap's options end there; the kernel's command follows
        cmd = [*cmd[:end], *_bwrap_extras(policy), *cmd[end:]]
    else:  # bubblewrap clears the environment itself (--clearenv)
        os.environ.clear()
        os.environ.update(kernel_env(policy))
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
