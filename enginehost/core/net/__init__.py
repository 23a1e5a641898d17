"""Outbound network requests the host makes on a caller's behalf."""
