"""Shipped prompt banks (JSON data); see docs/prompt-banks.md."""
