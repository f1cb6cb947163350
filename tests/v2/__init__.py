"""KServe v2 / Triton over HTTP and gRPC, with Triton's and KServe's own clients."""
