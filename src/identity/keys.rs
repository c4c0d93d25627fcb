//! Public keys from JWK Sets (a client's registry entry, an identity provider's JWKS) and
//! the choice of the key that verifies one JWT.
//!
//! Invariants:
//! - only RSA (2048 bits or more) and EC P-256/P-384 public keys are held: a symmetric
//!   (`oct`) key, an unknown key type, or any private key parameter refuses the whole set
//!   (a private key in a registry is a leak to report, not a key to use);
//! - a JWT's algorithm must be one the caller allows (never read as permission from the
//!   token), fit the key's type and curve, and equal the key's own `alg` when it has one;
//! - nothing here prints key material: errors name key ids and types only.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// JWK members that only a private key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The shortest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// The kind of a held key, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA: RS256/384/512, PS256/384/512.
    Rsa,
    /// EC P-256: ES256.
    P256,
    /// EC P-384: ES384.
    P384,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
        }
    }
}

/// One public key.
pub(crate) struct PublicKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Option<Algorithm>,
    pub(crate) kind: KeyKind,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Public keys, as from one JWK Set.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<PublicKey>,
}

/// Why no key verifies a JWT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyChoiceError {
    /// No key has the JWT's `kid`.
    #[error("no key with the kid the JWT names")]
    UnknownKid,
    /// The JWT names no `kid` and more than one key could verify it.
    #[error("the JWT names no kid and more than one key could verify it")]
    Ambiguous,
    /// The key cannot verify the JWT's algorithm.
    #[error("the key with that kid does not verify {0:?}")]
    AlgorithmMismatch(Algorithm),
}

impl KeySet {
    /// Parses a JWK Set (`{"keys": [...]}`); with `kid_required`, every key must have a
    /// `kid`, unique in the set. Errors name the key by its place and `kid`.
    pub(crate) fn from_jwks(value: &Value, kid_required: bool) -> Result<KeySet, String> {
        let keys = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWK Set is an object with a \"keys\" array")?;
        if keys.is_empty() {
            return Err("the JWK Set has no keys".into());
        }
        let mut set = KeySet::default();
        for (index, key) in keys.iter().enumerate() {
            let parsed = parse_key(key).map_err(|m| format!("key {}: {m}", index + 1))?;
            if kid_required && parsed.kid.is_none() {
                return Err(format!(
                    "key {}: no kid (assertions name their key by kid)",
                    index + 1
                ));
            }
            if parsed.kid.is_some() && set.keys.iter().any(|k| k.kid == parsed.kid) {
                return Err(format!(
                    "key {}: kid {:?} is used twice",
                    index + 1,
                    parsed.kid.as_deref().unwrap_or_default()
                ));
            }
            set.keys.push(parsed);
        }
        Ok(set)
    }

    /// A set holding one JWK.
    pub(crate) fn from_jwk(value: &Value, kid_required: bool) -> Result<KeySet, String> {
        Self::from_jwks(
            &serde_json::json!({ "keys": [value.clone()] }),
            kid_required,
        )
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds a key with this `kid`.
    #[cfg(test)]
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The key that verifies a JWT with this `kid` and `alg` (already checked to be an
    /// allowed algorithm): the key with that kid, or, without a kid, the one key that fits.
    pub(crate) fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<&PublicKey, KeyChoiceError> {
        let key = match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(KeyChoiceError::UnknownKid)?,
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.kind.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => key,
                    (None, _) => return Err(KeyChoiceError::UnknownKid),
                    (Some(_), Some(_)) => return Err(KeyChoiceError::Ambiguous),
                }
            }
        };
        if !key.kind.fits(alg) || key.alg.is_some_and(|own| own != alg) {
            return Err(KeyChoiceError::AlgorithmMismatch(alg));
        }
        Ok(key)
    }
}

fn parse_key(value: &Value) -> Result<PublicKey, String> {
    let object = value.as_object().ok_or("a JWK is a JSON object")?;
    let kid = match object.get("kid") {
        None => None,
        Some(Value::String(kid)) if !kid.is_empty() => Some(kid.clone()),
        Some(_) => return Err("kid: must be a non-empty string".into()),
    };
    let named = |message: &str| match &kid {
        Some(kid) => format!("{kid:?}: {message}"),
        None => message.to_owned(),
    };
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| object.contains_key(**m)) {
        return Err(named(&format!(
            "holds the private member {member:?}: give public keys only (and replace a \
             private key that was shared)"
        )));
    }
    if let Some(usage) = object.get("use").and_then(Value::as_str)
        && usage != "sig"
    {
        return Err(named(&format!(
            "use {usage:?}: only signing keys (\"sig\") verify JWTs"
        )));
    }
    let jwk: Jwk =
        serde_json::from_value(value.clone()).map_err(|e| named(&format!("not a JWK: {e}")))?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            // base64url without padding: 4 characters per 3 bytes.
            if rsa.n.len() * 3 / 4 < MIN_RSA_MODULUS_BYTES {
                return Err(named("an RSA key must be at least 2048 bits"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            _ => return Err(named("an EC key must be on P-256 or P-384")),
        },
        _ => {
            return Err(named(
                "only RSA and EC (P-256, P-384) public keys are accepted",
            ));
        }
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => {
            let alg =
                Algorithm::try_from(alg).map_err(|_| named("alg: not a JWS signing algorithm"))?;
            if !kind.fits(alg) {
                return Err(named(&format!("alg {alg:?} does not fit the key's type")));
            }
            Some(alg)
        }
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| named(&format!("unusable key: {e}")))?;
    Ok(PublicKey {
        kid,
        alg,
        kind,
        decoding,
    })
}

/// Test keys: real key pairs made in the test, their public JWKs, and JWTs signed with
/// them.
#[cfg(test)]
pub(crate) mod test_keys {
    use std::sync::OnceLock;

    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::Value;

    /// A private key (for signing) and its public JWK.
    pub struct TestKey {
        pub encoding: EncodingKey,
        pub alg: Algorithm,
        pub public_jwk: Value,
        pub public_pem: String,
    }

    impl TestKey {
        fn from_pem(pem: &str, alg: Algorithm, kid: &str) -> TestKey {
            let encoding = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .expect("private key");
            let jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK");
            let mut public_jwk = serde_json::to_value(&jwk).expect("JWK as JSON");
            public_jwk["kid"] = Value::String(kid.into());
            // Any algorithm that fits the key; a test wanting one sets `alg` itself.
            if let Some(object) = public_jwk.as_object_mut() {
                object.remove("alg");
            }
            let public_pem = rcgen::KeyPair::from_pem(pem)
                .expect("key pair")
                .public_key_pem();
            TestKey {
                encoding,
                alg,
                public_jwk,
                public_pem,
            }
        }

        /// `claims` signed with this key, `kid` in the header.
        pub fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
            let mut header = Header::new(self.alg);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
        }

        /// `{"keys": [this key's public JWK]}`.
        pub fn jwks(&self) -> Value {
            serde_json::json!({ "keys": [self.public_jwk] })
        }
    }

    fn ec(alg: &'static rcgen::SignatureAlgorithm) -> String {
        rcgen::KeyPair::generate_for(alg)
            .expect("EC key generation")
            .serialize_pem()
    }

    /// An EC P-384 key (ES384) with kid `kid`, new each call.
    pub fn ec384(kid: &str) -> TestKey {
        TestKey::from_pem(&ec(&rcgen::PKCS_ECDSA_P384_SHA384), Algorithm::ES384, kid)
    }

    /// An EC P-256 key (ES256) with kid `kid`, new each call.
    pub fn ec256(kid: &str) -> TestKey {
        TestKey::from_pem(&ec(&rcgen::PKCS_ECDSA_P256_SHA256), Algorithm::ES256, kid)
    }

    /// The run's 2048-bit RSA key (RS384) with kid `kid`: RSA generation is slow, so one
    /// key per test run.
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        static PEM: OnceLock<String> = OnceLock::new();
        let pem = PEM.get_or_init(|| {
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .expect("RSA key generation (rcgen with aws-lc-rs)")
                .serialize_pem()
        });
        TestKey::from_pem(pem, alg, kid)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::test_keys::{ec256, ec384, rsa};
    use super::*;

    #[test]
    fn keys_are_chosen_by_kid_and_must_fit_the_algorithm() {
        let ec = ec384("ec-1");
        let rsa = rsa("rsa-1", Algorithm::RS384);
        let set = KeySet::from_jwks(&json!({ "keys": [ec.public_jwk, rsa.public_jwk] }), true)
            .expect("set");
        assert_eq!(set.len(), 2);
        assert!(set.has_kid("ec-1"));
        assert_eq!(
            set.select(Some("ec-1"), Algorithm::ES384)
                .expect("fits")
                .kind,
            KeyKind::P384
        );
        assert_eq!(
            set.select(Some("rsa-1"), Algorithm::PS384)
                .expect("fits")
                .kind,
            KeyKind::Rsa
        );
        assert_eq!(
            set.select(Some("ec-1"), Algorithm::RS384).map(|_| ()),
            Err(KeyChoiceError::AlgorithmMismatch(Algorithm::RS384))
        );
        assert_eq!(
            set.select(Some("ec-1"), Algorithm::ES256).map(|_| ()),
            Err(KeyChoiceError::AlgorithmMismatch(Algorithm::ES256))
        );
        assert_eq!(
            set.select(Some("other"), Algorithm::ES384).map(|_| ()),
            Err(KeyChoiceError::UnknownKid)
        );
        // Without a kid, only when one key fits.
        assert!(set.select(None, Algorithm::ES384).is_ok());
        let two_ec = KeySet::from_jwks(
            &json!({ "keys": [ec.public_jwk, ec384("ec-2").public_jwk] }),
            true,
        )
        .expect("set");
        assert_eq!(
            two_ec.select(None, Algorithm::ES384).map(|_| ()),
            Err(KeyChoiceError::Ambiguous)
        );
    }

    #[test]
    fn a_key_with_its_own_alg_verifies_only_that_one() {
        let mut jwk = rsa("r", Algorithm::RS384).public_jwk;
        jwk["alg"] = json!("RS384");
        let set = KeySet::from_jwk(&jwk, true).expect("set");
        assert!(set.select(Some("r"), Algorithm::RS384).is_ok());
        assert!(set.select(Some("r"), Algorithm::RS256).is_err());
        jwk["alg"] = json!("ES384");
        assert!(KeySet::from_jwk(&jwk, true).is_err());
    }

    #[test]
    fn unusable_keys_refuse_the_set() {
        let ec = ec256("e").public_jwk;
        let mut private = ec.clone();
        private["d"] = json!("c2VjcmV0");
        let mut no_kid = ec.clone();
        no_kid.as_object_mut().expect("object").remove("kid");
        let mut encryption = ec.clone();
        encryption["use"] = json!("enc");
        let mut short_rsa = rsa("r", Algorithm::RS256).public_jwk;
        short_rsa["n"] = json!("AQAB".repeat(40));
        let table: &[(Value, &str)] = &[
            (private, "private member \"d\""),
            (
                json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "h" }),
                "private member \"k\"",
            ),
            (
                json!({ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "o" }),
                "only RSA and EC",
            ),
            (no_kid, "no kid"),
            (encryption, "only signing keys"),
            (short_rsa, "at least 2048 bits"),
            (json!({ "kty": "EC" }), "only RSA and EC"),
        ];
        for (key, problem) in table {
            let error = KeySet::from_jwks(&json!({ "keys": [key] }), true).expect_err(problem);
            assert!(error.contains(problem), "{problem}: {error}");
            assert!(!error.contains("c2VjcmV0"), "{error}");
        }
        let twice = KeySet::from_jwks(&json!({ "keys": [ec, ec] }), true).expect_err("twice");
        assert!(twice.contains("used twice"), "{twice}");
        assert!(KeySet::from_jwks(&json!({ "keys": [] }), true).is_err());
        assert!(KeySet::from_jwks(&json!([]), true).is_err());
    }
}
