"""peerage: one address for chat, calls and mail."""

__version__ = "0.1.0"
