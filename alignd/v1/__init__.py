"""Generated gRPC stubs for alignd.v1 (`make proto` regenerates them from proto/)."""
