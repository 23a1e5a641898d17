"""Message templates: one name per session, ``{{ var }}`` rendering with a size cap."""
