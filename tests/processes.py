"""Helpers for tests that run ``bftd`` node processes on 127.0.0.1."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from benchmarks.throughput import free_base_port

#: Largest metrics response read.
MAX_METRICS_RESPONSE = 1024 * 1024


def bftd_argv() -> list[str]:
    """The installed ``bftd`` console script (the CLI users run), else the module."""
    script = shutil.which("bftd", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "bftdeliberate.cli"]


def free_port_range(count: int) -> int:
    """A base port such that base..base+count-1 are free on 127.0.0.1 now, below the
    ephemeral range (the benchmark's helper)."""
    return free_base_port(count)


@dataclass
class Node:
    """One ``bftd node run`` process."""

    member: int
    keystore: Path
    metrics_port: int
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    #: Extra environment variables of the process (e.g. a failpoint).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.keystore / f"node-{self.member}.out"

    def start(self) -> None:
        argv = [*bftd_argv(), "node", "run", "--id", str(self.member),
                "--committee", str(self.keystore / "committee.json"),
                "--key", str(self.keystore / f"agent-{self.member}.key"),
                "--data", str(self.keystore / f"data-{self.member}"),
                "--metrics-port", str(self.metrics_port), *self.extra]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env})

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return None
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


async def scrape(port: int) -> dict[str, float] | None:
    """``GET /metrics`` on 127.0.0.1:port as {sample name with labels: value}; None if down."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return None
    async with stream:
        return await read_metrics(stream)


async def read_metrics(stream: trio.abc.Stream) -> dict[str, float] | None:
    """Send ``GET /metrics`` on an open stream and parse the answer as {sample name with
    labels: value}; None if the peer went away."""
    try:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while len(data) < MAX_METRICS_RESPONSE:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    except (trio.BrokenResourceError, OSError):
        return None
    _head, _, body = data.partition(b"\r\n\r\n")
    samples: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, member: int) -> float | None:
    return samples.get(f'{name}{{member="{member}"}}')


def state_digest(samples: dict[str, float], member: int) -> str | None:
    """The ``digest`` label of ``bftd_state_digest_info`` for ``member``."""
    for key in samples:
        if key.startswith("bftd_state_digest_info{") and f'member="{member}"' in key:
            match = re.search(r'digest="([0-9a-f]+)"', key)
            return match.group(1) if match else None
    return None
