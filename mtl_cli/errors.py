"""The one exception type for mistakes a user can fix (configs, data, run directories).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class MtlError(Exception):
    """A user-fixable problem; the message names the problem and the fix."""

    exit_code = 2
