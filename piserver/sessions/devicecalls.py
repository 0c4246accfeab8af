"""
What a session's agent asks of the people and devices attached to it: native tool
calls (answered by a device that declared the tool) and extension dialogs
(answered by whoever is looking), and dialogs the server asks itself (pi's project
trust: ``projecttrust.py``), shown as pi's are. The wire contract with the pi extension is in
``nativetools.py``; this module routes requests and answers for one session.

Requests wait for an answer while no device is attached and are sent again to a
device that attaches or resumes later. The first answer wins; the others are
told with ``native_tool_resolved`` / ``extension_ui_resolved``. A tool call no
device answers in time fails with an error the model can read.
"""

from twisted.logger import Logger

from piserver.agents.nativetools import (
    PendingCalls,
    PendingDialogs,
    dialog_response,
    ended_tool_call_id,
    parse_dialog,
    parse_tool_call,
    tool_result_response,
    unanswered_message,
)
from piserver.common.errors import NotFound
from piserver.sessions.observer import InputKind, ISessionObserver, SessionObserver


def declares(connection, tool_name: str) -> bool:
    return any(tool.name == tool_name for tool in getattr(connection, "native_tools", None) or ())


class DeviceCalls:
    log = Logger()

    def __init__(
        self,
        session_id: str,
        clock,
        publish,
        send_to_agent,
        connections,
        call_timeout: float,
        observer: ISessionObserver | None = None,
        session=None,
    ):
        """
        ``publish(event_type, payload, to=None)`` sends an event to the session's
        connections (``to``: only those ids); ``send_to_agent(message)`` writes to
        pi's stdin; ``connections()`` lists the attached connections;
        ``observer`` (an ``ISessionObserver``) hears, of ``session``, that input is
        needed and that a native tool call timed out (metrics, notifications).
        """
        self._session_id = session_id
        self._observer = observer or SessionObserver()
        self._session = session
        self._publish = publish
        self._send_to_agent = send_to_agent
        self._connections = connections
        self.calls = PendingCalls(clock, timeout=call_timeout)
        self.dialogs = PendingDialogs(clock)
        # Dialogs the server asks itself (not pi): their answers, by dialog id.
        self._own: dict = {}

    # -- from the agent -----------------------------------------------------

    def agent_event(self, event: dict) -> bool:
        """Handle an event that is ours; True when it must not be relayed as it is."""
        event_type = event.get("type")
        if event_type == "extension_ui_request":
            call = parse_tool_call(event)
            if call is not None:
                self._tool_called(call)
                return True
            dialog = parse_dialog(event)
            if dialog is not None:
                self.dialogs.add(dialog, self._dialog_expired)
                title = event.get("title")
                self._observer.input_needed(
                    self._session,
                    InputKind.DIALOG,
                    f"the agent asks: {title}"
                    if isinstance(title, str) and title
                    else f"the agent waits for an answer ({dialog.method})",
                )
            # Dialogs and notices (notify, setStatus, …) go to every client as pi sent them.
            return False
        if event_type == "tool_execution_end":
            tool_call_id = ended_tool_call_id(event)
            if tool_call_id is not None:
                call = self.calls.end_tool_call(tool_call_id)
                if call is not None:  # the run was aborted while a device had it
                    self._publish(
                        "native_tool_cancel", {"type": "native_tool_cancel", "callId": call.call_id}
                    )
        return False

    def _tool_called(self, call) -> None:
        self.log.info(
            "session {session_id}: native tool {tool} called ({call_id})",
            session_id=self._session_id,
            tool=call.tool_name,
            call_id=call.call_id,
        )
        self.calls.add(call, self._call_expired)
        self._observer.input_needed(
            self._session,
            InputKind.NATIVE_TOOL,
            f"the agent waits for the device tool {call.tool_name}",
        )
        self._send_call(call)

    def _send_call(self, call, connections=None) -> None:
        targets = {
            c.connection_id
            for c in (connections or self._connections())
            if declares(c, call.tool_name)
        }
        if targets:
            self._publish(
                "native_tool_request",
                {"type": "native_tool_request", **call.request_payload()},
                to=targets,
            )

    def _call_expired(self, call) -> None:
        message = unanswered_message(call.tool_name)
        self.log.warn(
            "session {session_id}: {message}", session_id=self._session_id, message=message
        )
        self._send_to_agent(tool_result_response(call, error=message))
        self._observer.native_tool_timed_out(self._session, call.tool_name)
        self._publish("native_tool_cancel", {"type": "native_tool_cancel", "callId": call.call_id})

    def _dialog_expired(self, dialog) -> None:
        # pi answered it by itself (its own timeout): nobody needs to any more.
        self._publish(
            "extension_ui_resolved",
            {"type": "extension_ui_resolved", "id": dialog.id, "reason": "timeout"},
        )

    # -- from the server -----------------------------------------------------

    def ask(self, dialog, answered, expired) -> None:
        """Put a dialog of the server's own to the session's clients, as pi's are (sent now
        and to every device that attaches, first answer wins): the answer, as pi's
        ``extension_ui_response``, goes to ``answered(response)`` instead of pi; after
        ``dialog.timeout`` ``expired()`` hears nobody answered. No agent exit withdraws it."""
        self._own[dialog.id] = answered

        def timed_out(dialog) -> None:
            self._own.pop(dialog.id, None)
            self._dialog_expired(dialog)
            expired()

        self.dialogs.add(dialog, timed_out)
        self._observer.input_needed(
            self._session, InputKind.DIALOG, f"the server asks: {dialog.request.get('title')}"
        )
        self._publish("extension_ui_request", dialog.request)

    def close(self) -> None:
        """The session is going: nothing it waits for times out or is answered now."""
        self.calls.cancel_all()
        self.dialogs.cancel_all()
        self._own.clear()

    def agent_exited(self) -> None:
        for call in self.calls.cancel_all():
            self._publish(
                "native_tool_cancel", {"type": "native_tool_cancel", "callId": call.call_id}
            )
        # pi's dialogs go with the agent; the server's own stay on offer.
        for dialog in self.dialogs.pending():
            if dialog.id in self._own:
                continue
            self.dialogs.cancel(dialog.id)
            self._publish(
                "extension_ui_resolved",
                {"type": "extension_ui_resolved", "id": dialog.id, "reason": "agent_exit"},
            )

    # -- from clients -------------------------------------------------------

    def answer_call(self, connection, answer) -> None:
        call = self.calls.resolve(answer.call_id)
        if call is None:
            raise NotFound(f"no pending native tool call {answer.call_id[:80]!r}")
        if answer.error is not None:
            response = tool_result_response(call, error=answer.error)
        else:
            response = tool_result_response(call, result=answer.result)
        self._send_to_agent(response)
        others = {c.connection_id for c in self._connections()} - {connection.connection_id}
        self._publish(
            "native_tool_resolved",
            {"type": "native_tool_resolved", "callId": call.call_id},
            to=others,
        )

    def answer_dialog(self, connection, params: dict) -> None:
        response = dialog_response(params)
        dialog = self.dialogs.resolve(response["id"])
        if dialog is None:
            raise NotFound(f"no pending extension dialog {response['id'][:80]!r}")
        answered = self._own.pop(dialog.id, None)
        if answered is not None:
            answered(response)
        else:
            self._send_to_agent(response)
        others = {c.connection_id for c in self._connections()} - {connection.connection_id}
        self._publish(
            "extension_ui_resolved", {"type": "extension_ui_resolved", "id": dialog.id}, to=others
        )

    def has_call(self, call_id: str) -> bool:
        return call_id in self.calls

    def has_dialog(self, dialog_id: str) -> bool:
        return dialog_id in self.dialogs

    # -- a device arrives ---------------------------------------------------

    def attached(self, connection) -> None:
        """Send what is still waiting to a connection that just attached or resumed."""
        for call in self.calls.pending():
            self._send_call(call, [connection])
        for dialog in self.dialogs.pending():
            self._publish("extension_ui_request", dialog.request, to={connection.connection_id})
