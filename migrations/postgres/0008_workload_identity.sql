-- Sign-in with a workload identity: issuers whose JWTs the server trusts, and roles that
-- turn a verified JWT whose claims match into a short-lived token.

-- An issuer: its `iss`, the audience its tokens must carry, and where its public keys
-- come from (a JWKS URL the server fetches, or a JWKS document kept here).
create table identity_issuer (
    id text primary key,
    issuer text not null unique,
    audience text not null,
    jwks_url text,
    jwks text,
    created bigint not null
);

-- A role: which issuer, the claims a JWT must match (JSON object, claim -> glob), and the
-- scopes, grants (JSON) and lifetime (seconds) of the token it issues.
create table identity_role (
    name text primary key,
    issuer_id text not null references identity_issuer (id),
    claims text not null,
    scopes text not null,
    grants text not null,
    ttl bigint not null,
    created bigint not null
);
