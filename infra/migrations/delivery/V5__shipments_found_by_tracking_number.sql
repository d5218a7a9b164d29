-- The console searches shipments by tracking number; only shipped ones have one.
CREATE INDEX shipments_by_tracking_number ON shipments (tracking_number) WHERE tracking_number IS NOT NULL;
