"""Analytics rules: usage facts, minute-aligned windows, rollup totals, reports (no I/O)."""
