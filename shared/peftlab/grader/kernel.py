"""The sandboxed kernel on the grader's side: the Jupyter kernel manager that starts it, and its output.

`kernel_manager_class()` gives nbclient a kernel manager that starts every
kernel through the launcher (`sandbox.wrap`). The kernel talks to the grader
over Unix sockets in a private directory bound into the sandbox, since it has
no network namespace to share. As root, the launcher mounts a 1 MiB tmpfs over
that directory in a mount namespace of its own, and the grader connects
through /proc/PID/root. Its stdout and stderr are a pipe the grader drains
(`KernelOutput`), never a file of the grader's. Without bubblewrap the kernel
works in a private copy of its folder (`private_copy`).

Jupyter's kernel manager is imported in `kernel_manager_class`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import asdict

from .sandbox import Policy, bwrap_path, kernel_env, private_sockets, wrap
from .uids import kernels_dir


def private_copy(folder: str, dest: str) -> None:
    """Copy the regular files at the top of `folder` into `dest` as data (links and special files are skipped)."""
    for name in sorted(os.listdir(folder)):
        src = os.path.join(folder, name)
        if stat.S_ISREG(os.lstat(src).st_mode) and not name.endswith(".ipynb"):
            shutil.copyfile(src, os.path.join(dest, name), follow_symlinks=False)


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
            kw["env"] = kernel_env(policy)
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
