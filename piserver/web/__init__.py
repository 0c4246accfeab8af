"""The web layer: the web client's files, and HTTP resources beside /rpc."""
