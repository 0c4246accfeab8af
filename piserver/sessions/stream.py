"""
One session's event stream: numbering, the journal, fan-out to the attached
connections in their event mode, and catching a connection up on resume.

Every event gets the next ``seq`` of its session (shared by all connections,
continuing after a restart from the journal) and is journaled before it is
sent, whether or not anyone is attached. Each event is encoded once per mode
and the same bytes go to every connection in that mode.

Event modes:

- ``full``: pi's events unchanged, as pi's own bytes (the fields ``compat`` adds are
  appended to them, not decoded and encoded again with them).
- ``delta``: the same bytes for every event but ``message_update``, which goes without
  ``usage`` (pi 1.x repeats the usage so far on every update; ``message_end`` has the
  final one) and, from older pi, without ``message`` and
  ``assistantMessageEvent.partial``, and consecutive ``text_delta``/``thinking_delta``
  events of one content block merged for up to ``merge_window`` seconds. A merged
  event carries the ``seq`` of its last part, so a delta-mode client may see ``seq``
  skip numbers; resuming from it is exact.
"""

import json

import attr
from twisted.logger import Logger

from piserver.sessions import seedcompat as compat
from piserver.sessions.journal import JournalGap, JournalStopped
from piserver.sessions.journalcodec import strip_message_update
from piserver.sessions.streamed import StreamingMessage
from piserver.wire.envelope import encode_event, encode_payload, extended_object

EVENT_MODES = ("full", "delta")
# A full-mode catch-up bigger than this gets a snapshot instead (delta replays are small).
DEFAULT_MAX_REPLAY_BYTES = 4 * 1024 * 1024
MAX_FULL_REPLAY_EVENTS = 5000
MERGEABLE_DELTAS = ("text_delta", "thinking_delta")
# Merged deltas of a replay are cut into frames of at most this much text: the seed's
# client (URLSession) drops its socket on a message over 1 MiB.
MAX_MERGED_DELTA_CHARS = 256 * 1024
ENDS_OF_MESSAGE = ("message_end", "agent_end", "agent_settled", "agent_exit")


@attr.s(eq=False)
class _Subscriber:
    connection: object = attr.ib()
    mode: str = attr.ib()
    # While a snapshot is being prepared: live events wait here, in order.
    held: list | None = attr.ib(default=None)


@attr.s(eq=False)
class _MergedDeltas:
    """Consecutive deltas of one content block, sent as one delta-mode event."""

    key: tuple = attr.ib()
    payload: dict = attr.ib()
    pieces: list = attr.ib()
    last_seq: int = attr.ib()
    size: int = attr.ib(default=0)

    def encode(self, session_id: str) -> bytes:
        event = self.payload["assistantMessageEvent"]
        payload = {
            **self.payload,
            "assistantMessageEvent": {**event, "delta": "".join(self.pieces)},
        }
        return encode_event(session_id, self.last_seq, "message_update", encode_payload(payload))


def _merge_key(event_type: str, payload: dict):
    if event_type != "message_update":
        return None
    event = payload.get("assistantMessageEvent")
    if not isinstance(event, dict) or event.get("type") not in MERGEABLE_DELTAS:
        return None
    if not isinstance(event.get("delta"), str):
        return None
    return (event["type"], event.get("contentIndex"))


def _enriched_json(payload: dict, payload_json: bytes | None, enriched: dict) -> bytes | None:
    """pi's bytes with what ``compat.enrich`` added to the event appended, when it only
    added fields (an ``agent_end`` with its ``success``, a tool's ``output``: whole
    messages and tool results need not be encoded again); else None."""
    if payload_json is None or not payload:
        return None
    added = {}
    for key, value in enriched.items():
        if key not in payload:
            added[key] = value
        elif payload[key] is not value:
            return None
    return extended_object(payload_json, added)


def delta_payload(event_type: str, payload: dict) -> dict:
    return strip_message_update(payload) if event_type == "message_update" else payload


class EventStream:
    log = Logger()

    def __init__(
        self,
        session_id: str,
        journal,
        clock,
        merge_window: float = 0.03,
        max_replay_bytes: int = DEFAULT_MAX_REPLAY_BYTES,
        on_sent=None,
    ):
        self.session_id = session_id
        # on_sent(mode, size) for each event frame sent to a connection (metrics).
        self._on_sent = on_sent
        self._max_replay_bytes = max_replay_bytes
        self._journal = journal
        self._clock = clock
        self._merge_window = merge_window
        self.seq = journal.last_seq
        self._subscribers: dict[str, _Subscriber] = {}
        self._merging: _MergedDeltas | None = None
        self._merge_call = None
        # The assistant message being streamed, for snapshots.
        self._streaming: StreamingMessage | None = None
        self._closed = False

    # -- who is attached ----------------------------------------------------

    @property
    def journal_bytes(self) -> int:
        return self._journal.disk_bytes

    def _send(self, connection, mode: str, frame: bytes) -> None:
        connection.send(frame)
        if self._on_sent is not None:
            self._on_sent(mode, len(frame))

    def is_attached(self, connection) -> bool:
        return connection.connection_id in self._subscribers

    def connections(self) -> list:
        return [s.connection for s in self._subscribers.values()]

    def detach(self, connection) -> None:
        self._subscribers.pop(connection.connection_id, None)

    def detach_all(self) -> None:
        self._subscribers.clear()
        self._cancel_merge()

    # -- publishing ---------------------------------------------------------

    def publish(
        self, event_type: str, payload: dict, payload_json: bytes | None = None, to=None
    ) -> int:
        """
        Number, journal and send one event; ``payload_json`` is pi's line when relayed.
        ``to``, a set of connection ids, limits who gets it live (a replay sends it to
        whoever resumes: clients ignore what is not for them).
        """
        if self._closed:
            # The session is gone (deleted); a straggler of its agent is nothing to keep.
            self.log.debug(
                "session {session_id}: {event_type} after the stream closed, dropped",
                session_id=self.session_id,
                event_type=event_type,
            )
            return self.seq
        self._follow_message(event_type, payload)
        enriched = compat.enrich(event_type, payload, self._streaming)
        if enriched is not None:
            payload_json = _enriched_json(payload, payload_json, enriched)
            payload = enriched
        if payload_json is None:
            payload_json = encode_payload(payload)
        self.seq += 1
        seq = self.seq
        stopped = None
        try:
            self._journal.append(seq, event_type, payload, payload_json)
        except JournalStopped as e:
            # Disk full…: the journal said so in the log; the live stream goes on.
            stopped = e
        except Exception:
            self.log.failure(
                "journal of {session_id}: cannot record event {seq}",
                session_id=self.session_id,
                seq=seq,
            )

        full_frame = None
        has_delta = False
        for subscriber in self._subscribers.values():
            if to is not None and subscriber.connection.connection_id not in to:
                continue
            if subscriber.mode == "full":
                if full_frame is None:
                    full_frame = encode_event(self.session_id, seq, event_type, payload_json)
                self._deliver(subscriber, seq, full_frame)
            else:
                has_delta = True
        if has_delta:
            self._publish_delta(seq, event_type, payload, payload_json, to)
        if stopped is not None:
            self.publish(
                "journal_stopped",
                {
                    "type": "journal_stopped",
                    "reason": stopped.strerror,
                    "message": "this session's events can no longer be stored (the server's disk "
                    "is full?): a resume gets a snapshot",
                },
            )
        return seq

    def _follow_message(self, event_type: str, payload: dict) -> None:
        if event_type == "message_update":
            if self._streaming is not None:
                update = payload.get("assistantMessageEvent")
                if isinstance(update, dict):
                    self._streaming.apply(update, payload.get("usage"))
        elif event_type == "message_start":
            message = payload.get("message")
            if isinstance(message, dict) and message.get("role") == "assistant":
                self._streaming = StreamingMessage(message)
        elif event_type in ENDS_OF_MESSAGE:
            self._streaming = None

    @property
    def streaming_message(self) -> dict | None:
        """The assistant message being streamed (as far as it has come), or None."""
        return self._streaming.message() if self._streaming is not None else None

    def _publish_delta(
        self, seq: int, event_type: str, payload: dict, payload_json: bytes, to=None
    ) -> None:
        key = _merge_key(event_type, payload)
        if key is not None and self._merge_window > 0:
            delta = payload["assistantMessageEvent"]["delta"]
            if self._merging is not None and self._merging.key == key:
                self._merging.pieces.append(delta)
                self._merging.last_seq = seq
                return
            self.flush()
            self._merging = _MergedDeltas(key, delta_payload(event_type, payload), [delta], seq)
            self._merge_call = self._clock.callLater(self._merge_window, self.flush)
            return
        self.flush()
        if event_type == "message_update":
            # Updates lose their usage in delta mode; every other event goes as in full mode.
            payload_json = encode_payload(delta_payload(event_type, payload))
        frame = encode_event(self.session_id, seq, event_type, payload_json)
        self._send_to_mode("delta", seq, frame, to)

    def flush(self) -> None:
        """Send merged deltas now (before any other event, attach or resume)."""
        merging, self._merging = self._merging, None
        self._cancel_merge_call()
        if merging is not None:
            self._send_to_mode("delta", merging.last_seq, merging.encode(self.session_id))

    def _cancel_merge(self) -> None:
        self._merging = None
        self._cancel_merge_call()

    def _cancel_merge_call(self) -> None:
        if self._merge_call is not None and self._merge_call.active():
            self._merge_call.cancel()
        self._merge_call = None

    def _send_to_mode(self, mode: str, seq: int, frame: bytes, to=None) -> None:
        for subscriber in list(self._subscribers.values()):
            if subscriber.mode == mode and (
                to is None or subscriber.connection.connection_id in to
            ):
                self._deliver(subscriber, seq, frame)

    def _deliver(self, subscriber: _Subscriber, seq: int, frame: bytes) -> None:
        if subscriber.held is not None:
            subscriber.held.append((seq, frame))
        else:
            self._send(subscriber.connection, subscriber.mode, frame)

    # -- attaching and catching up ------------------------------------------

    def attach(
        self, connection, mode: str, last_seq: int | None = None, snapshots: bool = True
    ) -> str | None:
        """
        Attach a connection. With ``last_seq``, first send it every journaled event
        after that seq, so it misses none and sees none twice. Returns None, or why it
        could not: ``journal_trimmed`` (the journal no longer holds ``last_seq + 1``),
        ``unknown_seq`` (beyond the last seq) or ``replay_too_large`` (more full-mode
        events than a connection should be sent at once); the caller then sends a
        snapshot instead (see ``hold`` and ``release``).

        A connection that reads no snapshots (``snapshots=False``: the seed's client
        ignores them) is never answered with a reason: a long gap is replayed compacted
        (runs of deltas merged into frames of at most ``MAX_MERGED_DELTA_CHARS``), a
        trimmed one from the oldest event kept, and an unknown seq is caught up live.
        """
        self.flush()
        if last_seq is not None and last_seq != self.seq:
            reason = self._replay(connection, mode, last_seq, snapshots)
            if reason is not None:
                return reason
        self._subscribers[connection.connection_id] = _Subscriber(connection, mode)
        return None

    async def attach_catching_up(
        self, connection, mode: str, last_seq: int | None, in_thread, snapshots: bool = True
    ) -> str | None:
        """
        ``attach``, with the catch-up read, decoded and encoded by ``in_thread(f)`` (a
        thread pool): a long replay never stalls the reactor, nor other sessions. Live
        events are held back meanwhile and follow the catch-up.
        """
        self.flush()
        if last_seq is None or last_seq >= self.seq:
            return self.attach(connection, mode, last_seq, snapshots)
        plan = self._plan_catch_up(mode, last_seq, snapshots)
        if isinstance(plan, str):
            return plan
        read, merge = plan
        caught_up_to = self.seq
        self.hold(connection, mode)
        try:
            frames = await in_thread(self._catch_up_frames, read, mode, merge, snapshots)
        except JournalGap:
            # A record found unreadable while reading.
            if snapshots:
                self.detach(connection)
                return "journal_trimmed"
            frames = []
        except BaseException:
            self.detach(connection)
            raise
        subscriber = self._subscribers.get(connection.connection_id)
        if subscriber is None or subscriber.held is None:
            return None  # detached meanwhile
        if frames is None:
            self.detach(connection)
            return "replay_too_large"
        held, subscriber.held = subscriber.held, None
        for frame in frames:
            connection.send(frame)
        for seq, frame in held:
            if seq > caught_up_to:
                connection.send(frame)
        return None

    def _catch_up_frames(self, read, mode: str, merge: bool, snapshots: bool) -> list[bytes] | None:
        """The catch-up frames (None: too large, send a snapshot): runs in a thread."""
        events = read()
        if mode == "full" and not merge and sum(len(e[2]) for e in events) > self._max_replay_bytes:
            if snapshots:
                return None
            merge = True
        return list(self._replay_frames(events, merge))

    def _plan_catch_up(self, mode: str, last_seq: int, snapshots: bool):
        """How to catch a connection up from ``last_seq`` (below the last seq): why a
        snapshot must do instead, or ``(read, merge)``: the journal's events to read
        (``read()``, from any thread) and whether runs of deltas are merged."""
        merge = mode == "delta"
        if mode == "full" and self.seq - last_seq > MAX_FULL_REPLAY_EVENTS:
            if snapshots:
                return "replay_too_large"
            merge = True
        try:
            return self._journal.prepared_replay(last_seq, mode), merge
        except JournalGap:
            if snapshots:
                return "journal_trimmed"
        # All that is left: the client sees the seqs jump over what was trimmed.
        first = self._journal.first_seq
        if first is None:
            return (lambda: []), True
        return self._journal.prepared_replay(max(last_seq, first - 1), mode), True

    def _replay(self, connection, mode: str, last_seq: int, snapshots: bool) -> str | None:
        if last_seq > self.seq:
            return "unknown_seq" if snapshots else None
        plan = self._plan_catch_up(mode, last_seq, snapshots)
        if isinstance(plan, str):
            return plan
        read, merge = plan
        try:
            frames = self._catch_up_frames(read, mode, merge, snapshots)
        except JournalGap:
            # A record found unreadable while reading.
            if snapshots:
                return "journal_trimmed"
            frames = []
        if frames is None:
            return "replay_too_large"
        for frame in frames:
            connection.send(frame)
        return None

    def _replay_frames(self, events, merge: bool):
        if not merge:
            for seq, event_type, payload_json in events:
                yield encode_event(self.session_id, seq, event_type, payload_json)
            return
        # Merge runs of deltas in a replay too: a resumed phone gets a few frames.
        merging = None
        for seq, event_type, payload_json in events:
            key = None
            payload = None
            if event_type == "message_update":
                payload = json.loads(payload_json)
                key = _merge_key(event_type, payload)
            if (
                key is not None
                and merging is not None
                and merging.key == key
                and merging.size < MAX_MERGED_DELTA_CHARS
            ):
                delta = payload["assistantMessageEvent"]["delta"]
                merging.pieces.append(delta)
                merging.size += len(delta)
                merging.last_seq = seq
                continue
            if merging is not None:
                yield merging.encode(self.session_id)
                merging = None
            if key is not None:
                delta = payload["assistantMessageEvent"]["delta"]
                merging = _MergedDeltas(key, payload, [delta], seq, len(delta))
                continue
            yield encode_event(self.session_id, seq, event_type, payload_json)
        if merging is not None:
            yield merging.encode(self.session_id)

    def hold(self, connection, mode: str) -> None:
        """Attach, but keep live events back until ``release`` (a snapshot comes first)."""
        self.flush()
        self._subscribers[connection.connection_id] = _Subscriber(connection, mode, held=[])

    def release(self, connection, snapshot: dict, snapshot_seq: int) -> None:
        """Send the snapshot (which reflects every event up to ``snapshot_seq``), then
        the events held back that came after it."""
        subscriber = self._subscribers.get(connection.connection_id)
        if subscriber is None or subscriber.held is None:
            return
        held, subscriber.held = subscriber.held, None
        self._send(
            connection,
            subscriber.mode,
            encode_event(
                self.session_id, snapshot_seq, "session_snapshot", encode_payload(snapshot)
            ),
        )
        for seq, frame in held:
            if seq > snapshot_seq:
                self._send(connection, subscriber.mode, frame)

    def close(self) -> None:
        self._closed = True
        self.detach_all()
        self._journal.close()
