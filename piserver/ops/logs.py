"""
How much the log says and in which form: ``--log-level`` and ``--log-format``.

twistd chooses its log observer from the Application's ``ILogObserver`` component
when one is set (as a ``.tac`` file would set it), else from its own options. The
service sets that component (``server.PiServerService.setServiceParent``) to the
observer made here: the file twistd would write to (``--logfile``, standard output
with ``--nodaemon``, syslog with ``--syslog``), in text or JSON lines, behind a level
filter. Autobahn logs every WebSocket frame at debug level: below ``--log-level debug``
its own (txaio) loggers are set to ``error``, so those lines are not even made, and
event frames are written without its send path (``ws.py``), which would still build
their fields.

The secret redaction (redact.py) stays in front: it is an observer of the global
publisher added before twistd adds this one, so both formats see redacted events.
"""

import sys

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LegacyLogObserverWrapper,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FORMAT = "text"


def format_json_line(event: dict) -> str:
    """One JSON object per line: every field of the event (twisted.logger's own JSON
    form, so ``eventsFromJSONLogFile`` reads it back) plus the formatted ``text`` and
    the ``level`` name for readers that do not know twisted.logger."""
    record = {
        **event,
        "text": formatEvent(event),
        "level": getattr(event.get("log_level"), "name", None),
    }
    return eventAsJSON(record) + "\n"


def json_lines_observer(out_file) -> FileLogObserver:
    return FileLogObserver(out_file, format_json_line)


def level_filtered(observer, level: str) -> FilteringLogObserver:
    """``observer`` seeing only events at ``level`` or above."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level))
    return FilteringLogObserver(observer, [predicate])


def make_observer(out_file, level: str = DEFAULT_LOG_LEVEL, log_format: str = DEFAULT_LOG_FORMAT):
    writer = (
        json_lines_observer(out_file) if log_format == "json" else textFileLogObserver(out_file)
    )
    return level_filtered(writer, level)


def twistd_log_file(twistd_options):
    """The file twistd itself would log to, by its own rules: ``--logfile -`` or
    ``--nodaemon`` without ``--logfile`` is standard output, else the named file
    (``twistd.log`` by default), rotated as twistd rotates it."""
    name = twistd_options.get("logfile") or ""
    if name == "-" or (not name and twistd_options.get("nodaemon")):
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")


def twistd_observer(twistd_options, level: str, log_format: str):
    """The observer twistd should use, or None where twistd's own choice stands
    (``--logger`` names an observer factory, which twistd prefers anyway)."""
    if twistd_options.get("logger"):
        return None
    if twistd_options.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        syslog = SyslogObserver(twistd_options.get("prefix") or "twisted").emit
        return level_filtered(LegacyLogObserverWrapper(syslog), level)
    return make_observer(twistd_log_file(twistd_options), level, log_format)
