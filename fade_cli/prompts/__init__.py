"""Prompts: banks (JSON files), text embeddings (cache, classifier) and LLM generation of new banks."""
