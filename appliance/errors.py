"""The one exception tree of the appliance.

Every error the relay raises on purpose derives from :class:`ApplianceError`.
Third-party errors (pyodbc, confluent_kafka, psycopg, JPype) are translated at
the boundary where they are met, with ``raise ... from`` so the cause is kept.

    ApplianceError
    ├── ConfigError          settings missing or invalid (names the dotted key)
    ├── SourceError          the IBM i (or the emulator) refused or failed
    │   └── DataGapError     the bookmarked receiver is gone: entries were lost
    ├── DecodeError          a record image cannot be decoded (names the field)
    ├── ScriptError          an enrichment script failed or ran out of time
    ├── TransportError       Kafka refused or failed
    └── SinkError            the hub could not apply a message

Messages name the field, the offending value (truncated) and what was
expected. They never carry a password, a token or a whole connection string.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""


class ConfigError(ApplianceError):
    """Settings are missing or invalid."""


class SchemaError(ApplianceError):
    """The pipeline database was made by a newer release than this one."""


class SourceError(ApplianceError):
    """The IBM i source refused or failed a request.

    ``cpf`` carries the IBM message id (``CPF9801``...) when the source gave one.
    """

    def __init__(self, message: str, *, cpf: str | None = None) -> None:
        super().__init__(message)
        self.cpf = cpf


class DataGapError(SourceError):
    """The bookmarked receiver no longer exists: entries were lost at the source."""


class DecodeError(ApplianceError):
    """A record image could not be decoded.

    Carries what an operator needs to find the bytes again: the table, the
    journal position, the field, its offset in the image and the bytes.
    """

    def __init__(
        self,
        reason: str,
        *,
        table: str = "",
        position: str = "",
        field: str = "",
        offset: int | None = None,
        data: bytes = b"",
        expected: str = "",
    ) -> None:
        self.reason = reason
        self.table = table
        self.position = position
        self.field = field
        self.offset = offset
        self.data = data
        self.expected = expected
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line naming table, position, field, offset, bytes and expectation."""
        parts = [self.reason]
        for name, value in (
            ("table", self.table),
            ("position", self.position),
            ("field", self.field),
        ):
            if value:
                parts.append(f"{name}={value}")
        if self.offset is not None:
            parts.append(f"offset={self.offset}")
        if self.data:
            shown = self.data[:64].hex(" ").upper()
            more = "..." if len(self.data) > 64 else ""
            parts.append(f"bytes={shown}{more}")
        if self.expected:
            parts.append(f"expected={self.expected}")
        return " ".join(parts)


class ScriptError(ApplianceError):
    """An enrichment script failed, returned a bad value or ran out of time."""


class TransportError(ApplianceError):
    """Kafka refused or failed a request."""


class SinkError(ApplianceError):
    """The hub could not apply a message."""
