"""The RPC method table: what each wire method does."""
