"""`python -m leaky_tokens` is the `leaky` command (for interpreters without the console script)."""

from leaky_tokens.cli import main

raise SystemExit(main())
