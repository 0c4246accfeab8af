"""The wire API: RPC method tables and their parameter checks."""
