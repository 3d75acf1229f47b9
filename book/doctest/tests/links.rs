//! Every link in the README, the changelog, the adapter crates' READMEs, the guide
//! (`book/src`), the matrix README and the benchmark results points somewhere that exists:
//! relative links to files of this repository, `#anchor`s to a heading of the page they name,
//! and links to this repository on GitHub to a file that is here. Every
//! `{{#include file:anchor}}` of the guide names a file that exists and an `ANCHOR: anchor`
//! marker in it. No network: links to other sites are not followed.
//!
//! The guide is rendered by mdbook, which copies `book/src` alone: a relative link from the
//! guide to a file outside `book/src` would be broken in the HTML book, so the guide links to
//! such files through the repository's address on GitHub, and this test checks those against
//! the working tree.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository's address, as `Cargo.toml` and `book/book.toml` give it.
const REPO_BLOB: &str = "https://github.com/gracepool/gracepool/blob/main/";
const REPO_TREE: &str = "https://github.com/gracepool/gracepool/tree/main/";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The pages checked, relative to the repository root.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![
        PathBuf::from("README.md"),
        PathBuf::from("CHANGELOG.md"),
        PathBuf::from("tests/matrix/README.md"),
        PathBuf::from("benches/RESULTS.md"),
    ];
    // Each published crate's README (crates.io shows it as the crate's page).
    let mut readmes: Vec<PathBuf> = fs::read_dir(root().join("adapters"))
        .expect("adapters/ is readable")
        .map(|e| Path::new("adapters").join(e.expect("a directory entry").file_name()))
        .map(|crate_dir| crate_dir.join("README.md"))
        .filter(|readme| root().join(readme).is_file())
        .collect();
    readmes.sort();
    pages.extend(readmes);
    let mut book: Vec<PathBuf> = fs::read_dir(root().join("book/src"))
        .expect("book/src is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| Path::new("book/src").join(p.file_name().expect("a file name")))
        .collect();
    book.sort();
    pages.extend(book);
    pages
}

/// The lines of a page outside fenced code blocks, with their line numbers (1-based).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m && trimmed.trim_end() == m => fence = None,
            (Some(_), _) => {}
            (None, None) => out.push((i + 1, line)),
        }
    }
    out
}

/// A line with its inline code spans (`like this`) blanked out.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if in_code {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// The targets of inline links and images (`[text](target)`) and of reference definitions
/// (`[label]: target`) on one line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        if let Some(end) = trimmed.find("]:") {
            let target = trimmed[end + 2..].split_whitespace().next().unwrap_or("");
            if !target.is_empty() {
                targets.push(target.to_owned());
            }
        }
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        if !target.is_empty() {
            targets.push(target.to_owned());
        }
        rest = &after[end..];
    }
    targets
}

/// The anchor GitHub and mdbook give a heading: lower case, letters, digits, `-` and `_`
/// kept, spaces turned into `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`, ... as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(text) {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !trimmed[hashes..].starts_with(' ') {
            continue;
        }
        let heading = trimmed[hashes..].trim().trim_end_matches('#').trim();
        // mdbook's explicit id: `## Heading {#id}`.
        if let Some(open) = heading.rfind("{#") {
            if heading.ends_with('}') {
                out.push(heading[open + 2..heading.len() - 1].to_owned());
                continue;
            }
        }
        let base = slug(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// `a/b/../c` as `a/c`, without touching the file system. `None` if it climbs out of the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    Some(out)
}

/// What is wrong with one link of `page` (a path relative to the root), if anything.
fn check(page: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let in_book = page.starts_with("book/src");
    let resolved = if let Some(p) = path
        .strip_prefix(REPO_BLOB)
        .or_else(|| path.strip_prefix(REPO_TREE))
    {
        match normalize(Path::new(p)) {
            Some(p) => p,
            None => return Some(format!("{target}: not a path in this repository")),
        }
    } else if path.contains("://") || path.starts_with("mailto:") {
        return None; // another site: not followed
    } else if path.is_empty() {
        page.to_path_buf()
    } else {
        let joined = page.parent().expect("a page is in a directory").join(path);
        match normalize(&joined) {
            Some(p) if in_book && !p.starts_with("book/src") => {
                return Some(format!(
                    "{target}: leaves book/src, which is all mdbook copies; link to {REPO_BLOB}{} instead",
                    p.display()
                ));
            }
            Some(p) => p,
            None => return Some(format!("{target}: climbs out of the repository")),
        }
    };
    let full = root().join(&resolved);
    if !full.exists() {
        return Some(format!("{target}: {} does not exist", resolved.display()));
    }
    let anchor = anchor.filter(|a| !a.is_empty())?;
    if full.extension().is_none_or(|x| x != "md") {
        return Some(format!(
            "{target}: an anchor into a file that is not Markdown"
        ));
    }
    let text = fs::read_to_string(&full).expect("a readable page");
    if anchors(&text).iter().any(|a| a == anchor) {
        None
    } else {
        Some(format!(
            "{target}: {} has no heading whose anchor is #{anchor}",
            resolved.display()
        ))
    }
}

/// One `{{#include ...}}` of a page: its line number, the file, and the anchor it names, if
/// any (a line range such as `path:2:10` names none).
#[derive(Debug, PartialEq)]
struct Include {
    line: usize,
    path: String,
    anchor: Option<String>,
}

/// The files an mdbook page includes (`{{#include path}}`, `{{#include path:anchor}}`,
/// `{{#include path:2:10}}`), which sit inside code blocks.
fn includes(text: &str) -> Vec<Include> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("{{#include ") {
            let after = &rest[at + "{{#include ".len()..];
            let end = after.find("}}").unwrap_or(after.len());
            let target = after[..end].trim();
            let (path, anchor) = match target.split_once(':') {
                Some((path, selector)) => {
                    // mdbook reads a selector that starts with a digit or a colon as lines.
                    let lines = selector.is_empty()
                        || selector.starts_with(|c: char| c.is_ascii_digit() || c == ':');
                    (path, (!lines).then(|| selector.trim().to_owned()))
                }
                None => (target, None),
            };
            out.push(Include {
                line: i + 1,
                path: path.to_owned(),
                anchor,
            });
            rest = &after[end..];
        }
    }
    out
}

/// Whether `text` opens the anchor `name` as mdbook looks for it: a line with
/// `ANCHOR: name` (in a comment, usually), the name ending at the first character that is
/// not a letter, a digit, `_` or `-`.
fn has_anchor(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        line.split("ANCHOR:").skip(1).any(|after| {
            let after = after.trim_start();
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(after.len());
            &after[..end] == name
        })
    })
}

/// Every broken link of the pages, as `page:line: what is wrong`.
fn broken_links() -> Vec<String> {
    let mut broken = Vec::new();
    for page in pages() {
        let text = fs::read_to_string(root().join(&page)).expect("a readable page");
        for Include { line, path, anchor } in includes(&text) {
            let file = root().join(page.parent().expect("a directory")).join(&path);
            if !file.is_file() {
                broken.push(format!(
                    "{}:{line}: {{{{#include {path}}}}}: no such file",
                    page.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let included = fs::read_to_string(&file).expect("a readable included file");
            if !has_anchor(&included, &anchor) {
                broken.push(format!(
                    "{}:{line}: {{{{#include {path}:{anchor}}}}}: {path} has no `ANCHOR: {anchor}`",
                    page.display()
                ));
            }
        }
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if let Some(why) = check(&page, &target) {
                    broken.push(format!("{}:{n}: {why}", page.display()));
                }
            }
        }
    }
    broken
}

#[test]
fn every_link_resolves() {
    let broken = broken_links();
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_pages_have_links_to_check() {
    // A parser that finds nothing would pass every_link_resolves: it must find the links
    // the README is known to have.
    let readme = fs::read_to_string(root().join("README.md")).expect("the README");
    let found: Vec<String> = prose_lines(&readme)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .collect();
    assert!(
        found.iter().any(|t| t == "tests/matrix/README.md"),
        "{found:?}"
    );
    assert!(found.iter().any(|t| t.starts_with('#')), "{found:?}");
}

#[test]
fn the_checker_catches_what_it_must() {
    let readme = Path::new("README.md");
    let chapter = Path::new("book/src/ch01-why.md");
    assert_eq!(check(readme, "#runtimes"), None);
    assert_eq!(
        check(chapter, "ch04-close-protocol.md#the-synchronous-fallback"),
        None
    );
    assert!(check(readme, "#no-such-heading").is_some());
    assert!(check(chapter, "ch99-missing.md").is_some());
    assert!(check(chapter, "ch04-close-protocol.md#no-such-heading").is_some());
    assert!(check(chapter, "../../tests/matrix/README.md").is_some());
    assert_eq!(
        check(
            chapter,
            &format!("{REPO_BLOB}tests/matrix/README.md#the-rows")
        ),
        None
    );
    assert!(check(chapter, &format!("{REPO_BLOB}tests/no-such-file.md")).is_some());
    assert_eq!(check(chapter, "https://docs.rs/tracing"), None);
    assert_eq!(
        includes("```rust\n{{#include ../doctest/tests/links.rs:slug}}\n```"),
        vec![Include {
            line: 2,
            path: "../doctest/tests/links.rs".to_owned(),
            anchor: Some("slug".to_owned()),
        }]
    );
    let no_anchor = |target: &str| {
        includes(&format!("{{{{#include {target}}}}}"))[0]
            .anchor
            .clone()
    };
    assert_eq!(no_anchor("a.rs"), None);
    assert_eq!(no_anchor("a.rs:2:10"), None);
    assert_eq!(no_anchor("a.rs::10"), None);
    let text = "// ANCHOR: pool\nlet x = 1;\n// ANCHOR_END: pool\n    // ANCHOR: work_2\n";
    assert!(has_anchor(text, "pool"));
    assert!(has_anchor(text, "work_2"));
    assert!(!has_anchor(text, "work"));
    assert!(!has_anchor(text, "po"));
    assert!(!has_anchor("// ANCHOR_END: pool\n", "pool"));
}

#[test]
fn slugs_follow_github_and_mdbook() {
    assert_eq!(slug("The close protocol"), "the-close-protocol");
    assert_eq!(
        slug("tokio — `gracepool-tokio` (`adapters/tokio`)"),
        "tokio--gracepool-tokio-adapterstokio"
    );
    assert_eq!(slug("\"The database restarted\""), "the-database-restarted");
    assert_eq!(
        anchors("# A\n```\n# not a heading\n```\n## A\n"),
        vec!["a".to_owned(), "a-1".to_owned()]
    );
}
