"""ggc: a ggml graph compiler."""

__version__ = "0.1.0"
