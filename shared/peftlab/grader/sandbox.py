"""The sandbox of an untrusted Jupyter kernel: its policy and bubblewrap's command line.

`policy_for(settings, hide)` decides a kernel's sandbox (what it sees, its
limits, its user id); `use_bubblewrap` whether bubblewrap isolates it; `wrap`
turns the kernel's command into

    python -m peftlab.grader.launcher POLICY_JSON -- bwrap ARGS -- python -m ipykernel_launcher -f ...

The launcher (`peftlab.grader.launcher`) sets the resource limits and execs
bubblewrap. Bubblewrap gives the kernel no network, no new user namespaces
and a new root that holds only the system folders (/usr, /lib, ..., and of
/etc only `ETC`), the Python environment, the course package and the tiny
model, all read-only: no course checkout, no home folder, no gradebook, no
other submission. Its only writable space is one size-limited tmpfs at /tmp,
which also holds its working folder (/tmp/work, with the assignment's data
files bound read-only), and a small /dev/shm. Nothing the kernel writes lands
in a folder the grader reads: the grader never follows a link the kernel
could have made.

Where bubblewrap is missing (macOS), only the resource limits apply, the
kernel works in a private copy of its folder (`peftlab.grader.kernel`), and
`warn_unsandboxed` says so loudly. See grading/README.md for the threat model.

The launcher imports this module once per submission: it imports nothing
heavy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..tiny import cache_root
from .course import GradingError
from .settings import Settings

MESSAGE_BYTES = 64 * 2**20  # the largest message a kernel may send the grader

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
    # The kernel's socket folder. As root under bubblewrap the launcher mounts a tmpfs of SOCKET_BYTES over
    # it in a mount namespace of its own: whatever the kernel writes there is bounded and dies with it.
    sockets: str = ""
    # Largest message the grader accepts from the kernel (ZMQ_MAXMSGSIZE on the client's sockets): a bigger
    # one is dropped before the grader's process holds it, so a kernel cannot make the grader swell. ZeroMQ
    # then drops the connection, and the kernel's outputs (its probes' too) stop there: far above anything an
    # honest notebook sends in one message, which the output cap (Settings.max_output_bytes) would drop anyway.
    max_message_bytes: int = MESSAGE_BYTES

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


_HELP: dict[str, str] = {}


def _bwrap_has(option: str) -> bool:
    """Whether this bubblewrap knows `option` (--disable-userns came in 0.8)."""
    path = bwrap_path()
    if not path:
        return False
    if path not in _HELP:
        try:
            _HELP[path] = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            _HELP[path] = ""
    return option in _HELP[path]


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
        uid=uid, bubblewrap=isolated, max_message_bytes=max(MESSAGE_BYTES, 4 * settings.max_output_bytes),
        env={"PEFTLAB_CACHE": str(cache)},  # inside, HOME is /tmp: name the model cache the grader built
    )


def kernel_env(policy: Policy) -> dict[str, str]:
    env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
    threads = str(policy.threads)
    env.update(
        HOME="/tmp", TMPDIR="/tmp", HF_HOME="/tmp/hf", MPLCONFIGDIR="/tmp/mpl", HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONNOUSERSITE="1",
        JUPYTER_PLATFORM_DIRS="1",
    )
    env.update(policy.env)
    return env


def as_root(policy: Policy) -> bool:
    return os.geteuid() == 0 and policy.uid is not None


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc Python and its libraries read: the dynamic linker's cache, time zone, name service files
# (localhost), MIME types, the `alternatives` links of /usr/bin. Not the rest: pip.conf, gitconfig and npmrc
# can hold tokens, and the machine's users, services and configuration are none of a submission's business.
# /etc/passwd and /etc/group are made up for the sandbox (the launcher's `_etc_files`).
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "hosts", "host.conf",
       "nsswitch.conf", "gai.conf", "protocols", "services", "networks", "mime.types", "alternatives",
       "os-release", "debian_version", "locale.alias")
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
    if as_root(policy):
        unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
                   "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        unshare = ["--unshare-all", *(["--disable-userns"] if _bwrap_has("--disable-userns") else [])]
    args = [bwrap_path() or "bwrap", "--die-with-parent", "--new-session", *unshare]
    for path in SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC:
        if os.path.exists(os.path.join("/etc", name)):
            args += ["--ro-bind", os.path.join("/etc", name), os.path.join("/etc", name)]
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
    for key, value in kernel_env(policy).items():
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
        if as_root(policy):
            drop = [shutil.which("setpriv") or "setpriv", f"--reuid={policy.uid}", f"--regid={policy.uid}",
                    "--clear-groups", "--"]
        inner = [*bwrap_args(policy, cwd), "--", *drop, *cmd]
    else:
        inner = cmd
    return [sys.executable, "-m", "peftlab.grader.launcher", policy.to_json(), "--", *inner]


def private_sockets(policy: Policy) -> bool:
    """Whether the launcher puts the kernel's sockets on a tmpfs of their own (root, under bubblewrap)."""
    return bool(policy.sockets) and as_root(policy) and policy.bubblewrap and bwrap_path() is not None
