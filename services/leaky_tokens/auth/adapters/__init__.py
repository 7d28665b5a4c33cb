"""Adapters that implement the auth ports: SQL storage, argon2 hashing, RSA/JWT crypto."""
