"""Auth rules and use cases; no gRPC, protobuf, SQL or network here."""
