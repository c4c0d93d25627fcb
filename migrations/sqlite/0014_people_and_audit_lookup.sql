-- The console (issue 21). An administrator can stop a person who signed in through the
-- identity provider being assignable (`identity::staff::set_assignable`): the row stays,
-- so the audit's and the timeline's usernames still resolve to a name, and a later
-- sign-in does not undo it (the sign-in upsert leaves these columns alone). NULL: still
-- assignable. Unix seconds, and the administrator's username.
ALTER TABLE console_people ADD COLUMN inactive_since INTEGER;
ALTER TABLE console_people ADD COLUMN inactive_by TEXT;

-- An administrator finds a referral's audit trail by a request id (the audit rows of
-- that request) or by the referral's business identifier, whatever its system or
-- practice, and searches by who acted (a client, a staff person or a proxy: with the
-- proxy indexed too, the three-way OR is three index searches, not a scan of every row).
CREATE INDEX audit_events_by_request ON audit_events (request_id);
CREATE INDEX audit_events_by_proxy ON audit_events (proxy_id, recorded_at);
CREATE INDEX referrals_by_identifier_value ON referrals (identifier_value);
