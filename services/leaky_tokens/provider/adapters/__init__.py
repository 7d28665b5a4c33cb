"""Adapters of the provider stubs' ports."""
