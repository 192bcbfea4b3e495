DROP INDEX notifications_by_customer;
CREATE INDEX notifications_by_customer ON notifications (customer_id, create_time DESC);
