"""`leaky stack`: the real servers (Redis, PostgreSQL, Kafka, Cassandra, Consul, Envoy) on
loopback without Docker, provisioned from the package registries this project can reach."""
