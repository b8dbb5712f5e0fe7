#!/usr/bin/env python3
"""Real gRPC peers for the end-to-end tests: Python grpcio (gRPC C-core), not Floodgate's code.

  grpc_peer.py server [PORT]
      Serves grpc.health.v1.Health plus floodgate.test.Test/{Sleep,Die} on 127.0.0.1:PORT
      (0 or absent: a free port) and prints the port on the first line of its output.
      Sleep: the request's bytes are milliseconds to wait (ASCII), then it answers b"ok".
      Die: the process exits at once, mid-call, without answering.

  grpc_peer.py client ADDR
      One channel to ADDR for the whole run. Reads one JSON object a line from standard input,
      {"method": "/pkg.Svc/Name", "body": "text", "timeout": seconds},
      makes that unary call and prints one JSON line: {"code": "OK" | status name,
      "details": str, "metadata": {trailing metadata}, "body": str}.
"""
import json
import os
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    h = health.HealthServicer()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)

    def sleep(request, context):
        time.sleep(int(request or b"0") / 1000.0)
        return b"ok"

    def die(request, context):
        sys.stdout.flush()
        os._exit(3)

    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("floodgate.test.Test", {
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Die": grpc.unary_unary_rpc_method_handler(die),
        }),
    ))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(bound, flush=True)
    server.wait_for_termination()


def client(addr):
    channel = grpc.insecure_channel(addr)
    health_stub = health_pb2_grpc.HealthStub(channel)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        method = req["method"]
        timeout = req.get("timeout", 10.0)
        try:
            if method == "/grpc.health.v1.Health/Check":
                reply, call = health_stub.Check.with_call(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout)
                body = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            else:
                stub = channel.unary_unary(method)
                reply, call = stub.with_call(req.get("body", "").encode(), timeout=timeout)
                body = reply.decode()
            out = {"code": "OK", "details": "", "body": body,
                   "metadata": dict(call.trailing_metadata() or ())}
        except grpc.RpcError as e:
            out = {"code": e.code().name, "details": e.details() or "", "body": "",
                   "metadata": dict(e.trailing_metadata() or ())}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    else:
        client(sys.argv[2])
