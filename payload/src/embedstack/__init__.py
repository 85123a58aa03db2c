"""embedstack: an OpenAI-compatible embeddings gateway and the tools that deploy and check it."""

__version__ = "0.1.0"
