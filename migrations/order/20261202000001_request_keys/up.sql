-- Idempotency keys reserved by the gateway before it publishes an order:
-- the order id derived from (customer_id, request_id), bound to the
-- fingerprint of the first request's content. A row is never updated or
-- deleted, so the first claim of a key decides it for good.
CREATE TABLE request_keys (
    order_id UUID PRIMARY KEY,
    fingerprint UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
