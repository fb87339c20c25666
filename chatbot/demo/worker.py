"""Launch a real ``celery worker`` subprocess: used by the tests, ``bench/`` and ``demo``.

The worker runs in its own session, so its prefork children form one process group that
:meth:`CeleryWorkerProcess.kill` can end together, and a Ctrl-C in the demo's terminal reaches
the demo (which stops the worker in order) rather than every child at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

__all__ = ["CeleryWorkerProcess", "WorkerStartError"]


class WorkerStartError(RuntimeError):
    """The worker exited or did not answer a ping in time; the message carries its log tail."""


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class CeleryWorkerProcess:
    """One ``python -m celery -A <app_module> worker`` child process.

    ``hostname`` is the node name (``name@host``; a bare ``name`` becomes ``celery@name`` and
    ``%h`` the machine's name, as Celery itself does), and :attr:`hostname` is exactly what the
    worker answers to.
    ``broker_url`` is given to the child as ``CELERY_BROKER_URL`` (which Celery prefers over
    the app's own setting, so an inherited value can never point the worker elsewhere) and as
    ``broker_env`` for app modules that read their own variable.
    """

    def __init__(
        self,
        app_module: str,
        broker_url: str,
        *,
        hostname: str,
        queues: Sequence[str] = ("celery",),
        concurrency: int = 1,
        pool: str = "prefork",
        heartbeat_interval: float = 1.0,
        events: bool = True,
        without_mingle: bool = True,
        without_gossip: bool = False,
        autoscale: tuple[int, int] | None = None,
        loglevel: str = "INFO",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        broker_env: str = "FLEET_BROKER_URL",
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.app_module = app_module
        self.broker_url = broker_url
        # Expanded here exactly as the worker will (%h, %n, %d), so pings find it by name.
        self._hostname = host_format(default_nodename(hostname))
        self.queues = tuple(queues)
        self.concurrency = concurrency
        self.pool = pool
        self.heartbeat_interval = heartbeat_interval
        self._events = events
        self._without_mingle = without_mingle
        self._without_gossip = without_gossip
        self._autoscale = autoscale
        self._loglevel = loglevel
        self._extra_args = tuple(extra_args)
        self._env = dict(env or {})
        self._broker_env = broker_env
        self._cwd = str(cwd) if cwd is not None else None
        self._python = python
        self._owns_log = log_path is None
        if log_path is None:
            fd, generated = tempfile.mkstemp(prefix="celery-worker-", suffix=".log")
            os.close(fd)
            log_path = generated
        self.log_path = Path(log_path)
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- facts -------------------------------------------------------------------------------
    @property
    def hostname(self) -> str:
        return self._hostname

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def command(self) -> list[str]:
        """The argv the worker is started with."""
        argv = [
            self._python, "-m", "celery", "-A", self.app_module, "worker",
            f"--loglevel={self._loglevel}",
            "-n", self._hostname,
            "-Q", ",".join(self.queues),
            "--pool", self.pool,
            "--heartbeat-interval", f"{self.heartbeat_interval:g}",
        ]  # fmt: skip
        if self._autoscale is not None:
            high, low = self._autoscale
            argv += [f"--autoscale={high},{low}"]
        else:
            argv += ["--concurrency", str(self.concurrency)]
        if self._events:
            argv.append("-E")
        if self._without_mingle:
            argv.append("--without-mingle")
        if self._without_gossip:
            argv.append("--without-gossip")
        argv += self._extra_args
        return argv

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> CeleryWorkerProcess:
        with self._lock:
            if self.running:
                return self
            env = dict(os.environ)
            env.update(self._env)
            env["CELERY_BROKER_URL"] = self.broker_url
            if self._broker_env:
                env[self._broker_env] = self.broker_url
            # Unbuffered, so log_text() shows what the worker said up to now.
            env["PYTHONUNBUFFERED"] = "1"
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._cwd,
                    env=env,
                    start_new_session=True,
                )
        return self

    def wait_ready(self, timeout: float = 30.0, ping_timeout: float = 0.5) -> None:
        """Block until the worker answers a control ping addressed to its node name.

        A ping proves the control path works end to end: the "ready" log line comes before
        a Redis worker has subscribed to the broadcast channel, so a command sent right after
        it can be lost.
        """
        if self._process is None:
            raise WorkerStartError(f"{self._hostname}: wait_ready() before start()")
        client = Celery("chatops-worker-probe", broker=self.broker_url, set_as_current=False)
        client.conf.broker_connection_timeout = 2
        client.conf.broker_connection_retry_on_startup = False
        deadline = time.monotonic() + timeout
        last_error = ""
        try:
            while time.monotonic() < deadline:
                code = self._process.poll()
                if code is not None:
                    raise WorkerStartError(
                        f"{self._hostname} exited with {code} before it was ready;"
                        f" log tail:\n{self.log_tail()}"
                    )
                try:
                    replies = client.control.ping(
                        destination=[self._hostname], timeout=ping_timeout
                    )
                except Exception as exc:  # the broker may still be coming up: keep trying
                    last_error = f"{type(exc).__name__}: {exc}"
                    time.sleep(0.2)
                    continue
                if any(self._hostname in reply for reply in replies or ()):
                    return
        finally:
            client.close()
        detail = f" (last error: {last_error})" if last_error else ""
        raise WorkerStartError(
            f"{self._hostname} did not answer a ping within {timeout:g}s{detail};"
            f" log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0, *, graceful: bool = True) -> int | None:
        """Warm shutdown (SIGTERM; SIGQUIT = cold when not ``graceful``), SIGKILL after ``timeout``.

        Returns the exit code, None if it was never started.
        """
        with self._lock:
            process = self._process
            if process is None:
                return None
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM if graceful else signal.SIGQUIT)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait(timeout=timeout)
            # Pool children that outlived their parent (it was killed) die with the group.
            _signal_group(process.pid, signal.SIGKILL)
            return process.returncode

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once: no worker-offline event is sent."""
        with self._lock:
            process = self._process
            if process is None:
                return
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10.0)

    def close(self) -> None:
        """Stop the worker and delete the log file if it was a generated temporary one."""
        self.stop()
        if self._owns_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> CeleryWorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CeleryWorkerProcess {self._hostname} pid={self.pid} running={self.running}>"
