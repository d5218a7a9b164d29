//! Trace context across messages: the W3C `traceparent` of the current span, written into what a change
//! sends, and the spans that continue it where a message is published or consumed.
//!
//! Spans are `tracing` spans; OpenTelemetry (set up by the service's telemetry) gives them their trace
//! and span ids and propagates them with the global propagator. Without it the functions here are
//! inert: no context is read, none is continued.

use std::collections::HashMap;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use orderflow_messages::CloudEvent;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (AMQP, Kafka, HTTP) and CloudEvents attribute carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, which a message written now continues; `None` outside any
/// traced span.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span`, `None` when it has no valid trace context.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier.remove(TRACEPARENT)
}

/// Whether `traceparent` says its trace is sampled (its flags' lowest bit), so its spans are recorded.
pub fn sampled(traceparent: &str) -> bool {
    traceparent
        .rsplit('-')
        .next()
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .is_some_and(|flags| flags & 1 == 1)
}

/// Makes `span` a child of the remote span `traceparent` names. A missing or malformed one leaves
/// `span` where it is (a root, or a child of the span current when it was created).
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = remote(traceparent) {
        // Fails only when the span was already started, which the callers here never do.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

fn remote(traceparent: Option<&str>) -> Option<SpanContext> {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent?.to_owned())]);
    let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier));
    let remote = context.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

/// The PRODUCER span of publishing `messages` to `destination` in one round, or `None` when none of them
/// is of a sampled trace. It joins the messages' writers (the spans that wrote their outbox rows, whose
/// trace contexts they carry) as [`joint_span`] says, and names the message when it is alone
/// (`messaging.message.id`) or counts them (`messaging.batch.message_count`).
pub fn producer_span(destination: &str, messages: &[&CloudEvent]) -> Option<Span> {
    joint_span(messages.iter().map(|message| message.traceparent.as_deref()), || {
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = %format_args!("publish {destination}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            messaging.operation.type = "send",
            messaging.destination.name = destination,
            messaging.message.id = tracing::field::Empty,
            messaging.batch.message_count = tracing::field::Empty,
        );
        match messages {
            [one] => span.record("messaging.message.id", one.id.to_string()),
            several => span.record("messaging.batch.message_count", several.len()),
        };
        span
    })
}

/// The span `make` makes, for work done at once for several traced things whose contexts are
/// `traceparents` (messages' writers, shipments' creations): under the first of a sampled trace, linked to
/// every other sampled one, so each trace leads to the work done for it, as [`batch_span`] joins
/// deliveries. One span a round, not one a thing, is what keeps tracing's cost from growing with the
/// load. `None` when no context is of a sampled trace: a span nobody records would only cost its time.
pub fn joint_span<'a>(
    traceparents: impl IntoIterator<Item = Option<&'a str>>,
    make: impl FnOnce() -> Span,
) -> Option<Span> {
    let mut contexts: Vec<SpanContext> = Vec::new();
    for traceparent in traceparents {
        let Some(context) = traceparent.filter(|t| sampled(t)).and_then(|t| remote(Some(t))) else { continue };
        if !contexts.iter().any(|known| known.span_id() == context.span_id()) {
            contexts.push(context);
        }
    }
    let mut contexts = contexts.into_iter();
    let parent = contexts.next()?;
    let span = make();
    // Fails only when the span was already started, which it is not.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    for other in contexts {
        span.add_link(other);
    }
    Some(span)
}

/// The CONSUMER span of handling one delivery from `queue` on `system` (`rabbitmq`, or the in-process
/// bus), a child of the span that wrote the message (its creation context, which it carries). The
/// handler's work on the delivery runs inside it, so what that work sends continues the same trace.
pub fn consumer_span(
    system: &'static str,
    queue: &str,
    message_id: Option<&str>,
    retries: u32,
    traceparent: Option<&str>,
) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.destination.name = queue,
        messaging.message.id = message_id.unwrap_or_default(),
        orderflow.retry_count = retries,
    );
    continue_trace(&span, traceparent);
    span
}

/// Sets `span`'s status to `Error`, described by `error`. The span must have been created with the
/// `otel.status_code` and `otel.status_description` fields (the spans made here are).
pub fn mark_failed(span: &Span, error: &str) {
    span.record("otel.status_code", "error");
    span.record("otel.status_description", error);
}

/// The span a handler of several deliveries runs their joint work in: a delivery's own span when it is
/// alone; for a batch, a span under the first delivery's, linked to every other's, so each trace leads
/// to the work done for it.
pub fn batch_span(queue: &str, spans: &[&Span]) -> Span {
    match spans {
        [] => Span::none(),
        [one] => (*one).clone(),
        [first, rest @ ..] => {
            let span = tracing::info_span!(
                parent: *first,
                "process batch",
                otel.name = %format_args!("process batch {queue}"),
                messaging.batch.message_count = spans.len(),
            );
            for other in rest {
                span.add_link(other.context().span().span_context().clone());
            }
            span
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_traceparent_with_the_sampled_flag_is_sampled() {
        assert!(sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"));
        assert!(!sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"));
        assert!(!sampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz"));
        assert!(!sampled(""));
    }
}
