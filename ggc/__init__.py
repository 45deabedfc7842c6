"""ggc: a ggml graph compiler."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ggc.Model without importing llama.cpp for every ggc command
    if name == "Model":
        from .llm.model import Model

        return Model
    raise AttributeError(name)
