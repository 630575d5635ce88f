"""Control-plane API: protobuf messages and gRPC services (generated *_pb2 modules
live next to their .proto sources)."""
