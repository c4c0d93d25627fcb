//! Keeps the documentation and the layout honest.

use std::path::Path;

fn source(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("readable")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("readable dir")
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn architecture_md_maps_every_top_level_module() {
    let architecture = source("ARCHITECTURE.md");
    let lib = source("src/lib.rs");
    for line in lib.lines() {
        if let Some(module) = line
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
        {
            assert!(
                architecture.contains(&format!("`{module}`")),
                "ARCHITECTURE.md does not mention the `{module}` module"
            );
        }
    }
}

/// One row of ARCHITECTURE.md's dependency table.
struct Rule {
    module: String,
    may_import: Vec<String>,
    pure: bool,
}

/// Reads the table under `## Dependencies` in ARCHITECTURE.md: `| `module` | `a`, `b` | yes |`.
fn dependency_rules() -> Vec<Rule> {
    let architecture = source("ARCHITECTURE.md");
    let section = architecture
        .split("\n## Dependencies")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Dependencies` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let names = |cell: &str| -> Vec<String> {
        cell.split(',')
            .map(|n| n.trim().trim_matches('`').to_string())
            .filter(|n| !n.is_empty() && n != "—")
            .collect()
    };
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a dependency row has three cells: {line}");
            Rule {
                module: cells[0].trim_matches('`').to_string(),
                may_import: names(cells[1]),
                pure: match cells[2] {
                    "yes" => true,
                    "no" => false,
                    other => panic!("`pure` is yes or no, not {other:?}: {line}"),
                },
            }
        })
        .collect()
}

fn top_level_modules() -> Vec<String> {
    source("src/lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';')))
        .map(str::to_string)
        .collect()
}

/// The top-level modules a line of code names through `crate::…`, `crate::{…}` or a
/// `super::` chain that climbs to the crate root from a file `depth` modules deep.
fn crate_paths(line: &str, depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + "crate::".len()..];
        if !preceded_by_ident {
            if let Some(group) = after.strip_prefix('{') {
                // Top-level names of a group: split at commas outside nested braces.
                let mut nesting = 0;
                let mut name = String::new();
                let mut at_start = true;
                for c in group.chars() {
                    match c {
                        '{' => nesting += 1,
                        '}' if nesting == 0 => break,
                        '}' => nesting -= 1,
                        ',' if nesting == 0 => {
                            found.push(std::mem::take(&mut name));
                            at_start = true;
                            continue;
                        }
                        _ => {}
                    }
                    if nesting == 0 && at_start {
                        if c.is_alphanumeric() || c == '_' {
                            name.push(c);
                        } else if !name.is_empty() {
                            at_start = false;
                        }
                    }
                }
                found.push(name);
            } else {
                found.push(
                    after
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
        rest = after;
    }
    // `super::` chains long enough to reach the crate root.
    let chain = "super::".repeat(depth);
    let mut rest = line;
    while let Some(at) = rest.find(&chain) {
        let after = &rest[at + chain.len()..];
        if !after.starts_with("super::") {
            found.push(
                after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
        rest = after;
    }
    found.retain(|n| !n.is_empty() && n != "self");
    found
}

#[test]
fn imports_follow_the_dependency_table() {
    let rules = dependency_rules();
    let modules = top_level_modules();
    for module in &modules {
        assert!(
            rules.iter().any(|r| &r.module == module),
            "ARCHITECTURE.md's dependency table has no row for `{module}`"
        );
    }
    for rule in &rules {
        assert!(
            modules.contains(&rule.module),
            "the dependency table names `{}`, which src/lib.rs does not declare",
            rule.module
        );
        for dep in &rule.may_import {
            assert!(
                modules.contains(dep),
                "`{}` may import unknown `{dep}`",
                rule.module
            );
        }
    }
    // The table itself must be a one-way order: no cycles.
    let mut placed: Vec<&str> = Vec::new();
    while placed.len() < rules.len() {
        let next = rules.iter().find(|r| {
            !placed.contains(&r.module.as_str())
                && r.may_import.iter().all(|d| placed.contains(&d.as_str()))
        });
        let Some(next) = next else {
            let stuck: Vec<&str> = rules
                .iter()
                .map(|r| r.module.as_str())
                .filter(|m| !placed.contains(m))
                .collect();
            panic!("the dependency table has a cycle among {stuck:?}");
        };
        placed.push(&next.module);
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&root).expect("under src");
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let Some(module) = parts.first() else {
            continue;
        };
        if parts.len() == 1 && (module == "main" || module == "lib") {
            continue;
        }
        // Depth of the file's module: `a.rs` and `a/mod.rs` are 1, `a/b.rs` is 2.
        let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
        let rule = rules
            .iter()
            .find(|r| &r.module == module)
            .unwrap_or_else(|| panic!("no dependency row for {}", relative.display()));
        let text = std::fs::read_to_string(&file).expect("readable");
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            // Doc and plain comments count too: an intra-doc link up the graph is a
            // dependency a reader (and rustdoc) follows.
            for dep in crate_paths(code, depth) {
                if &dep != module && modules.contains(&dep) && !rule.may_import.contains(&dep) {
                    violations.push(format!(
                        "src/{}:{}: `{module}` imports `{dep}`, which ARCHITECTURE.md's table does not allow",
                        relative.display(),
                        number + 1
                    ));
                }
            }
            if rule.pure && !code.starts_with("//") {
                for runtime in ["tokio", "sqlx", "axum", "hyper", "reqwest"] {
                    let used = code.starts_with(&format!("use {runtime}::"))
                        || code.contains(&format!(" {runtime}::"))
                        || code.contains(&format!("({runtime}::"));
                    if used {
                        violations.push(format!(
                            "src/{}:{}: `{module}` is pure but uses `{runtime}`",
                            relative.display(),
                            number + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_import_reader_sees_every_form() {
    assert_eq!(crate_paths("use crate::fhir::Issue;", 1), ["fhir"]);
    assert_eq!(
        crate_paths(
            "use crate::{api::error::ApiError, store::{Store, WriteTx}, fhir};",
            2
        ),
        ["api", "store", "fhir"]
    );
    assert_eq!(
        crate_paths("let x = crate::search::parse(q);", 3),
        ["search"]
    );
    assert_eq!(crate_paths("use super::store::Store;", 1), ["store"]);
    assert_eq!(
        crate_paths("use super::walk::Walk;", 2),
        Vec::<String>::new()
    );
    assert_eq!(crate_paths("use super::super::api::x;", 2), ["api"]);
    assert_eq!(
        crate_paths("pub(crate) use self::model::X;", 1),
        Vec::<String>::new()
    );
    assert_eq!(crate_paths("use sprig_crate::x;", 1), Vec::<String>::new());
}

#[test]
fn every_source_file_says_what_it_is_for() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("readable");
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they are for:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = source("README.md");
    let ci = source(".ci/run");
    assert!(
        readme.contains("cargo test "),
        "README gives the test command"
    );
    assert!(
        ci.lines().any(|l| l.trim() == "cargo test --locked"),
        ".ci/run runs it"
    );
    assert!(readme.contains("cargo run --release -- serve"));
}

/// Every `WriteTx` call that may run a statement goes through `store::dispatch_write!`
/// (ARCHITECTURE.md, `store`): on PostgreSQL a failed statement aborts the transaction and
/// its `COMMIT` would answer `ROLLBACK` as if it succeeded, so a call that fails, or is
/// dropped midway, must leave the write refusing to commit. A new method written with plain
/// `dispatch!` would lose that silently; only `take_written` (no statement) and `commit`
/// (it consumes the write, so nothing can commit after it fails, even when PostgreSQL's
/// queued statements fail in it) may use it.
#[test]
fn write_transaction_calls_go_through_dispatch_write() {
    const PLAIN_ALLOWED: [&str; 2] = ["take_written", "commit"];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/store"), &mut files);
    let mut plain = Vec::new();
    let mut guarded = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        let mut in_write_tx = false;
        let mut function = String::new();
        for line in text.lines() {
            if line.starts_with("impl WriteTx {") {
                in_write_tx = true;
                continue;
            }
            if !in_write_tx {
                continue;
            }
            if line == "}" {
                in_write_tx = false;
                continue;
            }
            if let Some(rest) = line.trim_start().strip_prefix("pub ") {
                let rest = rest.strip_prefix("async ").unwrap_or(rest);
                if let Some(name) = rest.strip_prefix("fn ") {
                    function = name.split(['(', '<']).next().unwrap_or("").to_owned();
                }
            }
            if line.contains("dispatch_write!(") {
                guarded += 1;
            } else if line.contains("dispatch!(") && !PLAIN_ALLOWED.contains(&function.as_str()) {
                let shown = file
                    .strip_prefix(root)
                    .unwrap_or(file)
                    .display()
                    .to_string();
                plain.push(format!("{shown}: WriteTx::{function}"));
            }
        }
    }
    assert!(
        guarded > 20,
        "the reader found the WriteTx methods ({guarded})"
    );
    assert!(
        plain.is_empty(),
        "these WriteTx methods use dispatch! where dispatch_write! keeps PostgreSQL's failed \
         statements from committing:\n{}",
        plain.join("\n")
    );
}
