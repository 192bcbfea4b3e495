-- ListOrders across all customers walks this index newest first.
CREATE INDEX orders_newest_first ON orders (create_time DESC, order_id DESC);
