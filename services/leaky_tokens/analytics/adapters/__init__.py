"""Analytics adapters: event decoding, the SQLite and Cassandra usage stores, the projection."""
