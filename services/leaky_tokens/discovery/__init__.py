"""Discovery: feeds Envoy the live instances of each service from Consul (REST EDS, ADR 0007)."""
