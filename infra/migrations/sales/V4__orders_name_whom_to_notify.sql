-- The address a client gave for notifications about the order (`contact_email`), when it gave one.
ALTER TABLE orders ADD COLUMN contact_email text;
