"""The data layer's one user-facing error, in a module of its own so that the tokenizer can raise it too."""


class DatasetUnavailable(RuntimeError):
    """The dataset (or its tokenizer) cannot be had as configured; the message is one sentence saying what to set."""
