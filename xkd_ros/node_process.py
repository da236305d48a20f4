"""`segment_node` as a child process, for the live bag replay and the demo: started, watched, always stopped.

The node runs as its console script would (`segment_node --ros-args --params-file ...`, i.e.
`xkd_ros.segment_node.main`), with stdout and stderr in a log file. It is stopped with SIGINT (the
node's clean shutdown), then SIGTERM, then SIGKILL, each after a timeout. On Linux the child first
asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`, set in the child by
`python -m xkd_ros.node_process`, not in a `preexec_fn`, which is unsafe once DDS threads exist),
so a crashed or killed evaluation never leaves a node running. The kernel sends it when the
*thread* that started the child ends: start `NodeProcess` from the main thread.

The parameter overrides of a run are written as a second params file next to the log (later
params files win in rcl), so the exact parameters of every run stay on disk and the in-process
replay can hand the very same arguments to `SegmentNode`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from xkd_core.config import unflatten

NODE_NAME = "segment_node"
_PR_SET_PDEATHSIG = 1


def write_overrides(path: str | Path, params: dict[str, Any], node_name: str = NODE_NAME) -> Path:
    """A params file for `/<node_name>` holding `params` (dotted names become nested keys)."""
    tree = unflatten(params)
    path = Path(path)
    path.write_text(yaml.safe_dump({f"/{node_name}": {"ros__parameters": tree}}, sort_keys=True))
    return path


def ros_args(params_files: list[Path]) -> list[str]:
    """`--ros-args --params-file A --params-file B ...` (later files override earlier ones)."""
    args = ["--ros-args"]
    for p in params_files:
        args += ["--params-file", str(p)]
    return args


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def _child_main(argv: list[str]) -> int:
    """`python -m xkd_ros.node_process PARENT_PID ARGS...`: run segment_node, dying with the parent."""
    _die_with_parent(int(argv[0]))
    from xkd_ros.segment_node import main

    return main([NODE_NAME, *argv[1:]])


class NodeProcess:
    """One `segment_node` child process with its output in `log_path` (see the module docstring)."""

    def __init__(self, params_files: list[Path], log_path: str | Path,
                 env: dict[str, str] | None = None, extra_ros_args: list[str] | None = None) -> None:
        """`extra_ros_args` follow the params files inside `--ros-args`, e.g. `["-r", "__node:=name"]`."""
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "xkd_ros.node_process", str(os.getpid()), *ros_args(params_files),
               *(extra_ros_args or [])]
        self.command = cmd
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ if env is None else env))
        atexit.register(self.stop)

    def alive(self) -> bool:
        """True while the child runs."""
        return self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The child's process id (for resource sampling)."""
        return self.proc.pid

    def log_text(self) -> str:
        """The node's whole log so far."""
        if not self._log.closed:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's log, for error messages."""
        return self.log_text()[-chars:]

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `ready()` until true; RuntimeError (with the node's log) if the node exits or times out."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            if not self.alive():
                raise RuntimeError(f"segment_node exited with code {self.proc.returncode} before {what}; "
                                   f"its log ({self.log_path}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"segment_node did not get to {what} within {timeout_s:.0f} s; "
                                   f"its log ({self.log_path}):\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, sigint_timeout_s: float = 15.0, term_timeout_s: float = 5.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit code (idempotent)."""
        if self.alive():
            for sig, timeout in ((signal.SIGINT, sigint_timeout_s), (signal.SIGTERM, term_timeout_s)):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        atexit.unregister(self.stop)
        return self.proc.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
