//! The spans of a batch, made only while tracing is on. Each record gets a
//! span that continues the trace its headers carry (a child of the record's
//! context, as OpenTelemetry's messaging conventions say), with its topic,
//! partition, offset and key. A batch of several records gets a span of
//! its own, linked to every record's context; a batch of one uses its
//! record's span. The batch's database work gets a client span under it,
//! in which the handler applies the batch, so the handler's log lines
//! carry the record's trace id, or for a larger batch the batch's, whose
//! links lead to each record. The record spans, not the current span, are
//! the causes of the events the batch writes (`telemetry::causes`); they
//! end when the batch commits.

use std::future::Future;

use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::InboundRecord;
use crate::telemetry::causes::{Causes, with_causes};
use crate::telemetry::propagation::{self, context_from_record};

pub(crate) struct BatchSpans {
    batch: tracing::Span,
    causes: Causes,
    /// Held until the batch commits, or fails.
    _records: Vec<tracing::Span>,
}

/// The spans of `batch` of `topic`'s `partition`; `None` while tracing is
/// off.
pub(super) fn for_batch(
    topic: &str,
    partition: i32,
    batch: &[InboundRecord],
) -> Option<BatchSpans> {
    if !propagation::is_enabled() {
        return None;
    }
    let name = format!("process {topic}");
    let mut causes = Causes::with_capacity(batch.len());
    let mut records = Vec::with_capacity(batch.len());
    let mut contexts = Vec::with_capacity(batch.len());
    for record in batch {
        let parent = context_from_record(&record.headers);
        contexts.push(parent.span().span_context().clone());
        let key = record.key.as_deref().unwrap_or_default();
        let span = tracing::info_span!(
            parent: None,
            "consume record",
            otel.name = %name,
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = topic,
            messaging.destination.partition.id = %partition,
            messaging.kafka.offset = record.offset,
            messaging.kafka.message.key = %String::from_utf8_lossy(key),
        );
        let _ = span.set_parent(parent);
        // A key repeated in the batch: its first record is the one that
        // took effect (handlers ignore repeats).
        causes.entry(key.to_vec()).or_insert_with(|| span.context());
        records.push(span);
    }
    let batch_span = match records.as_slice() {
        // Most batches under a steady load hold one record; its span is
        // the batch's, which spares a span per record.
        [only] => only.clone(),
        _ => {
            let span = tracing::info_span!(
                parent: None,
                "consume batch",
                otel.name = %name,
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.destination.name = topic,
                messaging.destination.partition.id = %partition,
                messaging.batch.message_count = batch.len(),
            );
            for context in contexts {
                span.add_link(context);
            }
            span
        }
    };
    Some(BatchSpans {
        batch: batch_span,
        causes,
        _records: records,
    })
}

/// Runs `commit` with the batch's records as causes, in a client span for
/// the database work (checkout, transaction, commit) under the batch's
/// span; or as it is when there are no spans. Each try of a retried batch
/// gets a transaction span of its own under the same batch span.
pub(super) async fn traced<F: Future>(spans: Option<&BatchSpans>, commit: F) -> F::Output {
    match spans {
        Some(spans) => {
            let transaction = tracing::info_span!(
                parent: &spans.batch,
                "batch transaction",
                otel.name = "postgresql transaction",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.name = "transaction",
            );
            // Its explicit parent is the batch span, so that one need not
            // be entered too.
            let commit = commit.instrument(transaction);
            with_causes(spans.causes.clone(), commit).await
        }
        None => commit.await,
    }
}
