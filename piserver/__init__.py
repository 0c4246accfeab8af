"""pi-server: a WebSocket server that drives the pi coding agent."""

__version__ = "0.1.0"
