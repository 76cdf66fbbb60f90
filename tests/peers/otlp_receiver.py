"""Test peer: an OTLP trace receiver built on the official OTLP protobuf definitions
(opentelemetry-proto), for the tests of trace context through Shadowcat.

Usage: otlp_receiver.py [--tls CERT KEY]. Listens on 127.0.0.1 for OTLP/HTTP (POST /v1/traces,
protobuf or JSON) and OTLP/gRPC (TraceService/Export), on ports of its own choosing, and prints
one line when ready: ``READY grpc=<port> http=<port>``; with ``--tls``, also over TLS with that
certificate (PEM files) on two more ports, ``grpcs=<port> https=<port>``, whose spans say
``transport`` ``grpcs`` or ``https``. ``GET /spans`` on the HTTP port answers every
span received so far as a JSON list (name, kind, ids in hex, parent, attributes, status,
links, resource); ``DELETE /spans`` forgets them. It runs until killed.
"""

import gzip
import json
import ssl
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SPANS = []
LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def ingest(request, transport):
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append({
                    "transport": transport,
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "name": s.name,
                    "kind": Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_").lower(),
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "attributes": attributes(s.attributes),
                    "events": [{"name": e.name, "attributes": attributes(e.attributes)} for e in s.events],
                    "status": Status.StatusCode.Name(s.status.code).removeprefix("STATUS_CODE_").lower(),
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in s.links],
                })
    with LOCK:
        SPANS.extend(spans)


class Traces(TraceServiceServicer):
    def Export(self, request, context):
        secure = context.auth_context().get("transport_security_type") == [b"ssl"]
        ingest(request, "grpcs" if secure else "grpc")
        return ExportTraceServiceResponse()


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body=b"", content_type="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path != "/spans":
            return self.answer(404)
        with LOCK:
            return self.answer(200, json.dumps(SPANS).encode())

    def do_DELETE(self):
        if self.path != "/spans":
            return self.answer(404)
        with LOCK:
            SPANS.clear()
        return self.answer(200)

    def do_POST(self):
        if self.path != "/v1/traces":
            return self.answer(404)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        request = ExportTraceServiceRequest()
        try:
            if content_type == "application/json":
                json_format.Parse(body, request)
            else:
                request.ParseFromString(body)
        except Exception as e:  # OTLP/HTTP: a malformed request is 400.
            return self.answer(400, str(e).encode(), "text/plain")
        ingest(request, "https" if isinstance(self.connection, ssl.SSLSocket) else "http")
        return self.answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_TraceServiceServicer_to_server(Traces(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    ready = f"grpc={grpc_port}"
    tls = sys.argv[2:4] if sys.argv[1:2] == ["--tls"] else None
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        grpcs_port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)])
        )
        ready += f" grpcs={grpcs_port}"
    server.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    ready += f" http={http.server_address[1]}"
    if tls:
        https = ThreadingHTTPServer(("127.0.0.1", 0), Http)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        https.socket = context.wrap_socket(https.socket, server_side=True)
        threading.Thread(target=https.serve_forever, daemon=True).start()
        ready += f" https={https.server_address[1]}"
    print(f"READY {ready}", flush=True)
    server.wait_for_termination()


main()
