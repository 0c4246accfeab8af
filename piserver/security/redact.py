"""
Secret values never reach a log: every event is redacted of the configured
secrets (server token, device tokens made in this process, GITHUB_TOKEN, .env
values, secret-named environment variables) before an observer writes it.
Credentials the server cannot know in clear (device tokens made by another
process are stored hashed; a wrong token; a percent-encoded one) are caught by
where they stand: whatever follows ``token=`` in a URL, an ``Authorization``
header or ``Bearer``. Events below the configured level (debug, by default)
are dropped: libraries' debug events hold raw requests.

twistd creates its log observer after ``makeService``, and a ``LogPublisher``
calls its observers in the order they were added. So ``install`` (called from
``makeService``) adds an observer to the global publisher that comes before
twistd's and redacts each event in place; ``RedactingObserver`` wraps an
observer one controls instead.
"""

import re
from collections.abc import Iterable

from twisted.application.service import Service
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from piserver.common.secrets import longest_first, without_secrets

# Server-side secrets that are never passed on to an agent process.
SERVER_SECRET_ENV = frozenset(
    {"PI_SERVER_AUTH_TOKEN", "PI_SERVER_METRICS_TOKEN", "PI_SERVER_NOTIFY_SECRET"}
)
# Environment variables named like these hold secrets (kept from git, redacted from logs).
SECRET_NAME_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")

REDACTED = "[redacted]"
# Shorter values are too likely to be ordinary words or numbers.
MIN_SECRET_LENGTH = 8
# An event carrying this field set to True is shown as is: the one start-up line that
# hands a newly generated server token to its owner.
REVEAL_FIELD = "reveal_secrets"

# Where a credential stands in a request, in any case and percent-encoded: the value of a
# `token` query parameter (`?token=`, `&token=`, `%3Ftoken%3D`, a `'token': ['...']` dict),
# an Authorization header's value, and what follows `Bearer`.
_CREDENTIAL_PATTERNS = tuple(
    re.compile(f"{pattern}(?!{re.escape(REDACTED)}){value}", re.IGNORECASE)
    for pattern, value in (
        (r"((?:[?&;]|%3F|%26|%3B)token(?:=|%3D))", r"[^&;#\s\"'\\]+"),
        (r"(['\"]token['\"]\s*:\s*\[?\s*b?['\"])", r"[^'\"]+"),
        (r"(authorization['\"]?\s*[:=,]\s*(?:b?['\"])?)", r"[^'\"\r\n\\]+"),
        (r"(bearer(?:\s|%20|\+)+)", r"[^\s'\"\\,;]+"),
    )
)

# Least severe first.
_LEVEL_ORDER = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}

# Fields that the logging system itself sets and that never hold logged values.
_SYSTEM_FIELDS = frozenset(
    {
        "log_logger",
        "log_source",
        "log_time",
        "log_level",
        "log_namespace",
        "log_system",
        "log_format",
        "log_failure",
        "log_flattened",
        "log_trace",
        "log_text",
        "log_id",
    }
)


def secret_values(config) -> set[str]:
    """The secrets a ``ServerConfig`` knows of, long enough to be redacted."""
    values = {config.auth_token, config.github_token, config.metrics_token, config.notify_secret}
    for name, value in config.env.items():
        if (
            name in config.dotenv_names
            or name in SERVER_SECRET_ENV
            or name.endswith(SECRET_NAME_SUFFIXES)
        ):
            values.add(value)
    return {v for v in values if isinstance(v, str) and len(v.strip()) >= MIN_SECRET_LENGTH}


class Redactor:
    """Knows the secret values and removes them from text and log events."""

    def __init__(self, secrets: Iterable[str] = (), min_level: LogLevel = LogLevel.info):
        self._min_level = min_level
        given = (secret.strip() for secret in secrets if isinstance(secret, str))
        # Short ones are ignored. Never changed after: observers may run in any thread.
        self._secrets: tuple[str, ...] = longest_first(
            secret for secret in given if len(secret) >= MIN_SECRET_LENGTH
        )

    def redact(self, text: str) -> str:
        text = without_secrets(text, self._secrets, REDACTED)
        for pattern in _CREDENTIAL_PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def _leaks(self, text: str) -> bool:
        return any(secret in text for secret in self._secrets) or any(
            pattern.search(text) for pattern in _CREDENTIAL_PATTERNS
        )

    def shown(self, event: dict) -> bool:
        """Whether ``event`` is at or above the level the log shows."""
        level = event.get("log_level")
        return level not in _LEVEL_ORDER or _LEVEL_ORDER[level] >= _LEVEL_ORDER[self._min_level]

    def redact_event(self, event: dict) -> dict:
        """``event`` itself when it holds no secret, else a redacted copy whose text is
        already formatted (``log_format`` ``{log_text}``)."""
        if event.get(REVEAL_FIELD) is True:
            return event
        text = formatEvent(event)
        failure = event.get("log_failure")
        traceback = _traceback(failure) if failure is not None else ""
        dirty_fields = {}
        for key, value in event.items():
            if key in _SYSTEM_FIELDS:
                continue
            shown = _as_text(value)
            if self._leaks(shown):
                dirty_fields[key] = self.redact(shown)
        leaks_in_text = self._leaks(text)
        leaks_in_traceback = self._leaks(traceback)
        if not (leaks_in_text or leaks_in_traceback or dirty_fields):
            return event
        redacted = {**event, **dirty_fields}
        redacted.pop("log_flattened", None)
        redacted["log_format"] = "{log_text}"
        redacted["log_text"] = self.redact(text)
        if leaks_in_traceback:
            # The Failure itself cannot be cleaned: its redacted text goes in the message.
            del redacted["log_failure"]
            redacted["log_text"] += "\n" + self.redact(traceback)
        return redacted

    def install(self, publisher=globalLogPublisher) -> None:
        """Redact every event of ``publisher`` in place, for the observers added after."""
        publisher.addObserver(self._redact_in_place)

    def uninstall(self, publisher=globalLogPublisher) -> None:
        publisher.removeObserver(self._redact_in_place)

    def _redact_in_place(self, event: dict) -> None:
        if not self.shown(event):
            # File observers write nothing for an event without a format.
            event.clear()
            return
        redacted = self.redact_event(event)
        if redacted is not event:
            event.clear()
            event.update(redacted)


@implementer(ILogObserver)
class RedactingObserver:
    """Passes each event to ``observer`` redacted of ``redactor``'s secrets."""

    def __init__(self, observer, redactor: Redactor):
        self._observer = observer
        self.redactor = redactor

    def __call__(self, event: dict) -> None:
        if self.redactor.shown(event):
            self._observer(self.redactor.redact_event(event))


class RedactionService(Service):
    """Holds the installed ``Redactor`` in the service tree and removes its observer when
    the tree stops."""

    name = "redaction"

    def __init__(self, redactor: Redactor, publisher=globalLogPublisher):
        self.redactor = redactor
        self._publisher = publisher

    def stopService(self):
        super().stopService()
        self.redactor.uninstall(self._publisher)


def install_redaction(parent, config, publisher=globalLogPublisher) -> Redactor:
    """
    Redact ``config``'s secrets from every log event of ``publisher`` from now on, and
    add a ``RedactionService`` to ``parent`` that removes it when ``parent`` stops.
    Call before twistd begins logging (i.e. from ``makeService``).
    """
    redactor = Redactor(secret_values(config), min_level=config.log_level)
    redactor.install(publisher)
    RedactionService(redactor, publisher).setServiceParent(parent)
    return redactor


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return repr(value)
    except Exception:
        return ""


def _traceback(failure) -> str:
    try:
        return failure.getTraceback()
    except Exception:
        return ""
