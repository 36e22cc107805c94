"""The gRPC server: service, start-up and drain, metrics."""
