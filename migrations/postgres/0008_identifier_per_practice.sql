-- PostgreSQL twin of migrations/sqlite/0008_identifier_per_practice.sql: a referral's
-- business identifier is unique per sending practice, not across all practices.
-- PostgreSQL drops the constraint in place (its default name); no rebuild.
ALTER TABLE referrals DROP CONSTRAINT referrals_identifier_system_identifier_value_key;
CREATE UNIQUE INDEX referrals_by_identifier
    ON referrals (COALESCE(practice_ods_code, ''), identifier_system, identifier_value);
