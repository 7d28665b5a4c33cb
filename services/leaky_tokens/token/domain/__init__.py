"""Token-service rules: policy, leaky buckets, quota windows, multi-level decisions; no I/O."""
