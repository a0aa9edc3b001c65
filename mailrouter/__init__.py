"""mailrouter: an asyncio mail-application server with Lamson-style routing."""
