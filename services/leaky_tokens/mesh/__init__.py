"""The embedded mesh: Envoy configuration and the `leaky up` process supervisor."""
