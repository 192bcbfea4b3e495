DROP INDEX orders_newest_first;
