"""
One ``pi --mode rpc`` process, driven over its stdin/stdout JSONL protocol.

pi's framing (docs/rpc.md, "Framing"): records are separated by LF only, a
trailing CR is stripped, and U+2028/U+2029 may appear inside JSON strings, so
lines are split as bytes and decoded whole.  Single lines can be many MB (a
``message_end`` or ``agent_end`` carries whole messages, tool output included),
so a partial line is kept as a list of chunks and joined once when its newline
arrives.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import attr
from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from piserver.common.errors import AgentCommandFailed, AgentExited, AgentTimeout
from piserver.common.outcome import SharedOutcome

log = Logger()

DEFAULT_COMMAND_TIMEOUT = 30.0
# Far above any real event; only a runaway agent writes a line this long.
DEFAULT_MAX_LINE_BYTES = 256 * 1024 * 1024
# Bytes that may wait for an agent that does not read its stdin (a stopped or deadlocked
# one); room for one prompt as large as a WebSocket frame may be, and more.
DEFAULT_MAX_STDIN_BYTES = 32 * 1024 * 1024
# An agent silent this long while a command waits or a run goes on is asked for its state;
# one that does not answer within PROBE_TIMEOUT is hung.
DEFAULT_PROBE_INTERVAL = 30.0
PROBE_TIMEOUT = 10.0
STDERR_TAIL_BYTES = 8 * 1024
STDERR_LOG_LINE_BYTES = 1000
STDERR_LOG_LINES_PER_SECOND = 20
GARBAGE_LOG_CHARS = 200

EventCallback = Callable[[dict, bytes], Any]


@attr.frozen
class AgentExit:
    """How an agent process ended.

    ``code`` is the exit status (None when killed by a signal), ``signal`` the
    signal number (None when it exited by itself), ``stderr_tail`` the last
    few KiB it wrote to stderr, ``stop_requested`` whether the supervisor had
    asked it to stop (an exit without that is a crash).
    """

    code: int | None
    signal: int | None
    stderr_tail: str
    stop_requested: bool = False

    def describe(self) -> str:
        if self.signal is not None:
            return f"agent exited (signal {self.signal})"
        return f"agent exited (code {self.code})"


class LineSplitter:
    """Split a byte stream into LF-terminated lines, as pi's docs require.

    ``feed`` returns ``(line, cut)`` pairs: ``line`` without its LF (and
    without one trailing CR), holding at most ``max_line_bytes`` bytes, and
    ``cut`` the number of bytes dropped beyond that cap (0 for a whole line).
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._max_line_bytes = max_line_bytes
        self._chunks: list[bytes] = []
        self._kept = 0
        self._cut = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        # Split in C (pi writes a line per event: a chunk holds many); only the first
        # piece can continue a pending line, only the last can be one.
        *whole, rest = data.split(b"\n")
        lines = []
        if whole:
            first = whole[0]
            if self._chunks or self._cut:
                self._keep(first)
                lines.append(self._take_line())
            else:
                lines.append(self._whole(first))
            lines += map(self._whole, whole[1:])
        self._keep(rest)
        return lines

    def flush(self) -> list[tuple[bytes, int]]:
        """End of stream: a last line without LF still counts (as in pi's reader)."""
        if self._kept or self._cut:
            return [self._take_line()]
        return []

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        room = len(piece)
        if self._max_line_bytes is not None:
            room = min(room, self._max_line_bytes - self._kept)
        if room < len(piece):
            self._cut += len(piece) - room
            piece = piece[:room]
        if piece:
            self._chunks.append(piece)
            self._kept += len(piece)

    def _whole(self, line: bytes) -> tuple[bytes, int]:
        """A line that came whole in one chunk, nothing pending before it."""
        limit = self._max_line_bytes
        if limit is not None and len(line) > limit:
            return line[:limit], len(line) - limit
        if line.endswith(b"\r"):
            return line[:-1], 0
        return line, 0

    def _take_line(self) -> tuple[bytes, int]:
        line = b"".join(self._chunks)
        cut = self._cut
        self._chunks = []
        self._kept = 0
        self._cut = 0
        if not cut and line.endswith(b"\r"):
            line = line[:-1]
        return line, cut


class _StdinBackpressure:
    """The producer of an agent's stdin: the pipe pauses it when pi stops reading, and
    what is written meanwhile is counted (``queued``)."""

    def __init__(self) -> None:
        self.paused = False
        self.queued = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.queued = 0

    def stopProducing(self) -> None:
        self.paused = True


@attr.s(slots=True)
class _PendingCommand:
    command_type: str = attr.ib()
    deferred: defer.Deferred = attr.ib()
    timer: IDelayedCall = attr.ib()


class AgentProtocol(protocol.ProcessProtocol):
    """The protocol of one pi RPC process.

    ``key`` labels the agent in logs (the session id).  ``on_event(event, raw)``
    receives every stdout object that is not a response: the parsed dict and
    the exact bytes of its line (without LF/CR), so a caller can relay it
    without encoding it again.  Exceptions it raises are logged, not fatal.
    """

    def __init__(
        self,
        key: str,
        clock: IReactorTime,
        on_event: EventCallback,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
        max_stdin_bytes: int = DEFAULT_MAX_STDIN_BYTES,
        probe_interval: float | None = None,
        on_hung: Callable[[AgentProtocol], Any] | None = None,
    ) -> None:
        self.key = key
        self._max_stdin_bytes = max_stdin_bytes
        self._stdin = _StdinBackpressure()
        # Liveness probes (None: off): see DEFAULT_PROBE_INTERVAL.
        self._probe_interval = probe_interval
        self._probe = None
        self._probing = False
        self._on_hung = on_hung
        self._last_output = clock.seconds()
        # Set while a run goes on (its events are due): silence then is probed too.
        self.expect_output = False
        # Set while a run waits for a person (an approval): silence then is no hang.
        self.waiting_for_person = False
        # The agent stopped answering and was declared hung (it is being killed).
        self.hung = False
        self._clock = clock
        self._on_event = on_event
        self._command_timeout = command_timeout
        self._stdout = LineSplitter(max_line_bytes)
        self._stderr = LineSplitter(STDERR_LOG_LINE_BYTES)
        self._stderr_tail = bytearray()
        self._stderr_window_start: float | None = None
        self._stderr_window_lines = 0
        self._stderr_suppressed = 0
        self._ids = itertools.count(1)
        self._pending: dict[str, _PendingCommand] = {}
        # Ids of commands that timed out or were cancelled: their late answer is dropped.
        self._abandoned: set[str] = set()
        self._ready = SharedOutcome()
        self._exited = SharedOutcome()
        self._stdin_closed = False
        self.pid: int | None = None
        self.exit: AgentExit | None = None
        # Set by whoever asks the agent to stop, so that its exit is not taken for a crash.
        self.stop_requested = False

    # -- public API ---------------------------------------------------------

    @property
    def ready(self) -> defer.Deferred:
        """A new Deferred firing with the start-up ``get_state`` data (see ``handshake``).

        It fails as that command fails: ``AgentTimeout``, ``AgentExited`` or
        ``AgentCommandFailed``.
        """
        return self._ready.observe()

    @property
    def exited(self) -> defer.Deferred:
        """A new Deferred firing with the ``AgentExit`` once the process has ended."""
        return self._exited.observe()

    @property
    def stderr_tail(self) -> str:
        """The last few KiB the agent wrote to stderr."""
        tail = bytes(self._stderr_tail[-STDERR_TAIL_BYTES:])
        # Don't start in the middle of a UTF-8 sequence.
        return tail.lstrip(bytes(range(0x80, 0xC0))).decode("utf-8", "replace")

    def handshake(self, timeout: float) -> defer.Deferred:
        """Send ``get_state``; pi prints nothing until asked, its answer settles ``ready``."""
        answered = self.command("get_state", timeout=timeout)
        answered.addBoth(self._ready.settle)
        return self.ready

    def command(
        self, command_type: str, /, *, timeout: float | None = None, **fields: Any
    ) -> defer.Deferred:
        """Send ``{"id", "type": command_type, **fields}`` and wait for pi's response.

        Fires with the response's ``data`` (None when pi sent none).  Fails with
        ``AgentCommandFailed`` (pi's error message) on ``success: false``,
        ``AgentTimeout`` after ``timeout`` seconds (default: the protocol's
        command timeout), ``AgentExited`` if the process ends first or is
        stopping, ``ValueError``/``TypeError`` if the fields can't be sent.
        Cancelling the Deferred forgets the command.
        """
        if self.exit is not None:
            return defer.fail(AgentExited(self.exit.describe()))
        if self._stdin_closed:
            return defer.fail(AgentExited("agent is stopping"))
        if "id" in fields or "type" in fields:
            return defer.fail(ValueError("command fields may not contain 'id' or 'type'"))
        command_id = str(next(self._ids))
        try:
            line = _encode_line({"id": command_id, "type": command_type, **fields})
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        if timeout is None:
            timeout = self._command_timeout

        def cancel(_: defer.Deferred) -> None:
            pending = self._pending.pop(command_id, None)
            if pending is not None:
                pending.timer.cancel()
                self._abandoned.add(command_id)

        if not self._stdin_has_room(len(line)):
            return defer.fail(
                AgentTimeout(
                    f"the agent is not reading its input ({self._stdin.queued} bytes wait): "
                    f"{command_type} was not sent"
                )
            )
        answered: defer.Deferred = defer.Deferred(cancel)
        timer = self._clock.callLater(timeout, self._timed_out, command_id, timeout)
        self._pending[command_id] = _PendingCommand(command_type, answered, timer)
        self._write(line)
        return answered

    def send(self, message: dict) -> None:
        """Write one message with no response expected (e.g. ``extension_ui_response``).

        Dropped with a log line once the agent has ended or is stopping;
        raises ``ValueError``/``TypeError`` if ``message`` can't be encoded.
        """
        line = _encode_line(message)
        if self.exit is not None or self._stdin_closed or not self._stdin_has_room(len(line)):
            log.warn(
                "agent {agent_key}: not sending {message_type}, the agent is not running "
                "or not reading its input",
                agent_key=self.key,
                message_type=message.get("type"),
            )
            return
        self._write(line)

    def _stdin_has_room(self, size: int) -> bool:
        return not self._stdin.paused or self._stdin.queued + size <= self._max_stdin_bytes

    def _write(self, line: bytes) -> None:
        if self._stdin.paused:
            self._stdin.queued += len(line)
        self.transport.write(line)

    def close_stdin(self) -> None:
        """Close pi's stdin (pi shuts down at end of input); later commands fail."""
        if not self._stdin_closed:
            self._stdin_closed = True
            if self.exit is None:
                self.transport.closeStdin()

    def signal(self, name: str) -> None:
        """Send a signal ("TERM", "KILL", ...) unless the process has already ended."""
        if self.exit is not None:
            return
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    # -- ProcessProtocol ----------------------------------------------------

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)
        stdin = getattr(self.transport, "pipes", {}).get(0)
        if stdin is not None:
            stdin.registerProducer(self._stdin, True)
        if self._probe_interval is not None:
            self._probe = self._clock.callLater(self._probe_interval, self._check_alive)

    def _check_alive(self) -> None:
        self._probe = self._clock.callLater(self._probe_interval, self._check_alive)
        if self.exit is not None or self._stdin_closed or self._probing or self.hung:
            return
        silent = self._clock.seconds() - self._last_output
        if silent < self._probe_interval or not (self._pending or self.expect_output):
            return
        if self.waiting_for_person:
            return
        self._probing = True
        probe = self.command("get_state", timeout=PROBE_TIMEOUT)
        probe.addCallbacks(lambda _: None, self._probe_failed)
        probe.addBoth(self._probe_done)

    def _probe_done(self, _) -> None:
        self._probing = False

    def _probe_failed(self, failure: Failure) -> None:
        if not failure.check(AgentTimeout) or self.exit is not None:
            return
        self.hung = True
        log.error(
            "agent {agent_key} ({pid}) is hung: silent for {silent:.0f} s and no answer to "
            "get_state within {timeout:g} s; it is killed",
            agent_key=self.key,
            pid=self.pid,
            silent=self._clock.seconds() - self._last_output,
            timeout=PROBE_TIMEOUT,
        )
        if self._on_hung is not None:
            self._on_hung(self)
        else:
            self.signal("KILL")

    def outReceived(self, data: bytes) -> None:
        self._last_output = self._clock.seconds()
        for line, cut in self._stdout.feed(data):
            self._line_received(line, cut)

    def outConnectionLost(self) -> None:
        for line, cut in self._stdout.flush():
            self._line_received(line, cut)

    def errReceived(self, data: bytes) -> None:
        self._stderr_tail += data
        if len(self._stderr_tail) > 2 * STDERR_TAIL_BYTES:
            del self._stderr_tail[:-STDERR_TAIL_BYTES]
        for line, cut in self._stderr.feed(data):
            self._stderr_line(line, cut)

    def errConnectionLost(self) -> None:
        for line, cut in self._stderr.flush():
            self._stderr_line(line, cut)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        if signal is not None:
            code = None
        self.exit = AgentExit(code, signal, self.stderr_tail, self.stop_requested)
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._report_suppressed_stderr()
        if self.stop_requested or (code == 0 and signal is None):
            log.info(
                "agent {agent_key} ({pid}): {exit}",
                agent_key=self.key,
                pid=self.pid,
                exit=self.exit.describe(),
            )
        else:
            log.warn(
                "agent {agent_key} ({pid}) ended unexpectedly: {exit}",
                agent_key=self.key,
                pid=self.pid,
                exit=self.exit.describe(),
            )
        pending, self._pending = self._pending, {}
        self._abandoned.clear()
        for command in pending.values():
            command.timer.cancel()
            command.deferred.errback(AgentExited(self.exit.describe()))
        self._ready.settle(Failure(AgentExited(self.exit.describe())))
        self._exited.settle(self.exit)

    # -- internals ----------------------------------------------------------

    def _line_received(self, line: bytes, cut: int) -> None:
        if cut:
            log.warn(
                "agent {agent_key}: skipped a stdout line of {size} bytes (limit {limit})",
                agent_key=self.key,
                size=len(line) + cut,
                limit=len(line),
            )
            return
        if not line:
            return
        try:
            message = _decode_line(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            log.warn(
                "agent {agent_key}: skipped a stdout line that is not a JSON object: {line}",
                agent_key=self.key,
                line=_truncated(line, GARBAGE_LOG_CHARS),
            )
            return
        if message.get("type") == "response":
            self._response_received(message)
            return
        try:
            self._on_event(message, line)
        except Exception:
            log.failure(
                "agent {agent_key}: event handler failed on {event_type}",
                agent_key=self.key,
                event_type=message.get("type"),
            )

    def _response_received(self, response: dict) -> None:
        command_id = response.get("id")
        pending = self._pending.pop(command_id, None) if isinstance(command_id, str) else None
        if pending is None:
            if command_id in self._abandoned:
                self._abandoned.discard(command_id)
                log.info(
                    "agent {agent_key}: dropped the late answer to command {command_id}",
                    agent_key=self.key,
                    command_id=command_id,
                )
            else:
                # pi answers unparsable or unknown commands without an id.
                log.warn(
                    "agent {agent_key}: dropped a response to no pending command: "
                    "{command} {error}",
                    agent_key=self.key,
                    command=response.get("command"),
                    error=_truncated(str(response.get("error", "")).encode(), GARBAGE_LOG_CHARS),
                )
            return
        pending.timer.cancel()
        if response.get("success") is True:
            pending.deferred.callback(response.get("data"))
        else:
            message = response.get("error")
            if not isinstance(message, str) or not message:
                message = f"{pending.command_type} failed"
            pending.deferred.errback(AgentCommandFailed(message))

    def _timed_out(self, command_id: str, timeout: float) -> None:
        pending = self._pending.pop(command_id)
        self._abandoned.add(command_id)
        log.warn(
            "agent {agent_key}: no answer to {command_type} ({command_id}) within {timeout}s",
            agent_key=self.key,
            command_type=pending.command_type,
            command_id=command_id,
            timeout=timeout,
        )
        pending.deferred.errback(
            AgentTimeout(f"agent did not answer {pending.command_type} within {timeout:g}s")
        )

    def _stderr_line(self, line: bytes, cut: int) -> None:
        now = self._clock.seconds()
        if self._stderr_window_start is None or now - self._stderr_window_start >= 1.0:
            self._report_suppressed_stderr()
            self._stderr_window_start = now
            self._stderr_window_lines = 0
        if self._stderr_window_lines >= STDERR_LOG_LINES_PER_SECOND:
            self._stderr_suppressed += 1
            return
        self._stderr_window_lines += 1
        text = line.decode("utf-8", "replace")
        if cut:
            text += f" [... {cut} more bytes]"
        log.info("agent {agent_key} stderr: {line}", agent_key=self.key, line=text)

    def _report_suppressed_stderr(self) -> None:
        if self._stderr_suppressed:
            log.warn(
                "agent {agent_key}: {count} stderr lines not logged (rate limit)",
                agent_key=self.key,
                count=self._stderr_suppressed,
            )
            self._stderr_suppressed = 0


# json.loads looks for whitespace before and after the value with two regular expressions;
# pi writes none. Its decoder's scanner, called directly, takes 70 % of the time.
_scan_json = json.JSONDecoder().scan_once


def _decode_line(line: bytes):
    """One line of pi's stdout as a JSON value (raises ValueError as json.loads does)."""
    text = line.decode("utf-8")
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(text):
        # Whitespace around the value, or not JSON: json.loads says which.
        return json.loads(text)
    return value


def _encode_line(message: dict) -> bytes:
    # ASCII-only output: no raw U+2028/U+2029, and lone surrogates can't fail to encode.
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _truncated(data: bytes, limit: int) -> str:
    text = data[: limit * 4].decode("utf-8", "replace")
    if len(text) > limit or len(data) > limit * 4:
        return text[:limit] + f"... ({len(data)} bytes)"
    return text
