DROP TRIGGER orders_notify_change ON orders;
DROP FUNCTION notify_order_change();
