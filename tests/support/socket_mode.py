"""A loopback stand-in for Slack's Socket Mode WebSocket service.

It behaves as Slack does toward slack_sdk's builtin ``SocketModeClient`` (the default client of
``slack_bolt.adapter.socket_mode.SocketModeHandler``): the client gets a ``ws://`` URL from
``apps.connections.open``, connects, receives ``hello``, gets envelopes and answers each with an
ack ``{"envelope_id": ..., "payload": ...}``. Pings from the client are answered with pongs
(the client drops a connection it considers stale), and the server pings too, as Slack does.

Wiring in a test::

    with MockSocketModeServer() as sm, MockSlackAPI(socket_mode=sm) as api:
        app = App(token="xoxb-test", client=WebClient(token="xoxb-test", base_url=api.url))
        handler = SocketModeHandler(app, "xapp-1-test")
        handler.connect()                   # apps.connections.open -> sm.connection_url()
        sm.wait_connected()
        eid = sm.send_envelope("slash_commands", slash_command_fields(...))
        ack = sm.wait_for_ack(eid)          # {"envelope_id": eid, "payload": {...}}
        handler.close()                     # before the servers stop, or the client reconnects

The builtin client parses frames recursively per ``receive_buffer_size`` chunk, so keep
envelopes well below a few hundred kilobytes.
"""

from __future__ import annotations

import json
import threading
import uuid
from types import TracebackType
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve

from tests.support.slack_payloads import APP_ID

__all__ = ["MockSocketModeServer"]

# Slack marks these envelopes as able to carry a response in the ack.
_RESPONSE_PAYLOAD_INTERACTIVE = frozenset({"view_submission", "block_suggestion"})


class MockSocketModeServer:
    """Socket Mode over a real WebSocket on 127.0.0.1."""

    def __init__(self, *, app_id: str = APP_ID) -> None:
        self._app_id = app_id
        self._cond = threading.Condition()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._open: list[ServerConnection] = []
        self._connects = 0
        self._tickets: list[str] = []
        self._acks: dict[str, dict[str, Any]] = {}
        self._received: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MockSocketModeServer:
        if self._server is not None:
            return self
        # No compression: slack_sdk's builtin client does not implement permessage-deflate.
        # A short close_timeout keeps stop() quick; the builtin client never answers a close
        # frame, it just drops the socket.
        server = serve(self._handle, "127.0.0.1", 0, compression=None, close_timeout=1)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"MockSocketMode:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> MockSocketModeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MockSocketModeServer is not started")
        return int(self._server.socket.getsockname()[1])

    @property
    def url(self) -> str:
        """A ticket-less URL, for setting ``SocketModeClient.wss_uri`` directly."""
        return f"ws://127.0.0.1:{self.port}/link/"

    def connection_url(self) -> str:
        """A fresh URL as ``apps.connections.open`` returns it (one ticket per call)."""
        ticket = str(uuid.uuid4())
        with self._cond:
            self._tickets.append(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={self._app_id}"

    # ------------------------------------------------------------------ observing

    @property
    def total_connections(self) -> int:
        """Connections accepted since start (a reconnect adds one)."""
        with self._cond:
            return self._connects

    def wait_connected(self, timeout: float = 10.0, *, total: int = 1) -> None:
        """Block until a client is connected and at least ``total`` connections were made."""
        with self._cond:
            ok = self._cond.wait_for(lambda: bool(self._open) and self._connects >= total, timeout)
            if not ok:
                raise AssertionError(
                    f"no Socket Mode connection within {timeout}s "
                    f"(open: {len(self._open)}, accepted so far: {self._connects})"
                )

    def acks(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._acks.values())

    def received(self) -> list[Any]:
        """Every text message a client sent (acks included), decoded when JSON."""
        with self._cond:
            return list(self._received)

    def wait_for_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The client's ack for ``envelope_id``, with its ``payload`` if it sent one."""
        with self._cond:
            ok = self._cond.wait_for(lambda: envelope_id in self._acks, timeout)
            if not ok:
                raise AssertionError(
                    f"no ack for envelope {envelope_id} within {timeout}s; "
                    f"acked so far: {list(self._acks)}"
                )
            return self._acks[envelope_id]

    # ------------------------------------------------------------------ sending

    def send_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        envelope_id: str | None = None,
        timeout: float = 10.0,
    ) -> str:
        """Deliver an envelope (``slash_commands``, ``interactive``, ``events_api``).

        ``accepts_response_payload`` defaults to what Slack sets for the type. Returns the
        envelope id to pass to :meth:`wait_for_ack`.
        """
        eid = envelope_id if envelope_id is not None else str(uuid.uuid4())
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive" and payload.get("type") in _RESPONSE_PAYLOAD_INTERACTIVE
            )
        envelope: dict[str, Any] = {
            "envelope_id": eid,
            "payload": payload,
            "type": type,
            "accepts_response_payload": accepts_response_payload,
        }
        if type == "events_api":
            # Slack always includes the retry fields on Events API envelopes.
            envelope["retry_attempt"] = 0 if retry_attempt is None else retry_attempt
            envelope["retry_reason"] = "" if retry_reason is None else retry_reason
        elif retry_attempt is not None or retry_reason is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        self._send(json.dumps(envelope), timeout)
        return eid

    def send_disconnect(self, reason: str = "refresh_requested", timeout: float = 10.0) -> None:
        """Ask the client to reconnect, as Slack does before it recycles a connection."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-mock"}}
        self._send(json.dumps(message), timeout)

    def _send(self, text: str, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._open), timeout):
                raise AssertionError(f"no Socket Mode client connected within {timeout}s")
            # Slack delivers to any one open connection; the newest is the one most likely alive.
            conn = self._open[-1]
        conn.send(text)

    # ------------------------------------------------------------------ connection handler

    def _hello(self, num_connections: int) -> str:
        return json.dumps(
            {
                "type": "hello",
                "num_connections": num_connections,
                "debug_info": {
                    "host": "applink-mock",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self._app_id},
            }
        )

    def _handle(self, conn: ServerConnection) -> None:
        with self._cond:
            count = len(self._open) + 1
        try:
            conn.send(self._hello(count))
        except ConnectionClosed:
            return
        # Registered only after hello, so wait_connected() means "the client got hello".
        with self._cond:
            self._open.append(conn)
            self._connects += 1
            self._cond.notify_all()
        try:
            for message in conn:
                self._record(message)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                if conn in self._open:
                    self._open.remove(conn)
                self._cond.notify_all()

    def _record(self, message: str | bytes) -> None:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        with self._cond:
            self._received.append(data)
            if isinstance(data, dict) and isinstance(data.get("envelope_id"), str):
                self._acks[data["envelope_id"]] = data
            self._cond.notify_all()
