//! The endpoints by ODS code, as loaded from one registry file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::file::{EnvLookup, RegistryFile, process_env, resolve};
use super::{BuildKey, Endpoint, EndpointError, build};
use crate::located::TomlText;

/// The endpoints by ODS code, as loaded from one registry file.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    pub(super) endpoints: BTreeMap<String, Arc<Endpoint>>,
    /// Key, certificate and CA files the entries read, for the watcher to notice a
    /// certificate renewed in place.
    pub(super) referenced_files: Vec<PathBuf>,
}

impl EndpointRegistry {
    /// No endpoints: every organisation pulls its updates.
    pub fn empty() -> Self {
        EndpointRegistry::default()
    }

    /// Reads and checks the registry file at `path`; relative paths in it are relative
    /// to its folder.
    pub fn load(path: &Path) -> Result<Self, EndpointError> {
        Self::load_reusing(path, None, &process_env)
    }

    /// Checks registry text. `base_dir` resolves relative file paths; `origin` names the
    /// text in errors (`origin:line:column: problem`).
    pub fn from_toml(text: &str, base_dir: &Path, origin: &str) -> Result<Self, EndpointError> {
        Self::from_toml_reusing(text, base_dir, origin, None, &process_env)
    }

    /// The endpoint of the organisation `ods_code`, if it has one.
    pub fn get(&self, ods_code: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.get(ods_code).cloned()
    }

    /// Every endpoint, by ODS code.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.endpoints.values()
    }

    /// How many endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub(super) fn load_reusing(
        path: &Path,
        previous: Option<&EndpointRegistry>,
        env: EnvLookup<'_>,
    ) -> Result<Self, EndpointError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        Self::from_toml_reusing(&text, base_dir, &path.display().to_string(), previous, env)
    }

    /// Checks registry text; an entry whose settings (including the files and environment
    /// variable it reads) are unchanged from `previous` keeps its endpoint, with its
    /// cached token and open connections.
    pub(super) fn from_toml_reusing(
        text: &str,
        base_dir: &Path,
        origin: &str,
        previous: Option<&EndpointRegistry>,
        env: EnvLookup<'_>,
    ) -> Result<Self, EndpointError> {
        let source = TomlText::new(origin, text);
        let file: RegistryFile = source.parse()?;
        let mut registry = EndpointRegistry::empty();
        for entry in &file.endpoint {
            let (settings, files) = resolve(&source, entry, base_dir, env)?;
            if registry.endpoints.contains_key(&settings.ods_code) {
                return Err(source
                    .error_at(
                        &entry.get_ref().ods_code.span(),
                        format!(
                            "endpoint {}: ods_code: a second entry for this organisation",
                            settings.ods_code
                        ),
                    )
                    .into());
            }
            let reused = previous
                .and_then(|p| p.endpoints.get(&settings.ods_code))
                .filter(|old| old.settings == settings)
                .cloned();
            let endpoint = match reused {
                Some(endpoint) => endpoint,
                None => Arc::new(build(settings).map_err(|(key, message)| {
                    let span = match key {
                        BuildKey::Entry => entry.span(),
                        BuildKey::Auth => entry.get_ref().auth.span(),
                    };
                    let ods = entry.get_ref().ods_code.get_ref();
                    source.error_at(&span, format!("endpoint {ods}: {message}"))
                })?),
            };
            registry.referenced_files.extend(files);
            registry
                .endpoints
                .insert(endpoint.ods_code.clone(), endpoint);
        }
        Ok(registry)
    }
}
