//! Verifying a SMART Backend Services client assertion (RFC 7523 §2.2, a JWT the client
//! signs with its private key to get an access token at `POST /auth/token`).
//!
//! Invariants:
//! - the algorithm is one of [`ASSERTION_ALGORITHMS`] (asymmetric only: `none` and
//!   HMAC, whose "key" would be the client's public key, never verify), and it must fit
//!   the key;
//! - the key is the one the header's `kid` names among the *claimed client's own* keys:
//!   another client's key never verifies, whatever its kid;
//! - `iss` = `sub` = a registered, enabled client id; `aud` = the token URL exactly;
//!   `exp` present, not past and at most five minutes ahead (both with
//!   [`CLOCK_SKEW_SECS`]); `jti` present, and never accepted twice while the assertion
//!   lives (remembered in the store, so a restart does not reopen the window);
//! - error messages never carry the assertion, a claim value other than the client id, or
//!   key material.

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::OAuthError;
use super::clients::ClientRegistry;
use super::keys::KeyChoiceError;
use crate::store::{Store, StoreError};

/// The algorithms a client assertion may be signed with. SMART requires RS384 and ES384;
/// the others are asymmetric and as safe (RS512 is what NHS API Management's clients use).
pub const ASSERTION_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS384,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
];

/// The clock difference allowed between a client and Sprig, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// The longest an assertion may live: its `exp` at most this far ahead.
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 5 * 60;

/// A longer assertion is not read at all.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// The longest `jti` kept.
const MAX_JTI_CHARS: usize = 255;

/// A client assertion that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The client (its `iss` and `sub`).
    pub client_id: String,
    /// The assertion's id.
    pub jti: String,
    /// Its `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Why a client assertion was refused.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    /// Not a JWT, or its header or claims cannot be read, or it is too long.
    #[error("the client assertion is not a readable JWT")]
    Malformed,
    /// Signed with an algorithm Sprig does not accept (`none`, HMAC, or unknown).
    #[error("the client assertion's algorithm {0} is not accepted (use RS384 or ES384)")]
    AlgorithmRefused(String),
    /// No `kid` in the header.
    #[error("the client assertion's header names no kid")]
    MissingKid,
    /// A required claim is missing or has the wrong type.
    #[error("the client assertion has no valid {0} claim")]
    MissingClaim(&'static str),
    /// `iss` and `sub` differ.
    #[error("the client assertion's iss and sub differ")]
    IssuerNotSubject,
    /// `iss` names no registered client.
    #[error("unknown client")]
    UnknownClient,
    /// The client is disabled.
    #[error("client {0} is disabled")]
    ClientDisabled(String),
    /// None of the client's keys has the `kid`, or it does not fit the algorithm.
    #[error("client {client_id}: {reason}")]
    UnknownKey {
        /// The client.
        client_id: String,
        /// Why no key verifies.
        reason: KeyChoiceError,
    },
    /// The signature does not verify with the client's key.
    #[error("client {0}: the client assertion's signature does not verify")]
    BadSignature(String),
    /// `aud` is not the token URL.
    #[error("client {0}: the client assertion's aud is not this token endpoint's URL")]
    WrongAudience(String),
    /// `exp` has passed.
    #[error("client {0}: the client assertion has expired")]
    Expired(String),
    /// `nbf` is in the future.
    #[error("client {0}: the client assertion is not valid yet")]
    NotYetValid(String),
    /// `exp` is more than five minutes ahead.
    #[error("client {0}: the client assertion's exp is more than 5 minutes ahead")]
    TooLongLived(String),
    /// The `jti` was used before.
    #[error("client {0}: the client assertion's jti was used before")]
    Replayed(String),
    /// The store could not remember the `jti`.
    #[error("cannot record the client assertion: {0}")]
    Store(#[from] StoreError),
}

impl AssertionError {
    /// The OAuth error (RFC 6749 §5.2) the token endpoint answers with.
    pub fn oauth_error(&self) -> OAuthError {
        match self {
            AssertionError::Malformed
            | AssertionError::MissingKid
            | AssertionError::MissingClaim(_) => OAuthError::InvalidRequest,
            AssertionError::Store(_) => OAuthError::ServerError,
            _ => OAuthError::InvalidClient,
        }
    }

    /// The client the assertion named, when it named a registered one (for the logs).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            AssertionError::ClientDisabled(id)
            | AssertionError::BadSignature(id)
            | AssertionError::WrongAudience(id)
            | AssertionError::Expired(id)
            | AssertionError::NotYetValid(id)
            | AssertionError::TooLongLived(id)
            | AssertionError::Replayed(id)
            | AssertionError::UnknownKey { client_id: id, .. } => Some(id),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<Value>,
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: Option<Value>,
    sub: Option<Value>,
    aud: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    jti: Option<Value>,
}

/// Checks client assertions for one token endpoint.
#[derive(Debug, Clone)]
pub struct AssertionVerifier {
    token_url: String,
}

impl AssertionVerifier {
    /// A verifier for assertions whose `aud` must be `token_url`, exactly.
    pub fn new(token_url: impl Into<String>) -> Self {
        AssertionVerifier {
            token_url: token_url.into(),
        }
    }

    /// The token URL assertions must name.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Checks `assertion` completely, then remembers its `jti` in `store` (refusing a
    /// replay). `now` is Unix seconds.
    pub async fn verify(
        &self,
        assertion: &str,
        registry: &ClientRegistry,
        store: &Store,
        now: i64,
    ) -> Result<VerifiedAssertion, AssertionError> {
        let verified = self.check(assertion, registry, now)?;
        if !store
            .remember_assertion(&verified.client_id, &verified.jti, verified.expires_at)
            .await?
        {
            return Err(AssertionError::Replayed(verified.client_id));
        }
        Ok(verified)
    }

    /// Every check but replay.
    pub fn check(
        &self,
        assertion: &str,
        registry: &ClientRegistry,
        now: i64,
    ) -> Result<VerifiedAssertion, AssertionError> {
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(AssertionError::Malformed);
        }
        // An algorithm outside jsonwebtoken's list (`none`) fails here.
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| AssertionError::Malformed)?;
        if !ASSERTION_ALGORITHMS.contains(&header.alg) {
            return Err(AssertionError::AlgorithmRefused(format!(
                "{:?}",
                header.alg
            )));
        }
        let kid = header.kid.as_deref().ok_or(AssertionError::MissingKid)?;
        // The claimed client, read before the signature is checked only to find whose
        // keys to check it with; every claim is read again from the verified token.
        let unverified: UnverifiedClaims = jsonwebtoken::dangerous::insecure_decode(assertion)
            .map_err(|_| AssertionError::Malformed)?
            .claims;
        let claimed = match unverified.iss {
            Some(Value::String(iss)) => iss,
            _ => return Err(AssertionError::MissingClaim("iss")),
        };
        let client = registry
            .get(&claimed)
            .ok_or(AssertionError::UnknownClient)?;
        let client_id = client.client_id.clone();
        if !client.enabled {
            return Err(AssertionError::ClientDisabled(client_id));
        }
        let key = client
            .keys
            .select(Some(kid), header.alg)
            .map_err(|reason| AssertionError::UnknownKey {
                client_id: client_id.clone(),
                reason,
            })?;
        let mut validation = Validation::new(header.alg);
        // Claims are checked below, with Sprig's own rules and messages.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims =
            match jsonwebtoken::decode::<AssertionClaims>(assertion, &key.decoding, &validation) {
                Ok(data) => data.claims,
                Err(error) => {
                    return Err(match error.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature
                        | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                        | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                        | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
                        | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => {
                            AssertionError::BadSignature(client_id)
                        }
                        _ => AssertionError::Malformed,
                    });
                }
            };
        let text = |value: Option<Value>, name| match value {
            Some(Value::String(s)) if !s.is_empty() => Ok(s),
            _ => Err(AssertionError::MissingClaim(name)),
        };
        let seconds = |value: Option<Value>, name| match value {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .ok_or(AssertionError::MissingClaim(name)),
            _ => Err(AssertionError::MissingClaim(name)),
        };
        let iss = text(claims.iss, "iss")?;
        let sub = text(claims.sub, "sub")?;
        if iss != sub {
            return Err(AssertionError::IssuerNotSubject);
        }
        if iss != client_id {
            // The signed iss is not the one read before: not this client's assertion.
            return Err(AssertionError::BadSignature(client_id));
        }
        let audience_ok = match &claims.aud {
            Some(Value::String(aud)) => *aud == self.token_url,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|a| a.as_str() == Some(self.token_url.as_str())),
            _ => return Err(AssertionError::MissingClaim("aud")),
        };
        if !audience_ok {
            return Err(AssertionError::WrongAudience(client_id));
        }
        let exp = seconds(claims.exp, "exp")?;
        if exp.saturating_add(CLOCK_SKEW_SECS) < now {
            return Err(AssertionError::Expired(client_id));
        }
        if exp > now + MAX_ASSERTION_LIFETIME_SECS + CLOCK_SKEW_SECS {
            return Err(AssertionError::TooLongLived(client_id));
        }
        if claims.nbf.is_some() && seconds(claims.nbf, "nbf")? > now + CLOCK_SKEW_SECS {
            return Err(AssertionError::NotYetValid(client_id));
        }
        let jti = text(claims.jti, "jti")?;
        if jti.chars().count() > MAX_JTI_CHARS {
            return Err(AssertionError::MissingClaim("jti"));
        }
        Ok(VerifiedAssertion {
            client_id,
            jti,
            expires_at: exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::identity::clients::test_support::registry;
    use crate::identity::keys::test_keys::{TestKey, ec384, rsa};
    use crate::store::test_support::open_store;

    const TOKEN_URL: &str = "https://sprig.example.org/auth/token";
    const NOW: i64 = 1_800_000_000;

    fn claims(client_id: &str) -> Value {
        json!({
            "iss": client_id,
            "sub": client_id,
            "aud": TOKEN_URL,
            "exp": NOW + 240,
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        registry: ClientRegistry,
        ec: TestKey,
        rsa: TestKey,
        other: TestKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = ec384("gp-ec");
        let rsa = rsa("gp-rsa", Algorithm::RS384);
        let other = ec384("other-key");
        let both = json!({ "keys": [ec.public_jwk, rsa.public_jwk] });
        // Writes other-gp.json.
        let _ = registry(
            dir.path(),
            &[("other-gp", "B82001", "system/Task.rs", &other)],
        );
        // gp-a holds two keys: write its JWKS by hand.
        std::fs::write(dir.path().join("gp-a.json"), both.to_string()).expect("write");
        let text = "[[client]]\nclient_id = \"gp-a\"\nods_codes = [\"A81001\"]\nscopes = \"system/*.rs\"\njwks_file = \"gp-a.json\"\n\
                    [[client]]\nclient_id = \"other-gp\"\nods_codes = [\"B82001\"]\nscopes = \"system/Task.rs\"\njwks_file = \"other-gp.json\"\n\
                    [[client]]\nclient_id = \"gone\"\nods_codes = [\"C83001\"]\nscopes = \"system/Task.rs\"\njwks_file = \"other-gp.json\"\nenabled = false\n";
        let registry =
            ClientRegistry::from_toml(text, dir.path(), "clients.toml").expect("registry");
        Fixture {
            _dir: dir,
            registry,
            ec,
            rsa,
            other,
        }
    }

    fn check(f: &Fixture, assertion: &str) -> Result<VerifiedAssertion, AssertionError> {
        AssertionVerifier::new(TOKEN_URL).check(assertion, &f.registry, NOW)
    }

    #[test]
    fn a_valid_assertion_verifies_with_ec_and_rsa_keys() {
        let f = fixture();
        let ec = check(&f, &f.ec.sign(Some("gp-ec"), &claims("gp-a"))).expect("ES384");
        assert_eq!(ec.client_id, "gp-a");
        assert_eq!(ec.expires_at, NOW + 240);
        check(&f, &f.rsa.sign(Some("gp-rsa"), &claims("gp-a"))).expect("RS384");
        for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS384] {
            let key = rsa("gp-rsa", alg);
            check(&f, &key.sign(Some("gp-rsa"), &claims("gp-a")))
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        }
        // aud as an array holding the token URL.
        let mut with_list = claims("gp-a");
        with_list["aud"] = json!([TOKEN_URL, "https://elsewhere"]);
        check(&f, &f.ec.sign(Some("gp-ec"), &with_list)).expect("aud list");
    }

    fn refused(f: &Fixture, assertion: &str) -> AssertionError {
        check(f, assertion).expect_err("refused")
    }

    #[test]
    fn forged_and_wrong_assertions_are_refused() {
        let f = fixture();
        let good = claims("gp-a");
        let with = |change: &dyn Fn(&mut Value)| {
            let mut c = good.clone();
            change(&mut c);
            f.ec.sign(Some("gp-ec"), &c)
        };

        // alg: none, by hand: header {"alg":"none","kid":"gp-ec"}.
        let unsigned = format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIiwia2lkIjoiZ3AtZWMifQ",
            f.ec.sign(Some("gp-ec"), &good)
                .split('.')
                .nth(1)
                .expect("claims part")
        );
        assert!(matches!(refused(&f, &unsigned), AssertionError::Malformed));

        // HS256 "signed" with the client's public key as the secret.
        for secret in [
            f.ec.public_pem.as_bytes(),
            f.ec.public_jwk.to_string().as_bytes(),
        ] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("gp-ec".into());
            let forged = jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(secret))
                .expect("sign");
            let error = refused(&f, &forged);
            assert!(
                matches!(error, AssertionError::AlgorithmRefused(ref a) if a == "HS256"),
                "{error:?}"
            );
        }

        // Another client's key, under its own kid or under gp-a's kid.
        let error = refused(&f, &f.other.sign(Some("other-key"), &good));
        assert!(
            matches!(error, AssertionError::UnknownKey { .. }),
            "{error:?}"
        );
        let error = refused(&f, &f.other.sign(Some("gp-ec"), &good));
        assert!(
            matches!(error, AssertionError::BadSignature(_)),
            "{error:?}"
        );
        // gp-a's RSA key named with the EC kid.
        let error = refused(&f, &f.rsa.sign(Some("gp-ec"), &good));
        assert!(
            matches!(error, AssertionError::UnknownKey { .. }),
            "{error:?}"
        );
        // No kid.
        assert!(matches!(
            refused(&f, &f.ec.sign(None, &good)),
            AssertionError::MissingKid
        ));

        type Change<'a> = &'a dyn Fn(&mut Value);
        type Expected = fn(&AssertionError) -> bool;
        let table: &[(&str, Change<'_>, Expected)] = &[
            (
                "wrong aud",
                &|c| c["aud"] = json!("https://sprig.example.org/auth/token/"),
                |e| matches!(e, AssertionError::WrongAudience(_)),
            ),
            (
                "aud of another server",
                &|c| c["aud"] = json!("https://other.example.org/token"),
                |e| matches!(e, AssertionError::WrongAudience(_)),
            ),
            ("no aud", &|c| c["aud"] = Value::Null, |e| {
                matches!(e, AssertionError::MissingClaim("aud"))
            }),
            ("iss ≠ sub", &|c| c["sub"] = json!("other-gp"), |e| {
                matches!(e, AssertionError::IssuerNotSubject)
            }),
            (
                "exp too far",
                &|c| c["exp"] = json!(NOW + 301 + CLOCK_SKEW_SECS),
                |e| matches!(e, AssertionError::TooLongLived(_)),
            ),
            (
                "expired",
                &|c| c["exp"] = json!(NOW - CLOCK_SKEW_SECS - 1),
                |e| matches!(e, AssertionError::Expired(_)),
            ),
            ("no exp", &|c| c["exp"] = Value::Null, |e| {
                matches!(e, AssertionError::MissingClaim("exp"))
            }),
            ("no jti", &|c| c["jti"] = Value::Null, |e| {
                matches!(e, AssertionError::MissingClaim("jti"))
            }),
            ("empty jti", &|c| c["jti"] = json!(""), |e| {
                matches!(e, AssertionError::MissingClaim("jti"))
            }),
            ("not yet valid", &|c| c["nbf"] = json!(NOW + 600), |e| {
                matches!(e, AssertionError::NotYetValid(_))
            }),
            (
                "unknown client",
                &|c| {
                    c["iss"] = json!("stranger");
                    c["sub"] = json!("stranger");
                },
                |e| matches!(e, AssertionError::UnknownClient),
            ),
        ];
        for (name, change, expected) in table {
            let error = refused(&f, &with(change));
            assert!(expected(&error), "{name}: {error:?}");
        }
        // Within the skew, an expired or early assertion still passes.
        check(&f, &with(&|c| c["exp"] = json!(NOW - CLOCK_SKEW_SECS + 1))).expect("skew");

        // A disabled client's assertion, signed with its own key.
        let error = refused(&f, &f.other.sign(Some("other-key"), &claims("gone")));
        assert!(
            matches!(error, AssertionError::ClientDisabled(_)),
            "{error:?}"
        );

        // Garbage.
        for text in ["", "abc", "a.b.c", &"x".repeat(20_000)] {
            assert!(
                matches!(refused(&f, text), AssertionError::Malformed),
                "{text:.20}"
            );
        }
    }

    #[test]
    fn errors_map_to_oauth_errors_and_carry_no_secrets() {
        let f = fixture();
        let assertion = f.other.sign(Some("gp-ec"), &claims("gp-a"));
        let error = refused(&f, &assertion);
        assert_eq!(error.oauth_error(), OAuthError::InvalidClient);
        assert_eq!(error.client_id(), Some("gp-a"));
        let shown = error.to_string();
        assert!(!shown.contains(&assertion[..20]), "{shown}");
        assert_eq!(refused(&f, "abc").oauth_error(), OAuthError::InvalidRequest);
    }

    #[tokio::test]
    async fn a_replayed_jti_is_refused_even_after_a_restart() {
        let f = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let verifier = AssertionVerifier::new(TOKEN_URL);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let mut c = claims("gp-a");
        c["exp"] = json!(now + 120);
        let assertion = f.ec.sign(Some("gp-ec"), &c);

        let store = open_store(dir.path()).await;
        verifier
            .verify(&assertion, &f.registry, &store, now)
            .await
            .expect("first use");
        let error = verifier
            .verify(&assertion, &f.registry, &store, now)
            .await
            .expect_err("replay");
        assert!(matches!(error, AssertionError::Replayed(_)), "{error:?}");
        store.close().await;

        let store = open_store(dir.path()).await;
        let error = verifier
            .verify(&assertion, &f.registry, &store, now)
            .await
            .expect_err("replay after restart");
        assert!(matches!(error, AssertionError::Replayed(_)), "{error:?}");
        store.close().await;
    }
}
