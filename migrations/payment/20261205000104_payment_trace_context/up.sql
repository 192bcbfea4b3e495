-- The trace context (W3C `traceparent`) of the process-payment record that
-- created the payment, while tracing is on: the settlement worker asks the
-- provider and announces the outcome later, in another task, and its event
-- continues the order's trace from here.
ALTER TABLE payments ADD COLUMN trace_parent TEXT;
