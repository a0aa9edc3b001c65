"""Receiving mail: the SMTP/LMTP sessions, the aiosmtpd handler, the spool, what became of it."""
