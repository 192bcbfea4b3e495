-- One payment per order: the unique order id makes a redelivered
-- `process-payment` event charge nothing twice.
CREATE TABLE payments (
    payment_id UUID PRIMARY KEY,
    order_id UUID NOT NULL UNIQUE,
    customer_id TEXT NOT NULL,
    -- Exact money: hundredths of the currency unit.
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency_code TEXT NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    status TEXT NOT NULL CHECK (status IN ('COMPLETED')),
    create_time TIMESTAMPTZ NOT NULL DEFAULT now()
);
