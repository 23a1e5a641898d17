"""The audit log: storage here; writing and querying arrive with the API platform."""
