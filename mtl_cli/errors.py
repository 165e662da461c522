"""The one exception type for mistakes a user can fix (configs, data, run directories).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class MtlError(Exception):
    """A user-fixable problem; the message names the problem and the fix."""

    exit_code = 2


def first_line(err: BaseException) -> str:
    """An exception's first message line (or its type name): library errors are often multi-line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
