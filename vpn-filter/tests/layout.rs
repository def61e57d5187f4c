//! The layout of `src/` is the architecture: each top-level module is one side (kernel,
//! registry, endpoints, daemon, client, cli, replay), dependencies between them run one way,
//! and only `kernel/` talks to BPF. These tests read the source's `crate::` paths, so a new
//! import that closes a loop or reaches for aya elsewhere fails here, naming the files.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn rust_files(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let rel = path.strip_prefix(src()).expect("under src/").to_path_buf();
            out.push((rel, text));
        }
    }
}

/// The source without `//` comments (doc comments mention paths that are not imports).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split_once("//").map_or(l, |(c, _)| c))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a file names through `crate::` (paths and `use crate::{..}` groups).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The first segment of each item at the group's top level.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        item_start = false;
                        refs.insert(ident(&group[j..]).to_string());
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(ident(after).to_string());
        }
        rest = after;
    }
    refs.retain(|r| !r.is_empty());
    refs
}

/// The top-level module a file belongs to (`kernel/pin.rs` -> `kernel`); `None` for the
/// crate roots.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if rel.components().count() == 1 {
        let stem = first.trim_end_matches(".rs");
        return (stem != "lib" && stem != "main").then(|| stem.to_string());
    }
    Some(first)
}

/// Edges between top-level modules, each with the files that make it.
fn module_graph() -> BTreeMap<String, BTreeMap<String, Vec<PathBuf>>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let tops: BTreeSet<String> = files.iter().filter_map(|(f, _)| top_module(f)).collect();
    let mut graph: BTreeMap<String, BTreeMap<String, Vec<PathBuf>>> = BTreeMap::new();
    for (file, text) in &files {
        let Some(from) = top_module(file) else {
            continue;
        };
        let node = graph.entry(from.clone()).or_default();
        for to in crate_refs(&code(text)) {
            if to != from && tops.contains(&to) {
                node.entry(to).or_default().push(file.clone());
            }
        }
    }
    graph
}

/// A cycle through the graph, if there is one, as the modules in order.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, Vec<PathBuf>>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, Vec<PathBuf>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    if let Some(cycle) = find_cycle(&graph) {
        let hops: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let files: Vec<String> = graph[&w[0]][&w[1]]
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                format!("  {} -> {} (in {})", w[0], w[1], files.join(", "))
            })
            .collect();
        panic!("import cycle between src/ modules:\n{}", hops.join("\n"));
    }
}

#[test]
fn only_the_kernel_module_imports_aya() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|(f, _)| top_module(f).is_some_and(|m| m != "kernel"))
        .filter(|(_, text)| code(text).contains("aya::"))
        .map(|(f, _)| f.display().to_string())
        .collect();
    assert!(
        outside.is_empty(),
        "aya is used outside src/kernel/ in: {}",
        outside.join(", ")
    );
}

#[test]
fn the_cycle_check_sees_a_cycle_and_group_imports() {
    let refs = crate_refs("use crate::{a::{b, c}, d::E};\nfn f() { crate::g::h(); }");
    assert_eq!(refs, ["a", "d", "g"].map(String::from).into());
    let mut graph: BTreeMap<String, BTreeMap<String, Vec<PathBuf>>> = BTreeMap::new();
    graph
        .entry("a".into())
        .or_default()
        .insert("b".into(), vec![]);
    graph
        .entry("b".into())
        .or_default()
        .insert("c".into(), vec![]);
    assert_eq!(find_cycle(&graph), None);
    graph
        .entry("c".into())
        .or_default()
        .insert("a".into(), vec![]);
    assert_eq!(
        find_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
