"""API keys: storage here; hashing, roles and the HTTP layer arrive with the API platform."""
