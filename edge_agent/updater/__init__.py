"""Signed model updates: manifest, signature, fetch, store, validate, swap, rollback."""
