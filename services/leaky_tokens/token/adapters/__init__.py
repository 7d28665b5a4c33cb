"""Adapters of the token service: decision stores (in memory, Redis), their failure policy."""
