"""Server reflection under both names clients use: `grpc.reflection.v1alpha` (what
grpcio-reflection ships, and grpcurl 1.8 asks for) and `grpc.reflection.v1` (what
newer grpcurl, Postman and the grpc-js reflection clients ask for first).

The two protos are the same messages under another package, so v1 is served by the
v1alpha servicer, its descriptor derived from v1alpha's (registered in the default
pool, so that reflection can describe itself under both names).
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_METHOD = "ServerReflectionInfo"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = "grpc.reflection.v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # set on scalars, it would claim a message type
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for method in proto.service[0].method:
        method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
        method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    proto.options.Clear()  # v1alpha's language options (java package…) are not v1's
    pool.Add(proto)


def enable(service_names: list[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha on `server` for these services (and itself)."""
    _register_v1_descriptor()
    servicer = ReflectionServicer([*service_names, V1ALPHA, V1])
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, {_METHOD: handler}) for name in (V1ALPHA, V1)]
    )
