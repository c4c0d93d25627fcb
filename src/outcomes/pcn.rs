//! The practice directory: which Primary Care Network (PCN) each GP practice belongs to,
//! from a `pcns.toml` file (`pcns_file` in `sprig.toml`; `pcns.example.toml` is shipped),
//! so reports break down per PCN as they do per practice. Pure: the caller reads the file
//! (`PcnDirectory::load`) and `app` keeps it live (reloaded like the registries).
//!
//! ```toml
//! [[pcn]]
//! code = "U12345"
//! name = "Riverside PCN"
//! practices = ["K83999", "K83001"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::located::{LocatedError, TomlText};

/// What the report calls practices without a PCN.
pub const NO_PCN: &str = "no PCN";

/// A Primary Care Network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pcn {
    /// Its ODS code (a PCN has one, e.g. `U12345`).
    pub code: String,
    /// Its name.
    pub name: String,
}

/// Practice ODS code → PCN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PcnDirectory {
    pcns: Vec<Pcn>,
    /// Practice code → index into `pcns`.
    practices: HashMap<String, usize>,
    /// None: the directory names no other file; kept for `ReloadableFile`.
    referenced: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PcnFile {
    #[serde(default)]
    pcn: Vec<PcnSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PcnSpec {
    code: Spanned<String>,
    name: Spanned<String>,
    practices: Vec<Spanned<String>>,
}

/// The shape every ODS code shares: 3 to 10 upper-case letters and digits, one a letter.
fn ods_shaped(code: &str) -> bool {
    (3..=10).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && code.bytes().any(|b| b.is_ascii_uppercase())
}

impl PcnDirectory {
    /// Parses and checks a directory: codes shaped like ODS codes, names not blank, no PCN
    /// twice, no practice in two PCNs. Errors say `file:line:column`.
    pub fn parse(source: &TomlText<'_>) -> Result<PcnDirectory, LocatedError> {
        let file: PcnFile = source.parse()?;
        let mut directory = PcnDirectory::default();
        for spec in file.pcn {
            let code = spec.code.get_ref().trim();
            if !ods_shaped(code) {
                return Err(source.error_at(
                    &spec.code.span(),
                    format!("PCN code '{code}' is not an ODS code (3 to 10 upper-case letters and digits)"),
                ));
            }
            if directory.pcns.iter().any(|p| p.code == code) {
                return Err(
                    source.error_at(&spec.code.span(), format!("PCN '{code}' is listed twice"))
                );
            }
            let name = spec.name.get_ref().trim();
            if name.is_empty() {
                return Err(
                    source.error_at(&spec.name.span(), format!("PCN '{code}' needs a name"))
                );
            }
            let index = directory.pcns.len();
            for practice in &spec.practices {
                let ods = practice.get_ref().trim();
                if !ods_shaped(ods) {
                    return Err(source.error_at(
                        &practice.span(),
                        format!("practice '{ods}' is not an ODS code"),
                    ));
                }
                if let Some(other) = directory.practices.insert(ods.to_owned(), index) {
                    let other = directory.pcns.get(other).map_or(code, |p| p.code.as_str());
                    return Err(source.error_at(
                        &practice.span(),
                        format!("practice {ods} is in PCN {other} already: a practice belongs to one PCN"),
                    ));
                }
            }
            directory.pcns.push(Pcn {
                code: code.to_owned(),
                name: name.to_owned(),
            });
        }
        Ok(directory)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<PcnDirectory, LocatedError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| TomlText::new(&name, "").error(0, format!("cannot read: {e}")))?;
        PcnDirectory::parse(&TomlText::new(&name, &text))
    }

    /// The PCN of the practice with this ODS code, if the directory names one.
    pub fn pcn_of(&self, ods: &str) -> Option<&Pcn> {
        self.practices.get(ods).and_then(|&i| self.pcns.get(i))
    }

    /// Every PCN, in file order.
    pub fn pcns(&self) -> &[Pcn] {
        &self.pcns
    }

    /// How many practices it places.
    pub fn practices(&self) -> usize {
        self.practices.len()
    }

    /// The files it names besides its own (none).
    pub fn referenced_files(&self) -> &[PathBuf] {
        &self.referenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn practices_map_to_their_pcn() {
        let text = "[[pcn]]\ncode = \"U12345\"\nname = \"Riverside PCN\"\npractices = [\"K83999\", \"K83001\"]\n\n[[pcn]]\ncode = \"U67890\"\nname = \"Hill PCN\"\npractices = [\"Y12345\"]\n";
        let directory = PcnDirectory::parse(&TomlText::new("pcns.toml", text)).expect("parses");
        assert_eq!(
            directory.pcn_of("K83001").map(|p| p.name.as_str()),
            Some("Riverside PCN")
        );
        assert_eq!(
            directory.pcn_of("Y12345").map(|p| p.code.as_str()),
            Some("U67890")
        );
        assert_eq!(directory.pcn_of("A99999"), None);
        assert_eq!(directory.practices(), 3);
    }

    #[test]
    fn the_example_file_loads() {
        let text = include_str!("../../pcns.example.toml");
        let directory =
            PcnDirectory::parse(&TomlText::new("pcns.example.toml", text)).expect("example");
        assert_eq!(directory.pcns().len(), 2);
    }

    #[test]
    fn mistakes_say_file_line_and_column() {
        let twice = "[[pcn]]\ncode = \"U12345\"\nname = \"A\"\npractices = [\"K83999\"]\n[[pcn]]\ncode = \"U67890\"\nname = \"B\"\npractices = [\"K83999\"]\n";
        let err = PcnDirectory::parse(&TomlText::new("pcns.toml", twice))
            .expect_err("one PCN per practice")
            .to_string();
        assert!(
            err.starts_with("pcns.toml:8:14:") && err.contains("in PCN U12345 already"),
            "{err}"
        );
        let bad = "[[pcn]]\ncode = \"u1\"\nname = \"A\"\npractices = []\n";
        let err = PcnDirectory::parse(&TomlText::new("pcns.toml", bad))
            .expect_err("bad code")
            .to_string();
        assert!(err.starts_with("pcns.toml:2:8:"), "{err}");
        let unknown = "[[pcn]]\ncode = \"U1234\"\nname = \"A\"\npractices = []\ncolour = \"red\"\n";
        assert!(PcnDirectory::parse(&TomlText::new("pcns.toml", unknown)).is_err());
    }
}
