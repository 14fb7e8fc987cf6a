"""Run an untrusted Jupyter kernel in a sandbox: bubblewrap plus resource limits.

The grader starts each submission's kernel through `SandboxKernelManager`,
which wraps the kernel command as

    python -m peftlab.sandbox POLICY_JSON -- bwrap ARGS -- python -m ipykernel_launcher -f ...

The first step sets resource limits (address space, CPU seconds, processes,
file size) and, when the grader runs as root, drops to a per-worker user id;
then bubblewrap gives the kernel no network, a read-only system, an empty
/tmp, empty directories over the hidden paths (instructor sources, the
gradebook, other submissions, home directories) and one writable directory:
the submission's own. The kernel talks to the grader over Unix sockets in a
directory bound into the sandbox, since it has no network namespace to share.

Where bubblewrap is missing (macOS), only the resource limits apply and
`warn_unsandboxed` says so loudly. See grading/README.md for the threat model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

GiB = 2**30
# Variables a kernel needs; everything else (tokens, keys, proxies) stays outside.
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PEFTLAB_CACHE", "PYTHONHASHSEED")


@dataclass
class Policy:
    """What one sandboxed kernel may do."""

    hide: list[str] = field(default_factory=list)  # replaced by empty directories
    expose: list[str] = field(default_factory=list)  # re-bound read-only after hiding
    writable: list[str] = field(default_factory=list)  # bound read-write (the submission's directory)
    memory_bytes: int = 8 * GiB  # RLIMIT_AS per process
    cpu_seconds: int = 900  # RLIMIT_CPU per process
    max_processes: int = 64  # RLIMIT_NPROC for the sandbox's user id
    max_file_bytes: int = 256 * 2**20  # RLIMIT_FSIZE
    uid: int | None = None  # user id to run as when the grader is root
    threads: int = 1  # BLAS/OpenMP threads: fixed, so results do not depend on the worker count
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def warn_unsandboxed() -> None:
    warnings.warn(
        "bubblewrap (bwrap) is not installed: student code will run with resource limits only, "
        "able to read any file this user can read and to use the network. Install it (Debian/Ubuntu: "
        "apt-get install bubblewrap) before grading untrusted submissions.",
        RuntimeWarning,
        stacklevel=2,
    )


def _env(policy: Policy) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    threads = str(policy.threads)
    env.update(
        HOME="/tmp", TMPDIR="/tmp", HF_HOME="/tmp/hf", MPLCONFIGDIR="/tmp/mpl", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONNOUSERSITE="1",
        JUPYTER_PLATFORM_DIRS="1",
    )
    env.update(policy.env)
    return env


def _as_root(policy: Policy) -> bool:
    return os.geteuid() == 0 and policy.uid is not None


def bwrap_args(policy: Policy, cwd: str | None = None) -> list[str]:
    """bubblewrap's arguments for `policy` (the command follows them).

    Unprivileged, bubblewrap needs a user namespace (--unshare-all includes one).
    As root it runs without one and the command drops to `policy.uid` inside,
    after the mounts are made: root ignores RLIMIT_NPROC, and a user namespace
    created by root would still count its processes as root's.
    """
    if _as_root(policy):
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                   "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        unshare = ["--unshare-all"]
    args = [bwrap_path() or "bwrap", "--die-with-parent", "--new-session", *unshare,
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp",
            "--perms", "1777", "--tmpfs", "/var/tmp", "--perms", "1777", "--tmpfs", "/dev/shm", "--clearenv"]
    args += _mounts(policy)
    for key, value in _env(policy).items():
        args += ["--setenv", key, value]
    if cwd:
        args += ["--chdir", cwd]
    return args


def _mounts(policy: Policy) -> list[str]:
    """Hide, then re-expose, then bind writable: in that order, parents first.

    A mount point inside a tmpfs (the sandbox's /tmp, or a hidden directory)
    needs its parent directories created there; bubblewrap would make them
    root-only, which the sandbox's user could not traverse, so they are made
    explicitly with mode 0755.
    """
    roots = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    made: set[Path] = set()
    args: list[str] = []

    def parents_of(path: Path) -> None:
        inside = [r for r in roots if path != r and path.is_relative_to(r)]
        if not inside:
            return
        root = max(inside, key=lambda r: len(r.parts))
        for rel in reversed(path.relative_to(root).parents):
            if rel != Path(".") and root / rel not in made:
                made.add(root / rel)
                args.extend(["--perms", "0755", "--dir", str(root / rel)])

    for path in sorted({Path(p) for p in policy.hide if Path(p).exists()}, key=lambda p: len(p.parts)):
        parents_of(path)
        args.extend(["--perms", "0755", "--tmpfs", str(path)])
        roots.append(path)
    for path in [Path(p) for p in policy.expose if Path(p).exists()]:
        parents_of(path)
        args.extend(["--ro-bind", str(path), str(path)])
    for path in map(Path, policy.writable):
        parents_of(path)
        args.extend(["--bind", str(path), str(path)])
    return args


def wrap(cmd: list[str], policy: Policy, cwd: str | None = None) -> list[str]:
    """The full command line that runs `cmd` under `policy`."""
    if bwrap_path():
        drop = []
        if _as_root(policy):
            drop = [shutil.which("setpriv") or "setpriv", f"--reuid={policy.uid}", f"--regid={policy.uid}",
                    "--clear-groups", "--"]
        inner = [*bwrap_args(policy, cwd), "--", *drop, *cmd]
    else:
        inner = cmd
    return [sys.executable, "-m", "peftlab.sandbox", policy.to_json(), "--", *inner]


def _apply_limits(policy: Policy, sandboxed: bool) -> None:
    import resource

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
        mine = 0 if _as_root(policy) else _processes_of(os.getuid())
        cap(resource.RLIMIT_NPROC, mine + policy.max_processes)
    if _as_root(policy) and not sandboxed:  # under bubblewrap, setpriv drops privileges after the mounts
        os.setgroups([])
        os.setgid(policy.uid)
        os.setuid(policy.uid)


def _processes_of(uid: int) -> int:
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = next((ln for ln in text.splitlines() if ln.startswith("Uid:")), "")
        count += match.split()[1:2] == [str(uid)]
    return count or 256  # no /proc (macOS): a generous margin


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m peftlab.sandbox POLICY_JSON -- COMMAND...")
    policy = Policy(**json.loads(argv[0]))
    cmd = argv[2:]
    sandboxed = Path(cmd[0]).name == "bwrap"
    _apply_limits(policy, sandboxed)
    if not sandboxed:  # bubblewrap clears the environment itself (--clearenv)
        os.environ.clear()
        os.environ.update(_env(policy))
    os.execvp(cmd[0], cmd)


# ------------------------------------------------------- Jupyter integration
ACTIVE_POLICY: Policy | None = None  # set by the grading worker before nbgrader starts a kernel


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class SandboxKernelManager(AsyncKernelManager):
        """Starts the kernel under ACTIVE_POLICY, talking over Unix sockets in a private directory."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            import tempfile

            self._socket_dir = tempfile.mkdtemp(prefix="peftlab-kernel-")
            self.transport = "ipc"
            self.ip = os.path.join(self._socket_dir, "kernel")
            self.connection_file = os.path.join(self._socket_dir, "connection.json")

        async def _async_interrupt_kernel(self) -> None:
            # A signal would reach bubblewrap, not the kernel inside it: ask the kernel over its
            # control channel to interrupt itself (ipykernel supports interrupt_request).
            assert self.kernel_spec is not None
            self.kernel_spec.interrupt_mode = "message"
            await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            policy = ACTIVE_POLICY or Policy()
            cwd = kw.get("cwd") or os.getcwd()
            policy = Policy(**{**asdict(policy), "writable": [*policy.writable, cwd, self._socket_dir]})
            if policy.uid is not None and os.geteuid() == 0:
                for path in (cwd, self._socket_dir):
                    for root, dirs, files in os.walk(path):
                        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                            os.chown(name, policy.uid, policy.uid)
            kw["env"] = _env(policy)
            return await super()._async_launch_kernel(wrap(kernel_cmd, policy, cwd=cwd), **kw)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._socket_dir, ignore_errors=True)

    return SandboxKernelManager


if __name__ == "__main__":
    main()
