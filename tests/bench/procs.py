"""Server processes for `make bench`: start, wait until ready, read CPU time, stop.

Every server under test runs in its own process, so the load generator and the bench
itself never share its interpreter. CPU time comes from /proc (utime + stime of all
the process's threads), so no extra package is needed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

from clients.health import HealthClient
from core.errors import DomainError

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")


class StartFailedError(RuntimeError):
    """A server did not come up; the message carries the end of its stderr."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5)


def postgres_cpu_seconds() -> float:
    """CPU seconds of every `postgres` process visible here, exited backends included.

    The postmaster's reaped children (cutime + cstime) keep the CPU of backends that
    ended in between. Counts other clients of the same PostgreSQL too: a rough figure
    for comparing two sides measured alike.
    """
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name == "postgres":
            fields = rest.split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICK


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot report the one they bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_env(**extra: str) -> dict[str, str]:
    """This environment without MESH_* settings or asyncio debug, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESH_") and k != "PYTHONASYNCIODEBUG"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "generated")])
    return env | extra


class Server:
    """One server process. `start()` returns once it accepts calls; `stop()` ends it."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.label = label
        self.argv = argv
        self.env = env
        self.log_path = logs / f"{label.replace(' ', '-')}.stderr"
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    async def start_reporting_port(self, timeout: float = 60.0) -> None:
        """For our own scripts: they bind port 0 and print `PORT <n>` once serving."""
        process = await self._spawn(stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = (await process.stdout.readline()).decode()
        except TimeoutError:
            line = ""
        if not line.startswith("PORT "):
            await self.stop()
            raise StartFailedError(self._failure("printed no port"))
        self.port = int(line.split()[1])

    async def start_on_free_port(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """For `mesh serve`: pick a free port, pass it, wait for health SERVING."""
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            process = await self._spawn(argv=[*self.argv, "--address", self.address])
            if await self._serving(process, timeout):
                return
            await self.stop()
            if attempt == attempts or process.returncode is None:
                raise StartFailedError(self._failure("never reported SERVING"))
            # It exited: most likely someone took the port between our probe and its bind.

    async def stop(self, timeout: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()

    def stderr_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def complaints(self) -> list[str]:
        """Lines of stderr at level error, or not from our JSON logger (tracebacks)."""
        return [
            line
            for line in self.stderr_lines()
            if not line.startswith("{") or '"level": "error"' in line or '"critical"' in line
        ]

    async def _spawn(
        self, *, argv: list[str] | None = None, stdout: int | None = asyncio.subprocess.DEVNULL
    ) -> asyncio.subprocess.Process:
        with self.log_path.open("ab") as stderr:  # a restart keeps what the last run logged
            self._process = await asyncio.create_subprocess_exec(
                *(argv or self.argv), env=self.env, cwd=REPO, stdout=stdout, stderr=stderr
            )
        return self._process

    async def _serving(self, process: asyncio.subprocess.Process, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with HealthClient(self.address) as health:
            while time.monotonic() < deadline and process.returncode is None:
                try:
                    if await health.check("", timeout=1.0) == "SERVING":
                        return True
                except DomainError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)
        return False

    def _failure(self, what: str) -> str:
        tail = "\n".join(self.stderr_lines()[-30:])
        return f"{self.label} ({' '.join(self.argv)}) {what}; its stderr ends with:\n{tail}"


def script(name: str, *args: str) -> list[str]:
    """argv running tests/bench/<name> with this interpreter."""
    return [sys.executable, str(BENCH / name), *args]
