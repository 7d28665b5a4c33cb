"""The API catalog: one reflection endpoint describing every public service, for the gateway.

Each service's own reflection lists only what it serves; grpcurl through Envoy needs one
endpoint that knows them all, so Envoy routes reflection here (see docs/adr).
"""
