"""Run an untrusted Jupyter kernel in a sandbox: bubblewrap plus resource limits.

The grader starts each submission's kernel through `SandboxKernelManager`,
which wraps the kernel command as

    python -m peftlab.grader.sandbox POLICY_JSON -- bwrap ARGS -- python -m ipykernel_launcher -f ...

The first step sets resource limits (address space, CPU seconds, processes,
file size) and, when the grader runs as root, drops to a per-worker user id;
then bubblewrap gives the kernel no network and a new root that holds only the
system folders (/usr, /etc, ...), the Python environment, the course package
and the tiny model, all read-only: no course checkout, no home folder, no
gradebook, no other submission. Its only writable space is one size-limited
tmpfs at /tmp, which also holds its working folder (/tmp/work, with the
assignment's data files bound read-only), and a small /dev/shm. Nothing the
kernel writes lands in a folder the grader reads: the grader never follows a
link the kernel could have made.

The kernel talks to the grader over Unix sockets in a private directory bound
into the sandbox, since it has no network namespace to share.

Where bubblewrap is missing (macOS), only the resource limits apply, the
kernel works in a private copy of its folder, and `warn_unsandboxed` says so
loudly. See grading/README.md for the threat model.

This module is also the kernel's launcher (`python -m peftlab.grader.sandbox`),
started once per submission: it imports nothing heavy at the top. Jupyter's
kernel manager, which only the grader's process needs, is imported in
`kernel_manager_class`.

`policy_for(settings, hide)` decides a kernel's sandbox (what it sees, its
limits, its user id); `use_bubblewrap` whether bubblewrap isolates it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..tiny import cache_root
from .course import GradingError
from .settings import Settings

# Variables a kernel needs; everything else (tokens, keys, proxies) stays outside.
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "PEFTLAB_CACHE", "PYTHONHASHSEED")


@dataclass
class Policy:
    """What one sandboxed kernel may do."""

    hide: list[str] = field(default_factory=list)  # replaced by empty directories (inside exposed ones)
    expose: list[str] = field(default_factory=list)  # bound read-only, besides the system folders
    writable: list[str] = field(default_factory=list)  # bound read-write (the kernel's socket directory)
    memory_bytes: int = Settings.memory_bytes  # RLIMIT_AS per process
    cpu_seconds: int = Settings.wall_timeout  # RLIMIT_CPU per process
    max_processes: int = Settings.max_processes  # RLIMIT_NPROC for the sandbox's user id
    max_file_bytes: int = Settings.max_file_bytes  # RLIMIT_FSIZE
    writable_bytes: int = Settings.writable_bytes  # size of the tmpfs at /tmp, the working folder included
    uid: int | None = None  # user id to run as when the grader is root
    bubblewrap: bool = True  # isolate with bubblewrap when it is installed; False: resource limits only
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


def use_bubblewrap(settings: Settings) -> bool:
    """Whether kernels run under bubblewrap: Settings.sandbox "auto" uses it when installed."""
    if settings.sandbox == "none":
        return False
    if bwrap_path():
        return True
    if settings.sandbox == "bwrap":
        raise GradingError("bubblewrap (bwrap) is required but not installed; apt-get install bubblewrap.")
    warn_unsandboxed()
    return False


def policy_for(settings: Settings, hide: list[str], slot: int = 0) -> Policy:
    """The sandbox of a kernel: the Python environment, the course package and the tiny model, read-only."""
    package = Path(__file__).resolve().parent.parent
    cache = cache_root()
    expose = sorted({sys.prefix, sys.base_prefix, str(package), str(cache)})
    isolated = use_bubblewrap(settings)
    # A separate user id needs the sandbox's view: outside it, Python may live where only root can read.
    uid = settings.uid_base + slot if os.geteuid() == 0 and isolated else None
    if uid is not None and cache.is_dir() and not cache.stat().st_mode & 0o005 == 0o005:
        # The kernels run as another user: an owner-only cache (a 0700 temporary folder, say) would make
        # every model load fail inside them with a PermissionError that reads like the student's fault.
        raise GradingError(f"the model cache {cache} is not readable by the sandboxed kernels' user; "
                           f"make it world-readable (chmod 755 {cache}) or set PEFTLAB_CACHE to another folder")
    return Policy(
        hide=[*hide, "/home", "/root"], expose=expose, memory_bytes=settings.memory_bytes,
        cpu_seconds=settings.wall_timeout, max_processes=settings.max_processes,
        max_file_bytes=settings.max_file_bytes, writable_bytes=settings.writable_bytes,
        uid=uid, bubblewrap=isolated,
        env={"PEFTLAB_CACHE": str(cache)},  # inside, HOME is /tmp: name the model cache the grader built
    )


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
WORKDIR = "/tmp/work"  # the kernel's working folder inside the sandbox
SHM_BYTES = 64 * 2**20


def bwrap_args(policy: Policy, cwd: str | None = None) -> list[str]:
    """bubblewrap's arguments for `policy` (the command follows them).

    The kernel works in WORKDIR, where the regular files of `cwd` (the
    assignment's data files) are bound read-only; `cwd` itself is never
    writable in the sandbox.

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
    args = [bwrap_path() or "bwrap", "--die-with-parent", "--new-session", *unshare]
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev", "--proc", "/proc",
             "--perms", "1777", "--size", str(policy.writable_bytes), "--tmpfs", "/tmp",
             "--symlink", "/tmp", "/var/tmp",
             "--perms", "1777", "--size", str(min(SHM_BYTES, policy.writable_bytes)), "--tmpfs", "/dev/shm",
             "--clearenv"]
    args += _mounts(policy)
    if cwd:
        args += ["--perms", "0777", "--dir", WORKDIR]
        for name in sorted(os.listdir(cwd)):
            src = os.path.join(cwd, name)
            if stat.S_ISREG(os.lstat(src).st_mode) and not name.endswith(".ipynb"):
                args += ["--ro-bind", src, f"{WORKDIR}/{name}"]
    for key, value in _env(policy).items():
        args += ["--setenv", key, value]
    if cwd:
        args += ["--chdir", WORKDIR]
    return args


def _covered(path: Path, mounts: list[tuple[Path, str]]) -> tuple[Path, str]:
    """The deepest mount holding `path` (bubblewrap's new root is a tmpfs)."""
    best = (Path("/"), "tmpfs")
    for mount, kind in mounts:
        if path.is_relative_to(mount) and len(mount.parts) >= len(best[0].parts):
            best = (mount, kind)
    return best


def _mounts(policy: Policy) -> list[str]:
    """Exposed folders read-only and hidden ones as empty tmpfs, parents first, then the writable binds.

    A mount point inside a tmpfs (the new root, /tmp, or a hidden directory)
    needs its parent directories created there; bubblewrap would make some of
    them root-only, which the sandbox's user could not traverse, so they are
    made explicitly with mode 0755.
    """
    mounts: list[tuple[Path, str]] = [(Path(p), "bind") for p in SYSTEM if os.path.isdir(p)]
    mounts += [(Path("/tmp"), "tmpfs"), (Path("/dev/shm"), "tmpfs")]
    made: set[Path] = set()
    args: list[str] = []

    def parents_of(path: Path) -> None:
        for parent in reversed(path.parents):
            mount, kind = _covered(parent, mounts)
            if kind == "tmpfs" and parent != mount and parent not in made:
                made.add(parent)
                args.extend(["--perms", "0755", "--dir", str(parent)])

    wanted = [(Path(p).resolve(), "bind") for p in policy.expose if Path(p).exists()]
    wanted += [(Path(p).resolve(), "tmpfs") for p in policy.hide if Path(p).exists()]
    for path, kind in sorted(wanted, key=lambda w: len(w[0].parts)):
        mount, covering = _covered(path, mounts)
        if kind == "bind" and covering == "bind":
            continue  # already visible, read-only
        if kind == "tmpfs" and covering == "tmpfs" and mount != path:
            continue  # already invisible
        parents_of(path)
        args.extend(["--ro-bind", str(path), str(path)] if kind == "bind" else ["--perms", "0755", "--tmpfs", str(path)])
        mounts.append((path, kind))
    for path in map(Path, policy.writable):
        parents_of(path)
        args.extend(["--bind", str(path), str(path)])
        mounts.append((path, "bind"))
    return args


def wrap(cmd: list[str], policy: Policy, cwd: str | None = None) -> list[str]:
    """The full command line that runs `cmd` under `policy`."""
    if policy.bubblewrap and bwrap_path():
        drop = []
        if _as_root(policy):
            drop = [shutil.which("setpriv") or "setpriv", f"--reuid={policy.uid}", f"--regid={policy.uid}",
                    "--clear-groups", "--"]
        inner = [*bwrap_args(policy, cwd), "--", *drop, *cmd]
    else:
        inner = cmd
    return [sys.executable, "-m", "peftlab.grader.sandbox", policy.to_json(), "--", *inner]


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
        sys.exit("usage: python -m peftlab.grader.sandbox POLICY_JSON -- COMMAND...")
    policy = Policy(**json.loads(argv[0]))
    cmd = argv[2:]
    sandboxed = Path(cmd[0]).name == "bwrap"
    _apply_limits(policy, sandboxed)
    if not sandboxed:  # bubblewrap clears the environment itself (--clearenv)
        os.environ.clear()
        os.environ.update(_env(policy))
    os.execvp(cmd[0], cmd)


# ------------------------------------------------------- Jupyter integration
def private_copy(folder: str, dest: str) -> None:
    """Copy the regular files at the top of `folder` into `dest` as data (links and special files are skipped)."""
    for name in sorted(os.listdir(folder)):
        src = os.path.join(folder, name)
        if stat.S_ISREG(os.lstat(src).st_mode) and not name.endswith(".ipynb"):
            shutil.copyfile(src, os.path.join(dest, name), follow_symlinks=False)


def kernel_manager_class():
    """A Jupyter kernel manager that starts every kernel under the policy in its `policy` config (JSON)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class SandboxKernelManager(AsyncKernelManager):
        """Starts the kernel under `policy`, talking over Unix sockets in a private directory."""

        policy = Unicode("{}", help="the sandbox Policy as JSON").tag(config=True)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._socket_dir = tempfile.mkdtemp(prefix="peftlab-kernel-")
            self._private: str | None = None
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
            policy = Policy(**json.loads(self.policy))
            cwd = kw.get("cwd") or os.getcwd()
            policy = Policy(**{**asdict(policy), "writable": [*policy.writable, self._socket_dir]})
            owned = [self._socket_dir]
            if policy.bubblewrap and bwrap_path():
                kw["cwd"] = self._socket_dir  # bubblewrap's own folder; the kernel's is WORKDIR
            else:
                # No sandbox: the kernel still never writes into a folder the grader reads.
                self._private = tempfile.mkdtemp(prefix="peftlab-kernel-work-")
                private_copy(cwd, self._private)
                owned.append(self._private)
                kw["cwd"] = self._private
            if policy.uid is not None and os.geteuid() == 0:
                for path in owned:  # folders this process just made: nothing in them is a link yet
                    for root, dirs, files in os.walk(path):
                        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                            os.chown(name, policy.uid, policy.uid, follow_symlinks=False)
            kw["env"] = _env(policy)
            return await super()._async_launch_kernel(wrap(kernel_cmd, policy, cwd=cwd), **kw)

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._socket_dir, ignore_errors=True)  # rmtree removes links, never follows them
                if self._private:
                    shutil.rmtree(self._private, ignore_errors=True)

    return SandboxKernelManager


if __name__ == "__main__":
    main()
