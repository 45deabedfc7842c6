"""User-facing errors. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class GgcError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


class ParseError(GgcError):
    def __init__(self, file: str, line: int, col: int, message: str) -> None:
        self.file, self.line, self.col, self.message = file, line, col, message
        super().__init__(f"{file}:{line}:{col}: {message}")
