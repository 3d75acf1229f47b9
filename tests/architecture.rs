//! `ARCHITECTURE.md` names real files and functions: this fails when one of them no longer
//! exists, so the map cannot quietly go stale.

use std::collections::BTreeSet;
use std::path::Path;

fn map() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md at the repository's root")
}

/// Every `code span` of the map.
fn spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_file_the_map_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut named = 0;
    for span in spans(&map()) {
        for part in span.split([',', ' ']).map(str::trim) {
            let looks_like_a_path = part.contains('/')
                && (part.ends_with(".rs") || part.ends_with(".md") || part.ends_with('/'))
                || matches!(part, "tests/loom" | "tests/matrix" | "book/" | "testkit/");
            if looks_like_a_path {
                named += 1;
                assert!(
                    root.join(part).exists(),
                    "ARCHITECTURE.md names {part}, which is gone"
                );
            }
        }
    }
    assert!(
        named >= 20,
        "only {named} paths found: the check lost its way"
    );
}

/// Every Rust source under these folders, read once.
fn sources() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = String::new();
    let mut dirs = vec![
        root.join("src"),
        root.join("testkit/src"),
        root.join("adapters"),
    ];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source folder").flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                all.push_str(&std::fs::read_to_string(&path).expect("a source file"));
            }
        }
    }
    all
}

#[test]
fn every_function_the_map_names_exists() {
    let code = sources();
    let mut names = BTreeSet::new();
    for span in spans(&map()) {
        let span = span.trim_end_matches('!');
        // `name`, `Type::name` or `Type`, as the map writes them.
        let last = span.rsplit("::").next().unwrap_or(span);
        let is_ident = !last.is_empty()
            && last.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !last.chars().next().is_some_and(|c| c.is_ascii_digit());
        if is_ident && last.len() > 3 {
            names.insert(last.to_owned());
        }
    }
    let mut missing = Vec::new();
    for name in &names {
        let defined = [
            format!("fn {name}"),
            format!("struct {name}"),
            format!("enum {name}"),
            format!("trait {name}"),
            format!("macro_rules! {name}"),
            format!("type {name}"),
            format!("{name} =>"),
            format!("    {name},"),
            format!("    {name}("),
            format!("mod {name}"),
            format!("const {name}"),
        ]
        .iter()
        .any(|pattern| code.contains(pattern.as_str()));
        // Words of prose in code spans (feature names, messages) are not items.
        let prose = matches!(
            name.as_str(),
            "tracing" | "block_on" | "unsafe" | "try_recv" | "created" | "detached"
        );
        if !defined && !prose {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names items the code no longer has: {missing:?}"
    );
    assert!(names.len() >= 30, "only {} names found", names.len());
}

/// Whether `code` defines `name` (a function, a type, a macro, a variant, a constant).
fn defines(code: &str, name: &str) -> bool {
    [
        format!("fn {name}<"),
        format!("fn {name}("),
        format!("struct {name}"),
        format!("enum {name}"),
        format!("trait {name}"),
        format!("macro_rules! {name}"),
        format!("type {name}"),
        format!("const {name}"),
    ]
    .iter()
    .any(|pattern| code.contains(pattern.as_str()))
}

#[test]
fn every_function_of_the_core_is_in_the_file_the_map_gives() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut misplaced = Vec::new();
    for row in map().lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | part | files | what they hold |
        let (Some(files), Some(what)) = (cells.get(2), cells.get(3)) else {
            continue;
        };
        let files: Vec<String> = spans(files)
            .into_iter()
            .filter(|f| f.starts_with("src/") && f.ends_with(".rs"))
            .collect();
        if files.is_empty() {
            continue;
        }
        let code: String = files
            .iter()
            .map(|f| std::fs::read_to_string(root.join(f)).unwrap_or_default())
            .collect();
        for span in spans(what) {
            let name = span.trim_end_matches('!');
            let name = name.rsplit("::").next().unwrap_or(name);
            let lower = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            let ident = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            // Functions and macros (lower case) must be defined in the row's files; types may
            // be re-exported or named for context.
            // Feature and crate names in code spans are words, not items.
            let word = matches!(name, "tracing" | "metrics" | "serde" | "loom");
            if lower && ident && name.len() > 3 && !word {
                checked += 1;
                if !defines(&code, name) {
                    misplaced.push(format!("{name} (map: {})", files.join(", ")));
                }
            }
        }
    }
    assert!(
        misplaced.is_empty(),
        "ARCHITECTURE.md places these in files that do not define them: {misplaced:?}"
    );
    assert!(checked >= 30, "only {checked} functions checked");
}

/// The core is a stack: `lib.rs` declares the modules and re-exports their items, and no
/// module reaches back up through the crate root for one of them.
#[test]
fn no_module_of_the_core_imports_the_crate_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    for entry in std::fs::read_dir(&root).expect("src/").flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "lib.rs") {
            continue;
        }
        let code = std::fs::read_to_string(&path).expect("a source file");
        for (n, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            // `crate::Item` or `use crate::{…}` names something at the root, not a module.
            let root_item = line.match_indices("crate::").any(|(at, _)| {
                line[at + "crate::".len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_uppercase() || c == '{')
            });
            if root_item {
                upward.push(format!("{}:{}: {line}", path.display(), n + 1));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules importing the crate root: {upward:#?}"
    );
}
