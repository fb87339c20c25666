"""EmbeddedRedis: a real redis-server process, started, restarted and stopped for real."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from chatbot.demo.embedded import (
    SYSTEM_REDIS_PORT,
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_find_redis_server_returns_an_executable() -> None:
    path = find_redis_server()
    assert os.access(path, os.X_OK)


def test_start_answers_on_a_private_port_and_stop_ends_the_process() -> None:
    server = EmbeddedRedis()
    server.start()
    try:
        pid = server.pid
        assert pid is not None and _pid_exists(pid)
        assert server.port != SYSTEM_REDIS_PORT
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.url_for(5) == f"redis://127.0.0.1:{server.port}/5"
        assert server.ping()
        directory = server.directory
        assert directory is not None and Path(directory).is_dir()
        client = redis.Redis.from_url(server.url_for(2))
        assert client.set("k", "v")
        # Nothing is persisted: the server must not write dumps anywhere.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
    finally:
        server.stop()
    assert server.pid is None
    assert not _pid_exists(pid)
    assert not Path(directory).exists()
    assert not server.ping()


def test_restart_keeps_the_port_but_not_the_data(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    server = embedded_redis()
    port, old_pid = server.port, server.pid
    assert old_pid is not None
    client = redis.Redis.from_url(server.url)
    client.set("before", "1")
    server.restart()
    assert server.port == port
    assert server.pid is not None and server.pid != old_pid
    assert not _pid_exists(old_pid)
    # The client reconnects to the same URL; the data is gone like a broker that lost memory.
    assert client.get("before") is None
    client.close()


def test_context_manager_and_extra_config() -> None:
    config = {"client-output-buffer-limit": "pubsub 1mb 512kb 5", "maxclients": "123"}
    with EmbeddedRedis(config=config, databases=4) as server:
        client = redis.Redis.from_url(server.url)
        limits = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        assert "pubsub 1048576 524288 5" in str(limits)
        assert client.config_get("maxclients")["maxclients"] == "123"
        assert client.config_get("databases")["databases"] == "4"
        client.close()
        with pytest.raises(ValueError):
            server.url_for(4)
        pid = server.pid
    assert pid is not None and not _pid_exists(pid)


def test_bad_config_fails_with_the_log_tail() -> None:
    server = EmbeddedRedis(config={"no-such-directive": "1"}, startup_timeout=5)
    with pytest.raises(EmbeddedRedisError) as error:
        server.start()
    assert "no-such-directive" in str(error.value) or "Bad directive" in str(error.value)
    assert server.pid is None
    assert server.directory is None


def test_stop_is_idempotent_and_restart_needs_a_start() -> None:
    server = EmbeddedRedis()
    server.stop()
    with pytest.raises(EmbeddedRedisError):
        server.restart()
    with pytest.raises(EmbeddedRedisError):
        _ = server.url
