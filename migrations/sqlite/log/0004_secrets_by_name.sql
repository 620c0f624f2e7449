-- Signing keys are presented without a tenant (the Inngest protocol's bearer); the
-- server finds them by a digest of the presented key, which is unique across tenants.
CREATE INDEX secrets_by_name ON secrets (name);
