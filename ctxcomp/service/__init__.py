"""gRPC service (imported as ``ctxcomp.service``): translation and status mapping only."""
