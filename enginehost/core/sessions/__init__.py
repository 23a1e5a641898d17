"""Sessions: one WhatsApp account connection each. The table and its store live here; the
lifecycle (start, stop, reconnect) arrives with the sessions issue."""
