"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing file, a wrong config key.

    Entry points print ``error: <message>`` on stderr and exit with code 2.
    The message names the file, row, column or key, and what to do.
    """
