"""The Open Inference Protocol (KServe v2) with Triton's extensions, independent of transport.

``types`` declares the decoded request and response that the HTTP routes and the gRPC server
both translate to and from; ``infer`` runs one request against the registry, sessions and batchers.
"""
