-- Issue 22: the milestones an outcomes contract pays on, as structured events beside the
-- stage (`referral::milestone`). Append-only evidence: a later complexity assessment
-- supersedes an earlier one by its day, nothing is updated in place.
CREATE TABLE referral_milestones (
    id           TEXT    NOT NULL PRIMARY KEY,
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    -- 'initial-assessment', 'action-plan', 'complexity' or 'discharge'
    kind         TEXT    NOT NULL,
    -- the day it happened, YYYY-MM-DD (UK date)
    occurred_on  TEXT    NOT NULL,
    -- complexity: 1 complex, 0 not; otherwise NULL
    complex      INTEGER,
    -- complexity: what the assessment found
    basis        TEXT,
    -- discharge: the reason's code
    reason       TEXT,
    recorded_at  TEXT    NOT NULL,
    recorded_by  TEXT    NOT NULL
);

CREATE INDEX referral_milestones_by_referral ON referral_milestones (referral_id, occurred_on);
