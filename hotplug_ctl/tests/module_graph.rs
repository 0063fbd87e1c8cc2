//! hotplug_ctl's modules must not import each other in a circle (issue #13: `runner.rs` and
//! `steps.rs` once did). This reads the crate's sources as text, the way a reviewer would: every
//! `crate::a::b` path and every `super::` path is an edge from the file's module to the longest
//! module it names, and the graph must have no cycle. A parent module that names its own child
//! (`steps::run`) counts too, so a child that uses its parent and is used by it is a cycle.
//!
//! Text, not `syn`: the sources are our own, paths are written out (`crate::x::Y`, `super::Y`),
//! and a false edge could only make this test stricter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`session::steps`) of a source file under `src/`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts.join("::")
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments (a doc comment may name any module) and without its
/// `#[cfg(test)] mod tests` (tests may use anything).
fn code_of(text: &str) -> String {
    let tests = text.match_indices("#[cfg(test)]\n").find(|(i, m)| {
        let next = text[i + m.len()..].lines().next().unwrap_or("");
        next.trim_start_matches("pub(crate) ")
            .starts_with("mod tests")
    });
    let code = tests.map_or(text, |(i, _)| &text[..i]);
    code.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Path words after `prefix` at each occurrence, e.g. ["session", "steps", "run"] for
/// `crate::session::steps::run`. Only identifiers; stops at the first non-identifier.
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[i + prefix.len()..];
        if !before_ok {
            continue;
        }
        let mut words = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end == 0 {
                break;
            }
            words.push(&tail[..end]);
            tail = &tail[end..];
            match tail.strip_prefix("::") {
                Some(t) => tail = t,
                None => break,
            }
        }
        out.push(words);
    }
    out
}

/// The longest module in `modules` that `path` (relative to the crate root) starts with.
fn target(modules: &BTreeSet<String>, path: &[&str]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| !m.is_empty())
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if module.is_empty() {
            continue; // lib.rs / main.rs: the root declares every module
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let code = code_of(&text);
        let code = code.as_str();
        let own: Vec<&str> = module.split("::").collect();
        let mut targets = BTreeSet::new();
        for p in paths_after(code, "crate::") {
            targets.extend(target(&modules, &p));
        }
        // `super::x` from a file module `a::b` names `a::x`.
        let parent = &own[..own.len() - 1];
        for p in paths_after(code, "super::") {
            let full: Vec<&str> = parent.iter().copied().chain(p).collect();
            targets.extend(
                target(&modules, &full).or_else(|| (!parent.is_empty()).then(|| parent.join("::"))),
            );
        }
        // A parent naming its child (`steps::run`, `self::steps::run`).
        for m in &modules {
            if let Some(child) = m.strip_prefix(&format!("{module}::")) {
                if !child.contains("::")
                    && (code.contains(&format!(" {child}::"))
                        || code.contains(&format!("({child}::")))
                {
                    targets.insert(m.clone());
                }
            }
        }
        targets.remove(&module);
        graph.entry(module).or_default().extend(targets);
    }
    graph
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_string(), Mark::Open);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, marks, stack) {
                return Some(c);
            }
        }
        stack.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn hotplug_ctl_has_no_import_circle() {
    let graph = module_graph();
    // The reader must see the modules it is about, or it would pass on nothing.
    for m in [
        "runner",
        "session",
        "session::steps",
        "slot",
        "card",
        "agent",
    ] {
        assert!(graph.contains_key(m), "module {m} not found: {graph:?}");
    }
    assert!(
        graph["runner"].contains("session::steps"),
        "runner should use the step interpreter: {:?}",
        graph["runner"]
    );
    assert!(graph["session::steps"].contains("session"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import circle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_parent_child_circle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("runner".into())
        .or_default()
        .insert("session".into());
    g.entry("session".into())
        .or_default()
        .insert("session::steps".into());
    g.entry("session::steps".into())
        .or_default()
        .insert("runner".into());
    let cycle = find_cycle(&g).unwrap_or_default();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    g.get_mut("session::steps").map(|s| s.remove("runner"));
    assert_eq!(find_cycle(&g), None);
}

#[test]
fn paths_are_read_as_module_words() {
    let code = "use crate::session::steps::{run, x};\nlet a = crate::say(\"x\"); my_crate::no;";
    let p = paths_after(code, "crate::");
    assert_eq!(p, vec![vec!["session", "steps"], vec!["say"]]);
}
