"""One exception type for mistakes a user can fix (bad config, missing data, corrupt files).

The CLI turns it into a one-line message and exit code 2, so anything raised as
`UserError` must carry a message that names the problem and, where it helps, the fix.
"""


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""
