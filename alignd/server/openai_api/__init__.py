"""The OpenAI-compatible HTTP API beside gRPC."""
