"""The one exception type for mistakes a user can fix (configs, data, run directories).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class MtlError(Exception):
    """A user-fixable problem; the message names the problem and the fix.

    `exit_code` is 2 for bad input; an interrupted run uses 128 + the signal number.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(err: BaseException) -> str:
    """An exception's first message line (or its type name): library errors are often multi-line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
