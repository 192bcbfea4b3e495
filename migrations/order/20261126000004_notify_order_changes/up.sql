-- Tells WatchOrder listeners that an order changed: `<order_id> <version>`
-- on channel `order_changes`. PostgreSQL delivers it when the transaction
-- commits, and not at all if it rolls back.
CREATE FUNCTION notify_order_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_changes', NEW.order_id::text || ' ' || NEW.version::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_notify_change
    AFTER INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION notify_order_change();
