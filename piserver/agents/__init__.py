"""The agent layer: pi processes and the server's pi extension with its contracts."""
