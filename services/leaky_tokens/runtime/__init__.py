"""Shared service runtime: settings, logs, errors, auth, telemetry, gRPC server lifecycle."""
