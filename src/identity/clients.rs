//! The client registry: the GP systems and other machine clients that may call Sprig,
//! read from a TOML file (`clients.example.toml` documents every key), checked whole
//! before use, and reloadable while Sprig runs (`Clients`, as `delivery::endpoints`).
//!
//! Invariants:
//! - a registry is used only whole and checked: every client has a unique id, its own
//!   public keys (or a certificate mapping), valid `system/` scopes, and ODS codes (a
//!   trusted proxy may have none: it passes the end-user organisation per request);
//! - a reload that fails keeps the registry in use; errors are `file:line:col: message`
//!   and never quote key material;
//! - a disabled client is in the registry (so its tokens can be refused by name) but
//!   `Client::enabled` is false, and the authenticator checks it on every request.

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::located::{LocatedError, TomlText};
use crate::reload::{Reloadable, ReloadableFile};

use super::keys::KeySet;
use super::scopes::Scopes;
use crate::fhir::identifiers::OdsCode;

/// A registry file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientRegistryError {
    /// The file cannot be read.
    #[error("cannot read the client registry {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A mistake in the file, at a line and column: `file:line:column: message`, the file
    /// as named to the registry and the message naming the client and key.
    #[error(transparent)]
    Invalid(#[from] LocatedError),
}

/// One registered client.
#[derive(Debug)]
pub struct Client {
    /// The client id: its assertions' `iss` and `sub`.
    pub client_id: String,
    /// The organisations it acts for.
    pub ods_codes: Vec<OdsCode>,
    /// The most it may be granted.
    pub scopes: Scopes,
    /// Whether it may call Sprig now.
    pub enabled: bool,
    /// Whether it may pass the end-user organisation in `NHSD-End-User-Organisation`
    /// (the BaRS proxy).
    pub trusted_proxy: bool,
    /// The TLS client certificate subject that identifies it, if it connects with one.
    pub certificate_subject: Option<String>,
    /// A subject alternative name (DNS name or URI) that identifies it.
    pub certificate_san: Option<String>,
    pub(crate) keys: KeySet,
    /// What the entry was made from, to compare two loads.
    fingerprint: u64,
}

impl Client {
    /// Whether the client has public keys to verify its assertions with.
    pub fn has_keys(&self) -> bool {
        self.keys.len() > 0
    }
}

/// The clients by id, as loaded from one registry file.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: BTreeMap<String, Arc<Client>>,
    /// The JWKS files the entries read, for the watcher to notice a key rotated in place.
    referenced_files: Vec<PathBuf>,
}

impl ClientRegistry {
    /// No clients.
    pub fn empty() -> Self {
        ClientRegistry::default()
    }

    /// Reads and checks the registry file at `path`; relative paths in it are relative
    /// to its folder.
    pub fn load(path: &Path) -> Result<Self, ClientRegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientRegistryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::from_toml(&text, base_dir, &path.display().to_string())
    }

    /// Checks registry text. `base_dir` resolves relative file paths; `origin` names the
    /// text in errors (`origin:line:column: problem`).
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        origin: &str,
    ) -> Result<Self, ClientRegistryError> {
        let source = Source { origin, text };
        let file: RegistryFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            source.error(e.span().map_or(0, |s| s.start), message)
        })?;
        let mut registry = ClientRegistry::empty();
        for entry in &file.client {
            let (client, files) = resolve(&source, entry, base_dir)?;
            if registry.clients.contains_key(&client.client_id) {
                return Err(source.error_at(
                    &entry.get_ref().client_id.span(),
                    format!(
                        "client {}: client_id: a second entry for this client",
                        client.client_id
                    ),
                ));
            }
            registry.referenced_files.extend(files);
            registry
                .clients
                .insert(client.client_id.clone(), Arc::new(client));
        }
        // One certificate identifies one client.
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for entry in &file.client {
            let Some(client) = registry.clients.get(entry.get_ref().client_id.get_ref()) else {
                continue;
            };
            for name in [&client.certificate_subject, &client.certificate_san]
                .into_iter()
                .flatten()
            {
                if let Some(other) = seen.insert(name.clone(), client.client_id.clone()) {
                    return Err(source.error_at(
                        &entry.span(),
                        format!(
                            "client {}: certificate {name:?} already identifies client {other}",
                            client.client_id
                        ),
                    ));
                }
            }
        }
        Ok(registry)
    }

    /// The client with this id, enabled or not.
    pub fn get(&self, client_id: &str) -> Option<Arc<Client>> {
        self.clients.get(client_id).cloned()
    }

    /// The client a TLS client certificate identifies: by exact subject, or by one of
    /// its subject alternative names.
    pub fn by_certificate(&self, subject: &str, sans: &[String]) -> Option<Arc<Client>> {
        self.clients
            .values()
            .find(|c| {
                c.certificate_subject.as_deref() == Some(subject)
                    || c.certificate_san
                        .as_ref()
                        .is_some_and(|san| sans.iter().any(|s| s == san))
            })
            .cloned()
    }

    /// Every client, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.values()
    }

    /// How many clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The registry file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    client: Vec<Spanned<EntryConfig>>,
}

/// One `[[client]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryConfig {
    client_id: Spanned<String>,
    #[serde(default)]
    jwks_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    jwks: Option<toml::Value>,
    #[serde(default)]
    jwk: Option<toml::Value>,
    #[serde(default)]
    ods_codes: Option<Spanned<Vec<String>>>,
    scopes: Spanned<String>,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    #[serde(default)]
    trusted_proxy: bool,
    #[serde(default)]
    certificate_subject: Option<Spanned<String>>,
    #[serde(default)]
    certificate_san: Option<Spanned<String>>,
}

fn enabled_by_default() -> bool {
    true
}

/// The registry text, for locating errors.
struct Source<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> ClientRegistryError {
        ClientRegistryError::Invalid(TomlText::new(self.origin, self.text).error(offset, message))
    }

    fn error_at(&self, span: &Range<usize>, message: impl Into<String>) -> ClientRegistryError {
        self.error(span.start, message)
    }
}

/// A client id: what `iss`/`sub` carry and logs show. Printable ASCII without spaces.
fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        return Err("must be 1 to 256 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces".into());
    }
    Ok(())
}

fn resolve(
    source: &Source<'_>,
    entry: &Spanned<EntryConfig>,
    base_dir: &Path,
) -> Result<(Client, Vec<PathBuf>), ClientRegistryError> {
    let config = entry.get_ref();
    let client_id = config.client_id.get_ref().clone();
    check_client_id(&client_id).map_err(|m| {
        source.error_at(
            &config.client_id.span(),
            format!("client_id {client_id:?}: {m}"),
        )
    })?;
    let at = |span: Range<usize>, message: String| {
        source.error_at(&span, format!("client {client_id}: {message}"))
    };

    let mut files = Vec::new();
    let given = [
        config.jwks_file.is_some(),
        config.jwks.is_some(),
        config.jwk.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(at(
            entry.span(),
            "give one of jwks_file, jwks and jwk, not several".into(),
        ));
    }
    let keys = if let Some(file) = &config.jwks_file {
        let path = base_dir.join(file.get_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            at(
                file.span(),
                format!("jwks_file: cannot read {}: {e}", path.display()),
            )
        })?;
        files.push(path);
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| at(file.span(), format!("jwks_file: not JSON: {e}")))?;
        KeySet::from_jwks(&value, true).map_err(|m| at(file.span(), format!("jwks_file: {m}")))?
    } else if let Some(jwks) = &config.jwks {
        // Reported at the entry: a table of tables (`[[client.jwks.keys]]`) has no span
        // of its own that toml hands back.
        let value =
            serde_json::to_value(jwks).map_err(|e| at(entry.span(), format!("jwks: {e}")))?;
        KeySet::from_jwks(&value, true).map_err(|m| at(entry.span(), format!("jwks: {m}")))?
    } else if let Some(jwk) = &config.jwk {
        let value = serde_json::to_value(jwk).map_err(|e| at(entry.span(), format!("jwk: {e}")))?;
        KeySet::from_jwk(&value, true).map_err(|m| at(entry.span(), format!("jwk: {m}")))?
    } else {
        KeySet::default()
    };

    let text_of = |value: &Option<Spanned<String>>, key: &str| {
        value
            .as_ref()
            .map(|v| {
                let text = v.get_ref().trim();
                if text.is_empty() {
                    Err(at(v.span(), format!("{key}: must not be empty")))
                } else {
                    Ok(text.to_owned())
                }
            })
            .transpose()
    };
    let certificate_subject = text_of(&config.certificate_subject, "certificate_subject")?;
    let certificate_san = text_of(&config.certificate_san, "certificate_san")?;
    if keys.len() == 0 && certificate_subject.is_none() && certificate_san.is_none() {
        return Err(at(
            entry.span(),
            "no way to prove who it is: give its public keys (jwks_file, jwks or jwk) or a \
             certificate_subject / certificate_san"
                .into(),
        ));
    }

    let ods_span = config
        .ods_codes
        .as_ref()
        .map_or_else(|| entry.span(), Spanned::span);
    let mut ods_codes = Vec::new();
    for code in config.ods_codes.as_ref().map_or(&[][..], |c| c.get_ref()) {
        let parsed = OdsCode::parse(code)
            .map_err(|e| at(ods_span.clone(), format!("ods_codes: {code:?}: {e}")))?;
        if ods_codes.contains(&parsed) {
            return Err(at(ods_span, format!("ods_codes: {code} is listed twice")));
        }
        ods_codes.push(parsed);
    }
    if ods_codes.is_empty() && !config.trusted_proxy {
        return Err(at(
            ods_span,
            "ods_codes: name the organisation(s) the client acts for".into(),
        ));
    }
    let scopes = Scopes::parse(config.scopes.get_ref())
        .map_err(|e| at(config.scopes.span(), format!("scopes: {e}")))?;

    let mut hasher = DefaultHasher::new();
    source.text.get(entry.span()).hash(&mut hasher);
    for file in &files {
        if let Ok(bytes) = std::fs::read(file) {
            bytes.hash(&mut hasher);
        }
    }
    let client = Client {
        client_id,
        ods_codes,
        scopes,
        enabled: config.enabled,
        trusted_proxy: config.trusted_proxy,
        certificate_subject,
        certificate_san,
        keys,
        fingerprint: hasher.finish(),
    };
    Ok((client, files))
}

/// The live registry the authenticator and the token endpoint share; replaced whole on
/// reload, so a request in flight finishes with the registry it started with
/// (`crate::reload`).
pub struct Clients {
    file: Arc<Reloadable<ClientRegistry, ClientRegistryError>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("clients", &self.current().len())
            .field("source", &self.source())
            .finish_non_exhaustive()
    }
}

impl ReloadableFile for ClientRegistry {
    fn referenced_files(&self) -> &[PathBuf] {
        &self.referenced_files
    }

    fn entries(&self) -> usize {
        self.len()
    }

    /// Inline keys and certificate mappings change with the file; this also notices a
    /// client whose resolved keys differ.
    fn fingerprint(&self, hasher: &mut DefaultHasher) {
        for client in self.iter() {
            client.fingerprint.hash(hasher);
        }
    }
}

impl Clients {
    /// Shares `registry`, loaded from `source` (reloads read it again; `None`: nothing to
    /// reload).
    pub fn new(registry: ClientRegistry, source: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Clients {
            file: Arc::new(Reloadable::new(
                "client registry",
                registry,
                source,
                |path: &Path, _previous: &ClientRegistry| ClientRegistry::load(path),
            )),
        })
    }

    /// Loads the registry at `source`, if any (none: no clients).
    pub fn load(source: Option<&Path>) -> Result<Arc<Self>, ClientRegistryError> {
        let registry = match source {
            Some(path) => ClientRegistry::load(path)?,
            None => ClientRegistry::empty(),
        };
        Ok(Self::new(registry, source.map(Path::to_owned)))
    }

    /// The registry now.
    pub fn current(&self) -> Arc<ClientRegistry> {
        self.file.current()
    }

    /// The registry file, if there is one.
    pub fn source(&self) -> Option<&Path> {
        self.file.source()
    }

    /// Reads the file again and, if it is valid, replaces the registry; if not, the old
    /// registry stays and the error says why. With no file, nothing happens.
    pub fn reload(&self) -> Result<(), ClientRegistryError> {
        self.file.reload()
    }

    /// Reloads on SIGHUP and whenever the registry file or a JWKS file it names changes
    /// (checked every `poll`), logging each success or failure; a failed reload keeps the
    /// old registry. Stops when `shutdown` resolves. The SIGHUP handler is installed
    /// before this returns.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.file.spawn_watcher(poll, shutdown)
    }

    /// What the watcher compares: a hash of the files' content and the clients' keys.
    pub fn fingerprint(&self) -> Option<u64> {
        self.file.fingerprint()
    }
}

/// Registries for tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::ClientRegistry;
    use crate::identity::keys::test_keys::TestKey;

    /// A `[[client]]` entry with `key` inline as its JWK Set.
    pub fn entry(client_id: &str, ods: &str, scopes: &str, key: &TestKey) -> String {
        format!(
            "[[client]]\nclient_id = \"{client_id}\"\nods_codes = [\"{ods}\"]\nscopes = \"{scopes}\"\njwks_file = \"{client_id}.json\"\n"
        ) + &format!("# key {}\n", key.public_jwk["kid"])
    }

    /// A registry from entries made by [`entry`], writing each key's JWKS file to `dir`.
    pub fn registry(dir: &Path, clients: &[(&str, &str, &str, &TestKey)]) -> ClientRegistry {
        let mut text = String::new();
        for (client_id, ods, scopes, key) in clients {
            std::fs::write(
                dir.join(format!("{client_id}.json")),
                key.jwks().to_string(),
            )
            .expect("write JWKS");
            text.push_str(&entry(client_id, ods, scopes, key));
        }
        ClientRegistry::from_toml(&text, dir, "clients.toml")
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::test_keys::{ec384, rsa};

    fn assert_refused(text: &str, dir: &Path, line: usize, problem: &str) {
        match ClientRegistry::from_toml(text, dir, "clients.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(ClientRegistryError::Invalid(LocatedError {
                file,
                line: at,
                message,
                ..
            })) => {
                assert_eq!(file, "clients.toml");
                assert!(
                    message.contains(problem),
                    "{message:?} lacks {problem:?}\n{text}"
                );
                assert_eq!(at, line, "{message}\n{text}");
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn every_way_to_give_keys_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = ec384("ec-1");
        let rsa = rsa("rsa-1", jsonwebtoken::Algorithm::RS384);
        std::fs::write(dir.path().join("a.json"), ec.jwks().to_string()).expect("write");
        let jwk = &rsa.public_jwk;
        let text = format!(
            r#"
[[client]]
client_id = "gp-a"
jwks_file = "a.json"
ods_codes = ["A81001", "A81002"]
scopes = "system/ServiceRequest.cr system/Task.rs"

[[client]]
client_id = "gp-b"
jwk = {{ kty = "RSA", n = "{n}", e = "{e}", kid = "rsa-1" }}
ods_codes = ["B82001"]
scopes = "system/*.rs"
enabled = false

[[client]]
client_id = "gp-c"
ods_codes = ["C83001"]
scopes = "system/Task.rs"
[client.jwks]
keys = [{{ kty = "RSA", n = "{n}", e = "{e}", kid = "rsa-1", alg = "RS384" }}]

[[client]]
client_id = "bars-proxy"
scopes = "system/ServiceRequest.cru system/Task.rs"
trusted_proxy = true
certificate_subject = "CN=bars-proxy.nhs.uk"
"#,
            n = jwk["n"].as_str().expect("n"),
            e = jwk["e"].as_str().expect("e"),
        );
        let registry = ClientRegistry::from_toml(&text, dir.path(), "clients.toml").expect("valid");
        assert_eq!(registry.len(), 4);
        let a = registry.get("gp-a").expect("gp-a");
        assert_eq!(
            a.ods_codes.iter().map(OdsCode::as_str).collect::<Vec<_>>(),
            ["A81001", "A81002"]
        );
        assert!(a.enabled && a.has_keys() && !a.trusted_proxy);
        assert_eq!(
            a.scopes.to_string(),
            "system/ServiceRequest.cr system/Task.rs"
        );
        assert!(!registry.get("gp-b").expect("gp-b").enabled);
        assert!(registry.get("gp-c").expect("gp-c").has_keys());
        let proxy = registry.get("bars-proxy").expect("proxy");
        assert!(proxy.trusted_proxy && !proxy.has_keys() && proxy.ods_codes.is_empty());
        assert_eq!(
            registry
                .by_certificate("CN=bars-proxy.nhs.uk", &[])
                .map(|c| c.client_id.clone()),
            Some("bars-proxy".to_string())
        );
        assert!(registry.by_certificate("CN=other", &[]).is_none());
        assert!(registry.get("nobody").is_none());
    }

    #[test]
    fn the_example_registry_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients.example.toml");
        let registry = ClientRegistry::load(&example).unwrap_or_else(|e| panic!("{e}"));
        assert!(!registry.is_empty());
    }

    #[test]
    fn every_mistake_names_its_line_and_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = ec384("k");
        std::fs::write(dir.path().join("k.json"), ec.jwks().to_string()).expect("write");
        std::fs::write(dir.path().join("bad.json"), "{").expect("write");
        let mut private = ec.public_jwk.clone();
        private["d"] = serde_json::json!("c2VjcmV0");
        std::fs::write(
            dir.path().join("private.json"),
            serde_json::json!({ "keys": [private] }).to_string(),
        )
        .expect("write");
        let head = "[[client]]\nclient_id = \"gp\"\n";
        let ok = "ods_codes = [\"A81001\"]\nscopes = \"system/Task.rs\"\n";
        let cases: &[(String, usize, &str)] = &[
            (
                format!("{head}jwks_file = \"k.json\"\n{ok}colour = 1\n"),
                6,
                "unknown field `colour`",
            ),
            (
                format!("{head}jwks_file = \"missing.json\"\n{ok}"),
                3,
                "cannot read",
            ),
            (
                format!("{head}jwks_file = \"bad.json\"\n{ok}"),
                3,
                "not JSON",
            ),
            (
                format!("{head}jwks_file = \"private.json\"\n{ok}"),
                3,
                "private member",
            ),
            (format!("{head}{ok}"), 1, "no way to prove who it is"),
            (
                format!(
                    "{head}jwks_file = \"k.json\"\nods_codes = [\"a81001\"]\nscopes = \"system/Task.rs\"\n"
                ),
                4,
                "ods_codes: \"a81001\"",
            ),
            (
                format!(
                    "{head}jwks_file = \"k.json\"\nods_codes = []\nscopes = \"system/Task.rs\"\n"
                ),
                4,
                "name the organisation",
            ),
            (
                format!(
                    "{head}jwks_file = \"k.json\"\nods_codes = [\"A81001\"]\nscopes = \"patient/Task.rs\"\n"
                ),
                5,
                "system/ scopes",
            ),
            (
                format!("{head}jwks_file = \"k.json\"\nods_codes = [\"A81001\"]\n"),
                1,
                "missing field `scopes`",
            ),
            (
                format!("{head}jwks_file = \"k.json\"\n{ok}\n{head}jwks_file = \"k.json\"\n{ok}"),
                8,
                "a second entry",
            ),
            (
                format!("[[client]]\nclient_id = \"g p\"\njwks_file = \"k.json\"\n{ok}"),
                2,
                "printable ASCII",
            ),
            (
                format!("{head}jwks_file = \"k.json\"\njwk = {{ kty = \"EC\" }}\n{ok}"),
                1,
                "not several",
            ),
            (
                format!("{head}jwks_file = \"k.json\"\n{ok}enabled = \"yes\"\n"),
                6,
                "invalid type",
            ),
        ];
        for (text, line, problem) in cases {
            assert_refused(text, dir.path(), *line, problem);
        }
        // No key material in any message.
        let error = ClientRegistry::from_toml(
            &format!("{head}jwks_file = \"private.json\"\n{ok}"),
            dir.path(),
            "clients.toml",
        )
        .expect_err("private")
        .to_string();
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }

    #[test]
    fn reload_takes_a_changed_file_and_keeps_the_old_registry_on_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clients.toml");
        let ec = ec384("k");
        std::fs::write(dir.path().join("k.json"), ec.jwks().to_string()).expect("write");
        let entry = |id: &str| {
            format!(
                "[[client]]\nclient_id = \"{id}\"\njwks_file = \"k.json\"\nods_codes = [\"A81001\"]\nscopes = \"system/Task.rs\"\n"
            )
        };
        std::fs::write(&path, entry("one")).expect("write");
        let clients = Clients::load(Some(&path)).expect("load");
        assert!(clients.current().get("one").is_some());
        let before = clients.fingerprint();

        std::fs::write(&path, entry("one") + &entry("two")).expect("write");
        assert_ne!(clients.fingerprint(), before);
        clients.reload().expect("reload");
        assert_eq!(clients.current().len(), 2);

        std::fs::write(&path, "[[client]]\nclient_id = 1\n").expect("write");
        let error = clients.reload().expect_err("invalid").to_string();
        assert!(
            error.starts_with(&format!("{}:2:", path.display())),
            "{error}"
        );
        assert_eq!(clients.current().len(), 2, "the old registry stays");
    }

    #[tokio::test]
    async fn the_watcher_reloads_when_a_key_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clients.toml");
        std::fs::write(dir.path().join("k.json"), ec384("old").jwks().to_string()).expect("write");
        std::fs::write(
            &path,
            "[[client]]\nclient_id = \"gp\"\njwks_file = \"k.json\"\nods_codes = [\"A81001\"]\nscopes = \"system/Task.rs\"\n",
        )
        .expect("write");
        let clients = Clients::load(Some(&path)).expect("load");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let watcher = clients.spawn_watcher(Duration::from_millis(20), async {
            let _ = stopped.await;
        });
        std::fs::write(dir.path().join("k.json"), ec384("new").jwks().to_string()).expect("write");
        let mut rotated = false;
        for _ in 0..200 {
            let client = clients.current().get("gp").expect("gp");
            if client.keys.has_kid("new") {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
        watcher.await.expect("watcher stops");
        assert!(rotated, "the rotated key was picked up");
    }
}
