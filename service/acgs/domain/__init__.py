"""The domain: decisions, violations and canonical request encoding. No I/O here."""
