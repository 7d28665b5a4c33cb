"""Shared service runtime: settings, logging, errors, auth, telemetry and the gRPC server lifecycle."""
