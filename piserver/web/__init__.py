"""The HTTP side of the one port, and the web client.

- ``site``: ``/``, ``/health``, ``/rpc`` (the WebSocket), JSON 404s;
- ``ui``: the web client at ``/ui``; its static files are the package data beside this file
  (``*.html``, ``*.js``, ``*.css``, ``vendor/``).
"""
