"""The security layer: tokens, auth, origins, TLS, redaction, signed URLs."""
