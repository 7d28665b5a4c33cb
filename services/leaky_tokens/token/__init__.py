"""The token service: quotas, leaky buckets, consume and purchase (contract only so far)."""
