-- ListNotifications walks a customer's notifications oldest first by
-- (create_time, notification_id); an order's few are found by the
-- (order_id, kind) unique index.
DROP INDEX notifications_by_customer;
CREATE INDEX notifications_by_customer ON notifications (customer_id, create_time, notification_id);
