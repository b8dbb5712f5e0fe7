#!/usr/bin/env python3
"""A gRPC client that is not Floodgate's: Python grpcio with server reflection, no proto file.

Usage: stock_grpc_client.py ADDR TOKEN
Discovers floodgate.admin.v1.Admin by reflection, calls Status, then SetLevel degraded with a
reason, then Status again, and prints one JSON object with what it saw. Also checks gRPC health.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.json_format import MessageToDict, ParseDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

addr, token = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(addr)
db = ProtoReflectionDescriptorDatabase(channel)
services = db.get_services()
pool = descriptor_pool.DescriptorPool(db)
svc = pool.FindServiceByName("floodgate.admin.v1.Admin")


def call(method_name, body):
    m = svc.FindMethodByName(method_name)
    req_cls = message_factory.GetMessageClass(m.input_type)
    resp_cls = message_factory.GetMessageClass(m.output_type)
    stub = channel.unary_unary(
        f"/{svc.full_name}/{m.name}",
        request_serializer=req_cls.SerializeToString,
        response_deserializer=resp_cls.FromString,
    )
    reply = stub(ParseDict(body, req_cls()), metadata=[("authorization", f"Bearer {token}")])
    return MessageToDict(reply, preserving_proto_field_name=True)


before = call("Status", {})
changed = call("SetLevel", {"level": "degraded", "change": {"reason": "stock client"}})
after = call("Status", {})
health = health_pb2_grpc.HealthStub(channel).Check(
    health_pb2.HealthCheckRequest(service="floodgate.admin.v1.Admin")
)
print(json.dumps({
    "services": sorted(services),
    "before": before["degradation"]["level"],
    "summary": changed["summary"],
    "after": after["degradation"]["level"],
    "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
}))
