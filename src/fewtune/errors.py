"""The one exception type a user ever sees from fewtune."""


class FewtuneError(Exception):
    """Bad input or a broken environment, with a one-line message that names the fix.

    The CLI prints the message alone (no traceback) and exits with status 2. Anything else
    that escapes is a bug in fewtune and exits with status 1.
    """
