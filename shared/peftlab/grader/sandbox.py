"""Run an untrusted Jupyter kernel in a sandbox: bubblewrap plus resource limits.

The grader starts each submission's kernel through `SandboxKernelManager`,
which wraps the kernel command as

    python -m peftlab.grader.sandbox POLICY_JSON -- bwrap ARGS -- python -m ipykernel_launcher -f ...

The first step (the launcher) makes itself die with the grader's worker
(PR_SET_PDEATHSIG, kept across the exec of bubblewrap), closes every
descriptor but 0, 1 and 2, and sets resource limits (address space, CPU
seconds, processes, file size); when the grader runs as root the kernel later
drops to a per-worker user id, which a batch locks (`claim_uids`). Then
bubblewrap gives the kernel no network, no new user namespaces (a seccomp
filter, `seccomp_no_userns`) and a new root that holds only the system
folders (/usr, /lib, ..., and of /etc only `ETC`), the Python environment, the
course package and the tiny model, all read-only: no course checkout, no home
folder, no gradebook, no other submission. Its only writable space is one
size-limited tmpfs at /tmp, which also holds its working folder (/tmp/work,
with the assignment's data files bound read-only), and a small /dev/shm.
Nothing the kernel writes lands in a folder the grader reads: the grader never
follows a link the kernel could have made.

The kernel talks to the grader over Unix sockets in a private directory bound
into the sandbox, since it has no network namespace to share. As root, the
launcher mounts a 1 MiB tmpfs over that directory in a mount namespace of its
own, and the grader connects through /proc/PID/root. Its stdout and stderr are
a pipe the grader drains (`KernelOutput`), never a file of the grader's.

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
import subprocess
import sys
import tempfile
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


def die_with_parent(parent: int | None = None) -> None:
    """Linux: this process gets SIGKILL when its parent dies (PR_SET_PDEATHSIG).

    The signal survives exec (of anything but a set-user-id program), so a launcher that calls this and
    then execs bubblewrap makes bubblewrap die with the grader's worker. With `parent`, the pid the caller
    was started by: if that one already died before the call (too late for the signal), exit at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if parent is not None and os.getppid() != parent:
            os._exit(1)


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


SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What of /etc Python and its libraries read: the dynamic linker's cache, time zone, name service files
# (localhost), MIME types, the `alternatives` links of /usr/bin. Not the rest: pip.conf, gitconfig and npmrc
# can hold tokens, and the machine's users, services and configuration are none of a submission's business.
# /etc/passwd and /etc/group are made up for the sandbox (`_etc_files`).
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "hosts", "host.conf",
       "nsswitch.conf", "gai.conf", "protocols", "services", "networks", "mime.types", "alternatives",
       "os-release", "debian_version", "locale.alias")
WORKDIR = "/tmp/work"  # the kernel's working folder inside the sandbox
SHM_BYTES = 64 * 2**20
SOCKET_BYTES = 1 * 2**20  # the kernel's socket folder: sockets take no space, the connection file 300 bytes
SOCKET_INODES = 64
RUN_DIR = "/run/peftlab-grader"  # root's: uid locks and kernels' socket folders (short paths, nobody else's)


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


def _processes_of(uid: int, none: int = 256, zombies: bool = True) -> int:
    """Processes of `uid` (which RLIMIT_NPROC counts, zombies included); `none` where /proc cannot tell."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = next((ln for ln in text.splitlines() if ln.startswith("Uid:")), "")
        count += match.split()[1:2] == [str(uid)] and (zombies or "\nState:\tZ" not in text)
    return count if os.path.isdir("/proc/self") else none  # no /proc (macOS): a generous margin


# ------------------------------------------------------- the launcher's own steps (root, before bubblewrap)
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
    uid = policy.uid if _as_root(policy) else os.getuid()
    gid = policy.uid if _as_root(policy) else os.getgid()
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


def private_sockets(policy: Policy) -> bool:
    """Whether the launcher puts the kernel's sockets on a tmpfs of their own (root, under bubblewrap)."""
    return bool(policy.sockets) and _as_root(policy) and policy.bubblewrap and bwrap_path() is not None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m peftlab.grader.sandbox POLICY_JSON -- COMMAND...")
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
                print(f"peftlab.grader.sandbox: no private tmpfs for the kernel's sockets ({exc}); its socket "
                      "folder is bounded by the file size limit only", file=sys.stderr, flush=True)
        end = cmd.index("--")  # bubblewrap's options end there; the kernel's command follows
        cmd = [*cmd[:end], *_bwrap_extras(policy), *cmd[end:]]
    else:  # bubblewrap clears the environment itself (--clearenv)
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


def kernels_dir(uid: int | None) -> str:
    """Where the socket folders of `uid`'s kernels go: a folder of root's, emptied when a job ends and when
    a batch claims the id (`claim_uids`); the system's temporary folder for a grader that is not root."""
    if uid is None or os.geteuid() != 0:
        return tempfile.gettempdir()
    folder = os.path.join(RUN_DIR if os.path.isdir(os.path.dirname(RUN_DIR)) else tempfile.gettempdir(),
                          f"kernels-{uid}")
    _own_dir(os.path.dirname(folder))
    _own_dir(folder)
    return folder


def _own_dir(path: str) -> None:
    """`path` as a folder of this user's that nobody else can write, never through a link."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise GradingError(f"{path} is not a folder of the grader's own that only it can write; remove it")


def remove_kernel_folders(uid: int | None) -> None:
    """Remove what `uid`'s kernels left in their socket folders (only ever the grader's connection files:
    what they wrote went to a tmpfs that died with them)."""
    if uid is not None and os.geteuid() == 0:
        shutil.rmtree(kernels_dir(uid), ignore_errors=True)  # rmtree removes links, never follows them


class UidClaim:
    """The user ids [base, base + count) that this batch's kernels run as, held with one lock per id.

    Two batches on one machine with the same ids would share the per-user process limit and each other's
    leftovers ("Kernel died before replying to kernel_info", a GradingError on the solution's run). The
    locks are `flock`s on files in RUN_DIR, which the kernel drops when the process ends, kill -9 included.
    `release()` gives them back."""

    def __init__(self, base: int, count: int, fds: list[int]):
        self.base, self.count, self._fds = base, count, fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def _lock_uid(uid: int) -> tuple[int | None, str]:
    """(descriptor holding `uid`'s lock, '') or (None, who holds it)."""
    import fcntl

    _own_dir(RUN_DIR)
    path = os.path.join(RUN_DIR, f"uid-{uid}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, f"user id {uid} is held by the batch of process {holder} ({path})"
    busy = _processes_of(uid, none=0, zombies=False)
    if busy:
        os.close(fd)
        return None, (f"user id {uid} still runs {busy} process(es): a kernel left by a batch that was killed "
                      "before this grader stopped them, or a user of that id")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""


def claim_uids(base: int, count: int, tries: int = 64, log=print) -> UidClaim:
    """Lock `count` user ids from `base` for this batch; if another batch holds one of them (or a process of
    one still runs), move up by `count` ids, up to `tries` times, saying so. Stale socket folders of the
    ids claimed are removed: nobody else uses them now."""
    reasons = []
    for attempt in range(tries):
        start, fds = base + attempt * count, []
        for uid in range(start, start + count):
            fd, why = _lock_uid(uid)
            if fd is None:
                reasons.append(why)
                break
            fds.append(fd)
        if len(fds) == count:
            if attempt:
                log(f"user ids {base}-{base + count - 1} are in use ({reasons[0]}); this batch's kernels run as "
                    f"{start}-{start + count - 1} instead (--uid-base {start} to choose)")
            for uid in range(start, start + count):
                remove_kernel_folders(uid)
            return UidClaim(start, count, fds)
        for fd in fds:
            os.close(fd)
    raise GradingError(f"no free range of {count} user ids from {base} to {base + tries * count - 1}: "
                       f"{reasons[0]}; another batch is grading on this machine. Wait for it, or give this one "
                       "ids nobody uses: --uid-base N (or PEFTLAB_GRADER_UID_BASE=N)")


class KernelOutput:
    """The kernel's stdout and stderr: its own pipe, drained by a thread that keeps only the last `keep` bytes.

    The kernel never gets a descriptor of the grader's (once it was the worker's log, which a kernel
    filled with 192 MiB); what it prints outside Jupyter's messages is kept for the worker's log."""

    def __init__(self, keep: int = 16 * 1024):
        import threading

        self.keep, self.tail, self.total = keep, b"", 0
        self.read_end, self.write_end = os.pipe()
        self._thread = threading.Thread(target=self._drain, name="kernel-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            self.tail = (self.tail + chunk)[-self.keep:]
        os.close(self.read_end)

    def launched(self) -> None:
        """The kernel holds the write end now: drop ours, so the pipe ends when the kernel does."""
        os.close(self.write_end)

    def report(self, timeout: float = 2.0) -> str:
        self._thread.join(timeout)
        if not self.total:
            return ""
        text = self.tail.decode("utf-8", errors="replace")
        return f"--- the kernel's own output: {self.total:,} bytes, the last {len(self.tail):,} ---\n{text}\n"


def kernel_manager_class():
    """A Jupyter kernel manager that starts every kernel under the policy in its `policy` config (JSON)."""
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class SandboxKernelManager(AsyncKernelManager):
        """Starts the kernel under `policy`, talking over Unix sockets in a private directory."""

        policy = Unicode("{}", help="the sandbox Policy as JSON").tag(config=True)

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            uid = Policy(**json.loads(self.policy)).uid
            self._socket_dir = tempfile.mkdtemp(prefix="peftlab-kernel-", dir=kernels_dir(uid))
            self._private: str | None = None
            self._output: KernelOutput | None = None
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
            policy = Policy(**{**asdict(policy), "writable": [*policy.writable, self._socket_dir],
                               "sockets": self._socket_dir})
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
            self._output = KernelOutput()
            kw["stdin"] = subprocess.DEVNULL
            kw["stdout"] = kw["stderr"] = self._output.write_end
            try:
                result = await super()._async_launch_kernel(wrap(kernel_cmd, policy, cwd=cwd), **kw)
            finally:
                self._output.launched()
            if private_sockets(policy):
                # The sockets live on the launcher's private tmpfs: reach them through its root. The kernel
                # read its own path from the connection file already; only this side's path changes.
                self.ip = f"/proc/{self.provisioner.pid}/root{self._socket_dir}/kernel"
            return result

        def client(self, **kwargs):
            kc = super().client(**kwargs)
            # Set before the channels open their sockets: a bigger message is dropped by ZeroMQ.
            kc.context.setsockopt(zmq.MAXMSGSIZE, Policy(**json.loads(self.policy)).max_message_bytes)
            return kc

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            process = getattr(self.provisioner, "process", None)
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self._socket_dir, ignore_errors=True)  # rmtree removes links, never follows them
                if self._private:
                    shutil.rmtree(self._private, ignore_errors=True)
                code = process.poll() if process is not None else None
                if self._output is not None and code not in (None, 0, -signal.SIGKILL, -signal.SIGTERM):
                    # It died on its own (a crash, os._exit): what it printed may say why. Stopped by the
                    # grader, its output is ipykernel's banner and the student's own, of no use here.
                    sys.stderr.write(f"the kernel exited with code {code}\n" + self._output.report())

    return SandboxKernelManager


if __name__ == "__main__":
    main()
