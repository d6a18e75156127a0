"""One exception type for user mistakes.

The CLI turns a ``LorashearError`` into a one-line message and a non-zero exit code; anything else is a
bug and keeps its traceback.
"""


class LorashearError(Exception):
    """A user-facing error: bad path, bad config, bad data, unsupported model, out-of-range setting."""
