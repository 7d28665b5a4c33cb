"""The analytics service: usage, reports and anomalies (contract only so far)."""
