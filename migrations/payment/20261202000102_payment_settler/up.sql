-- The instance whose settlement worker takes the payment to the provider:
-- the one that recorded it, until it is gone (see the members table) and
-- another adopts the payment. So with several payment instances, a payment
-- whose call is in flight is not asked about again by another.
ALTER TABLE payments
    ADD COLUMN settler TEXT DEFAULT NULLIF(current_setting('oms.instance_id', true), '');
