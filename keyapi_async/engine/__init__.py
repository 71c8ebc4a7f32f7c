"""The engine: one request and one batch, from target to typed result."""
