"""The one kind of error a user can cause, printed as one line (exit code 2).

Every mistake a user can make (a config field, a path, a data set, a tracking
URI) is raised as :class:`UserError` with the file, the field and the fix, and
``cli.main`` prints it as a single line. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from urllib.parse import urlparse

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix: ``<where>: <field>: <problem>; <fix>``."""

    def __init__(self, where: str, field: str, problem: str, fix: str):
        self.where = where
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.where}:{field} {self.problem}; fix: {self.fix}"


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, for messages and logged files."""
    password = urlparse(uri).password
    return uri.replace(f":{password}@", ":***@") if password else uri
