"""leaky-tokens: hand-written services (generated code lives under the `leaky` import root)."""

VERSION = "0.1.0"
