"""The Envoy front door: its config, rendered from the topology for every deployment."""
