"""Alembic environments of the two databases.

``main/`` (auth and audit) and ``data/`` (sessions, messages, templates, webhooks) each
get their own environment and version table; they are run programmatically by
``enginehost db``, so users need no ``alembic.ini``.
"""
