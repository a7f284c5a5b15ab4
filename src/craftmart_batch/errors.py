"""The one exception type meant for users, and the process exit codes."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``craftmart-batch`` command (SPEC §7)."""

    OK = 0
    STALE = 1  # `status --max-age`: a mart is older than allowed
    CHECK_FAILED = 1  # `report`: a reconciliation in the analysts' notebook failed
    CANNOT_START = 2  # bad arguments, unreachable database, missing source object
    LOCKED = 3  # another run holds the lock


class CraftmartError(Exception):
    """An error a user can act on: printed as one line, no traceback.

    ``exit_code`` says how the command ends. The message must never carry a
    password: build it from redacted connection text only.
    """

    def __init__(self, message: str, exit_code: ExitCode = ExitCode.CANNOT_START) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code


class LockHeldError(CraftmartError):
    """Another run holds the warehouse lock."""

    def __init__(self, message: str = "another craftmart-batch run holds the lock") -> None:
        super().__init__(message, ExitCode.LOCKED)
