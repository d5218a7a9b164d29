-- Console sessions signed out before their time: the session lives in a cookie, so a copy of it taken
-- before sign-out would work on until it ends. Each replica refuses a session named here. Rows of
-- sessions past `until` are deleted by the next sign-out.
CREATE TABLE console_sign_outs (
    session text PRIMARY KEY,
    until timestamptz NOT NULL
);
