"""The one exception type for errors a user can cause."""


class VitsslError(Exception):
    """Bad input from the user: a spec, a name, a path, a shape, a config key.

    The message says what was wrong and what is accepted; the CLI prints it
    as one line on stderr and exits with status 2.
    """
