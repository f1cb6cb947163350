"""KServe v2's ``inference.GRPCInferenceService`` with Triton's additions, on grpcio's asyncio server.

The protobuf classes are the generated modules that ``tritonclient[grpc]`` ships. ``codec`` turns
protobuf requests into ``service.openinference.types`` and back, ``status`` maps service errors to
gRPC codes, ``servicer`` implements the RPCs, ``stream`` the bidirectional ModelStreamInfer, and
``server`` builds, starts and drains the server in the app's lifespan.
"""
