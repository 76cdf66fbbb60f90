"""Shared by the Python peers: with OTLP_TRACES_URL set (an OTLP/HTTP endpoint such as
http://127.0.0.1:4318/v1/traces), the OpenTelemetry SDK exports this process's spans there,
each as it ends, as service OTEL_SERVICE_NAME. The MCP SDK (2.x) makes its own spans and
carries their context in `params._meta.traceparent` (SEP-414); this only gives them somewhere
to go."""

import os


def install() -> None:
    url = os.environ.get("OTLP_TRACES_URL")
    if not url:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "peer")}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
