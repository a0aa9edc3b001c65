"""Sending mail: responses and templates, the relay, its SMTP transport and the outbox."""
