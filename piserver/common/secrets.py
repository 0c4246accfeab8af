"""
Known secret values out of text: the one replacement both the log's redactor
(``security.redact``) and the messages a client reads (``repos.git``) use.
"""

from collections.abc import Iterable


def longest_first(secrets: Iterable[str | None]) -> tuple[str, ...]:
    """The non-empty ``secrets``, each once, longest first: a secret that contains another
    is then replaced whole."""
    return tuple(sorted({s for s in secrets if s}, key=len, reverse=True))


def without_secrets(text: str, secrets: Iterable[str | None], mask: str) -> str:
    """``text`` with every value of ``secrets`` replaced by ``mask``."""
    for secret in longest_first(secrets):
        if secret in text:
            text = text.replace(secret, mask)
    return text
