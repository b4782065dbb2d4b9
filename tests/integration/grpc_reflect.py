#!/usr/bin/python3
"""A small generic gRPC client in the manner of grpcurl: it knows no mailseal .proto file and
learns every service, method and message type from the server's reflection service (issue #5:
"grpcurl-style generic clients work through reflection"; neither grpcurl nor grpc_cli is
packaged in Debian 12).

  grpc_reflect.py --server H:P --cert C --key K --ca CA list
  grpc_reflect.py ... describe SERVICE
  grpc_reflect.py ... call SERVICE/METHOD JSON

Exit codes: 0 ok, 1 the call failed (its gRPC code name on stderr), 2 usage.
"""
import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

REFLECTION_PROTO = "/usr/share/grpc-proto/grpc/reflection/v1alpha/reflection.proto"


def load_reflection():
    out = tempfile.mkdtemp(prefix="grpc-reflect-")
    subprocess.run(["protoc", "-I/usr/share/grpc-proto", f"--python_out={out}", REFLECTION_PROTO], check=True)
    # The generated module lives under a "grpc" package that would shadow grpcio: load it by path.
    path = os.path.join(out, "grpc", "reflection", "v1alpha", "reflection_pb2.py")
    spec = importlib.util.spec_from_file_location("reflection_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Reflector:
    def __init__(self, channel):
        self.pb = load_reflection()
        self.call = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=self.pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=self.pb.ServerReflectionResponse.FromString)
        self.pool = descriptor_pool.DescriptorPool()
        self.loaded = set()

    def ask(self, **kw):
        responses = list(self.call(iter([self.pb.ServerReflectionRequest(**kw)]), timeout=10))
        r = responses[0]
        if r.HasField("error_response"):
            raise RuntimeError(r.error_response.error_message)
        return r

    def services(self):
        return [s.name for s in self.ask(list_services="").list_services_response.service]

    def load_symbol(self, symbol):
        r = self.ask(file_containing_symbol=symbol)
        protos = {}
        for raw in r.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            protos[fd.name] = fd
        self.add(protos)

    def add(self, protos):
        def add_one(name):
            if name in self.loaded:
                return
            fd = protos.get(name)
            if fd is None:   # a dependency the server did not send with this answer: ask for it
                r = self.ask(file_by_filename=name)
                for raw in r.file_descriptor_response.file_descriptor_proto:
                    d = descriptor_pb2.FileDescriptorProto.FromString(raw)
                    protos.setdefault(d.name, d)
                fd = protos[name]
            for dep in fd.dependency:
                add_one(dep)
            self.pool.Add(fd)
            self.loaded.add(name)
        for name in list(protos):
            add_one(name)

    def method(self, full):
        service, method = full.split("/")
        self.load_symbol(service)
        sd = self.pool.FindServiceByName(service)
        return sd.FindMethodByName(method)


def message_class(desc):
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("command", choices=["list", "describe", "call"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    read = lambda p: open(p, "rb").read()
    creds = grpc.ssl_channel_credentials(read(a.ca), read(a.key), read(a.cert))
    channel = grpc.secure_channel(a.server, creds)
    refl = Reflector(channel)
    try:
        if a.command == "list":
            for s in refl.services():
                print(s)
        elif a.command == "describe":
            refl.load_symbol(a.args[0])
            sd = refl.pool.FindServiceByName(a.args[0])
            for m in sd.methods:
                print(f"{m.name}({m.input_type.full_name}) returns ({m.output_type.full_name})")
        else:
            md = refl.method(a.args[0])
            req_cls, resp_cls = message_class(md.input_type), message_class(md.output_type)
            req = json_format.Parse(a.args[1] if len(a.args) > 1 else "{}", req_cls())
            call = channel.unary_unary(f"/{a.args[0]}", request_serializer=req_cls.SerializeToString,
                                       response_deserializer=resp_cls.FromString)
            resp = call(req, timeout=10)
            print(json_format.MessageToJson(resp, preserving_proto_field_name=True))
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
