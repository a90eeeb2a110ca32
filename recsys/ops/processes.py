"""Process trees: list, stop and kill a server with all its descendants.

BentoML starts its workers in sessions of their own, so signalling the server's process group
misses them: the tree is listed first (psutil checks a PID was not reused), then each process
is signalled and waited for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


def start_logged(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a server in a session (and process group) of its own, output to `log_path`.

    Its own group lets stop_tree signal it and its children at once; no standard input, so it
    never waits on the terminal.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def process_tree(pid: int) -> list[psutil.Process]:
    """The process `pid` followed by all its descendants; [] when it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(pid: int, timeout: float = 15.0, tree: list[psutil.Process] | None = None) -> None:
    """SIGTERM a process group leader and every descendant, SIGKILL what is left after `timeout`.

    Args:
        pid: the root process (started with `start_new_session=True`, so it leads a group).
        timeout: seconds the tree gets to exit after SIGTERM.
        tree: the processes to stop, when listed earlier (before the root could have exited).
    """
    tree = process_tree(pid) if tree is None else tree
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    kill_processes(alive)


def kill_tree(pid: int, tree: list[psutil.Process] | None = None) -> None:
    """SIGKILL a process group leader and every descendant, as a crashed pod; waits for them."""
    tree = process_tree(pid) if tree is None else tree
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    kill_processes(tree)


def kill_processes(processes: list[psutil.Process], timeout: float = 10.0) -> list[int]:
    """SIGKILL the processes still running; returns the PIDs that had to be killed."""
    killed = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():
                process.kill()
                killed.append(process.pid)
    psutil.wait_procs(processes, timeout=timeout)
    return killed
