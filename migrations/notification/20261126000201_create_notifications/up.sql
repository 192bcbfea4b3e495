-- One notification per (order, kind): a redelivered event records nothing new.
CREATE TABLE notifications (
    notification_id BIGSERIAL PRIMARY KEY,
    order_id UUID NOT NULL,
    customer_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('ORDER_RECEIVED', 'PAYMENT_SUCCEEDED')),
    message TEXT NOT NULL,
    create_time TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_id, kind)
);

CREATE INDEX notifications_by_customer ON notifications (customer_id, create_time DESC);
