"""ODS Media: a real-time streaming and chat media server."""

__version__ = "0.1.0"
