-- The console (issue 21): people who have signed in through the service's identity
-- provider. They have no staff account, and their sessions end and are pruned, so a
-- manager could not otherwise assign them referrals or see their caseload's name.
-- One row per username, written at each sign-in with the name and role the ID token
-- gave then (the last sign-in wins). A staff account of the same username decides
-- over this row (`identity::staff::assignable`). Unix seconds.
CREATE TABLE console_people (
    username          TEXT    NOT NULL PRIMARY KEY,
    display_name      TEXT    NOT NULL,
    role              TEXT    NOT NULL,
    first_signed_in   INTEGER NOT NULL,
    last_signed_in    INTEGER NOT NULL
);
