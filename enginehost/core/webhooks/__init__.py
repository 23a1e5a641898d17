"""Webhooks: registrations, the durable outbox, and delivery with retries."""
