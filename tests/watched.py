"""Run a multi-process command under a watchdog (tests that launch recipes/sft.py, torchrun or vLLM engines).

On a timeout every Python process of the command prints its threads' stacks (faulthandler on SIGABRT) before the
process group is killed, and the test fails with those stacks: a hang in CI says where it hung.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_RECIPE = REPO / "recipes" / "smollm2-135m" / "sft" / "smoke.yaml"


def free_port() -> int:
    """A free local TCP port for torchrun's rendezvous (its --master_port 0 hangs with the static backend)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(root: int) -> list[int]:
    """Process ids under `root` (children before their parents' parents), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found[::-1]


def _tail(text: str, chars: int) -> str:
    return text if len(text) <= chars else "..." + text[-chars:]


def run_watched(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)`, failing the test with every process's stacks when
    it runs longer than `timeout` seconds."""
    env = {**env, "PYTHONFAULTHANDLER": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [*descendants(proc.pid), proc.pid]:
                try:
                    os.kill(pid, signal.SIGABRT)  # faulthandler: all threads' stacks to stderr
                except ProcessLookupError:
                    pass
            time.sleep(5)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            out.seek(0)
            err.seek(0)
            pytest.fail(f"timed out after {timeout:.0f}s: {' '.join(cmd)}\n--- stdout (tail)\n{_tail(out.read(), 3000)}"
                        f"\n--- stderr with every process's stacks (tail)\n{_tail(err.read(), 20000)}")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


def run_sft(out: Path, *args: str, data_dir: Path, processes: int = 1, threads: int | None = 1,
            timeout: float = 900) -> Path:
    """Run recipes/sft.py on the SmolLM2 smoke recipe with `args` overriding it, writing to `out`; fail the test
    with the run's stderr if it fails. Two or more processes run under torchrun (a real world size, gloo);
    `threads` sets OMP_NUM_THREADS per process (None: torch's default)."""
    launch = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(free_port())]
    cmd = [*launch, str(REPO / "recipes" / "sft.py"), "--config", str(SMOKE_RECIPE), "--output_dir", str(out), *args]
    env = {**os.environ, "ERC_LLM_DATA_DIR": str(data_dir), "ACCELERATE_USE_CPU": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = run_watched(cmd, cwd=REPO, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return out
