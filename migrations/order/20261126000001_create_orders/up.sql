-- One row per order, written when `order-created` is consumed. The primary
-- key is the gateway's order id, so a redelivered event inserts nothing.
CREATE TABLE orders (
    order_id UUID PRIMARY KEY,
    customer_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    -- Exact money: hundredths of the currency unit.
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency_code TEXT NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    request_id TEXT,
    status TEXT NOT NULL CHECK (status IN ('AWAITING_PAYMENT', 'PAID', 'CANCELLED')),
    payment_id UUID,
    -- Bumped by every change, for optimistic checks and change feeds.
    version INTEGER NOT NULL DEFAULT 1,
    -- When the gateway accepted the order.
    create_time TIMESTAMPTZ NOT NULL,
    update_time TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX orders_by_customer ON orders (customer_id, create_time DESC, order_id DESC);
