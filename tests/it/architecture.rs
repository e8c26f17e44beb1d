//! The architecture invariants of ARCHITECTURE.md that can be checked by reading the
//! sources: which module may import which (parsed with `syn`, against the layer list that
//! ARCHITECTURE.md itself holds), where TimescaleDB is named, where clap is used, and that
//! the diff core does no I/O. A failure names the file and the line.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to the crate root.
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join(dir), &mut files);
    let found: Vec<(String, String)> =
        files.into_iter().map(|p| (p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"), std::fs::read_to_string(&p).unwrap())).collect();
    assert!(found.len() > 3, "no sources found under {dir}");
    found
}

/// Lines of code (comments and doc comments left out) with their numbers.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim_start().starts_with("//"))
}

fn violations(files: &[(String, String)], applies: impl Fn(&str) -> bool, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files.iter().filter(|(p, _)| applies(p)) {
        for (n, line) in code_lines(text) {
            for word in forbidden {
                if line.contains(word) {
                    found.push(format!("{path}:{n}: {word}: {}", line.trim()));
                }
            }
        }
    }
    found
}

fn under(path: &str, modules: &[&str]) -> bool {
    modules.iter().any(|m| path == format!("src/{m}.rs") || path.starts_with(&format!("src/{m}/")))
}

/// One reference from a module to another top-level module of the crate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    line: usize,
    /// The module the reference is written in (inline `mod` blocks included).
    module: Vec<String>,
    /// Where it leads, from the crate root (`["store", "writer", "TargetWriter"]`).
    resolved: Vec<String>,
    /// The path as written (`crate::store::writer::TargetWriter`, `super::super::state`).
    written: String,
    /// The top-level module it lands in (`store`).
    target: String,
}

/// The module path of a source file: `src/store/writer.rs` → `["store", "writer"]`,
/// `src/reads/mod.rs` → `["reads"]`, `src/lib.rs` and `src/main.rs` → `[]`.
fn module_path(file: &str) -> Vec<String> {
    let inner = file.strip_prefix("src/").unwrap_or(file).strip_suffix(".rs").unwrap_or(file);
    let mut parts: Vec<String> = inner.split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// Reads a file's references to the crate's modules from its syntax: every `use` item
/// (groups and nested groups expanded, `self::`/`super::` resolved against the module the
/// item sits in, inline `mod` blocks included), every path in code (`crate::phase::Phase::X`),
/// and `crate::`/`super::` paths inside macro invocations. `root` names the crate as the
/// file sees it: `crate`, and also `tsmigrate` in `main.rs` (the binary uses the library).
/// In the crate root a path may also start with a top-level module's name (`roots`).
fn references(module: &[String], text: &str, root_alias: Option<&str>, roots: &[String]) -> Result<Vec<Reference>, String> {
    use syn::visit::Visit;

    struct Walker<'a> {
        module: Vec<String>,
        alias: Option<&'a str>,
        roots: &'a [String],
        found: Vec<Reference>,
    }

    impl Walker<'_> {
        /// Where `segments` leads from the current module, as a path from the crate root.
        fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
            let first = segments.first()?;
            if first == "crate" || Some(first.as_str()) == self.alias {
                return Some(segments[1..].to_vec());
            }
            if self.module.is_empty() && segments.len() > 1 && self.roots.contains(first) {
                return Some(segments.to_vec());
            }
            if first == "self" || first == "super" {
                let mut at = self.module.clone();
                let mut rest = segments;
                while let Some(head) = rest.first() {
                    match head.as_str() {
                        "self" => {}
                        "super" => {
                            at.pop()?;
                        }
                        _ => break,
                    }
                    rest = &rest[1..];
                }
                at.extend(rest.iter().cloned());
                return Some(at);
            }
            None
        }

        fn record(&mut self, line: usize, segments: &[String]) {
            let Some(resolved) = self.resolve(segments) else { return };
            let Some(target) = resolved.first() else { return };
            if matches!(target.as_str(), "self" | "super" | "crate" | "*") {
                return;
            }
            self.found.push(Reference { line, module: self.module.clone(), written: segments.join("::"), target: target.clone(), resolved: resolved.clone() });
        }

        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(p) => {
                    prefix.push(p.ident.to_string());
                    self.use_tree(prefix, &p.tree);
                    prefix.pop();
                }
                syn::UseTree::Name(n) => {
                    prefix.push(n.ident.to_string());
                    self.record(n.ident.span().start().line, prefix);
                    prefix.pop();
                }
                syn::UseTree::Rename(r) => {
                    prefix.push(r.ident.to_string());
                    self.record(r.ident.span().start().line, prefix);
                    prefix.pop();
                }
                syn::UseTree::Glob(g) => {
                    prefix.push("*".into());
                    self.record(g.star_token.span.start().line, prefix);
                    prefix.pop();
                }
                syn::UseTree::Group(g) => {
                    for tree in &g.items {
                        self.use_tree(prefix, tree);
                    }
                }
            }
        }
    }

    impl<'ast> Visit<'ast> for Walker<'_> {
        fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
            self.use_tree(&mut Vec::new(), &item.tree);
        }

        fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }

        fn visit_path(&mut self, path: &'ast syn::Path) {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            if let Some(first) = path.segments.first() {
                self.record(first.ident.span().start().line, &segments);
            }
            syn::visit::visit_path(self, path);
        }

        // `pub(in crate::x)` and `pub(super)` say who may see an item, not what it uses.
        fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            // Macro bodies are tokens: `crate :: a :: b` and `super :: a` runs in them.
            let tokens: Vec<proc_macro2::TokenTree> = flatten(mac.tokens.clone());
            let mut i = 0;
            while i < tokens.len() {
                let starts =
                    matches!(&tokens[i], proc_macro2::TokenTree::Ident(id) if *id == "crate" || *id == "super" || self.alias.is_some_and(|a| *id == a));
                if !starts {
                    i += 1;
                    continue;
                }
                let line = tokens[i].span().start().line;
                let mut segments = vec![tokens[i].to_string()];
                let mut j = i + 1;
                while j + 2 < tokens.len() + 1 {
                    let colons = matches!((&tokens.get(j), &tokens.get(j + 1)), (Some(proc_macro2::TokenTree::Punct(a)), Some(proc_macro2::TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':');
                    match (colons, tokens.get(j + 2)) {
                        (true, Some(proc_macro2::TokenTree::Ident(id))) => {
                            segments.push(id.to_string());
                            j += 3;
                        }
                        _ => break,
                    }
                }
                if segments.len() > 1 {
                    self.record(line, &segments);
                }
                i = j.max(i + 1);
            }
            syn::visit::visit_macro(self, mac);
        }
    }

    fn flatten(stream: proc_macro2::TokenStream) -> Vec<proc_macro2::TokenTree> {
        let mut out = Vec::new();
        for tree in stream {
            match tree {
                proc_macro2::TokenTree::Group(g) => out.extend(flatten(g.stream())),
                other => out.push(other),
            }
        }
        out
    }

    let file = syn::parse_file(text).map_err(|e| format!("{e} at line {}", e.span().start().line))?;
    let mut walker = Walker { module: module.to_vec(), alias: root_alias, roots, found: Vec::new() };
    walker.visit_file(&file);
    walker.found.dedup();
    Ok(walker.found)
}

/// The layers of ARCHITECTURE.md's "Layers" section: lines `- layer N (name): mod, mod, …`,
/// as (layer number, module) — a higher number is a higher layer.
fn documented_layers() -> Vec<(u32, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text.split("### Layers").nth(1).expect("ARCHITECTURE.md has a \"### Layers\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut layers = Vec::new();
    for line in section.lines() {
        let Some(rest) = line.trim().strip_prefix("- layer ") else { continue };
        let (head, modules) = rest.split_once(':').unwrap_or_else(|| panic!("a layer line names its modules after a colon: {line}"));
        let number: u32 = head.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a layer line starts with its number: {line}"));
        for module in modules.split(',').map(|m| m.trim().trim_matches('`')).filter(|m| !m.is_empty()) {
            layers.push((number, module.to_string()));
        }
    }
    assert!(!layers.is_empty(), "the Layers section of ARCHITECTURE.md lists no `- layer N (name): mod, …` lines");
    layers
}

/// Every top-level module of the crate: `src/x.rs` and `src/x/`, the modules written inline
/// in `lib.rs` (`exit`), `lib` (the crate root's own items: `exit_code_for`) and `main`
/// (the binary).
fn top_level_modules() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_stem()?.to_string_lossy().to_string();
            (p.is_dir() || p.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .collect();
    let lib = syn::parse_file(&std::fs::read_to_string(src.join("lib.rs")).unwrap()).expect("src/lib.rs parses");
    modules.extend(lib.items.iter().filter_map(|item| match item {
        syn::Item::Mod(m) if m.content.is_some() => Some(m.ident.to_string()),
        _ => None,
    }));
    modules.sort();
    modules.dedup();
    modules
}

/// One edge between top-level modules and where it is written.
struct Edge {
    from: String,
    /// The module path it is written in (`["daemon", "observe"]`).
    module: Vec<String>,
    to: String,
    /// Where it leads, from the crate root.
    resolved: Vec<String>,
    at: String,
}

/// Every reference between two different top-level modules in `files`.
fn module_edges(files: &[(String, String)]) -> Vec<Edge> {
    let roots = top_level_modules();
    let mut edges = Vec::new();
    for (path, text) in files {
        let module = module_path(path);
        let (top, alias) = match path.as_str() {
            "src/main.rs" => ("main", Some("tsmigrate")),
            "src/lib.rs" => ("lib", None),
            _ => (module[0].as_str(), None),
        };
        let found = references(&module, text, alias, &roots).unwrap_or_else(|e| panic!("{path} does not parse: {e}"));
        for r in found {
            // In lib.rs, an inline module (`exit`) is a module of its own.
            let from = r.module.first().map_or(top, String::as_str).to_string();
            // An item of the crate root that is not a module (`exit_code_for`) is lib's.
            let to = if roots.contains(&r.target) { r.target.clone() } else { "lib".to_string() };
            if to != from {
                edges.push(Edge { from, module: r.module, to, resolved: r.resolved, at: format!("{path}:{}: {}", r.line, r.written) });
            }
        }
    }
    edges
}

/// The "`- X is imported only by: a, b`" lines of the Layers section: a module private to
/// the modules named (each a module path, `daemon::jobs`), besides itself and its parent.
fn documented_private_modules() -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text.split("### Layers").nth(1).expect("a Layers section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let path = |s: &str| s.trim().trim_matches('`').split("::").map(str::to_string).collect::<Vec<_>>();
    section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ")?.split_once(" is imported only by:"))
        .map(|(module, users)| (path(module), users.split(',').map(path).collect()))
        .collect()
}

/// What breaks the layering: a module naming a module of a higher layer, or two modules
/// that reach each other (a cycle, at any layer). Each with file:line, the path and the rule.
fn layering_violations(layers: &[(u32, String)], private: &[(Vec<String>, Vec<Vec<String>>)], edges: &[Edge]) -> Vec<String> {
    let layer_of = |m: &str| layers.iter().find(|(_, name)| name == m).map(|(n, _)| *n);
    let mut found = Vec::new();
    for e in edges {
        let (Some(from), Some(to)) = (layer_of(&e.from), layer_of(&e.to)) else {
            found.push(format!("{}: `{}` → `{}`: every module is in one layer of ARCHITECTURE.md", e.at, e.from, e.to));
            continue;
        };
        if to > from {
            let back =
                if edges.iter().any(|b| b.from == e.to && b.to == e.from) { format!(" (and `{}` imports `{}`: a cycle)", e.to, e.from) } else { String::new() };
            found.push(format!(
                "{}: `{}` (layer {from}) imports `{}` (layer {to}){back}: a module imports only its own layer and the layers below",
                e.at, e.from, e.to
            ));
        }
    }
    for e in edges {
        for (module, users) in private {
            let inside = e.resolved.starts_with(module);
            let allowed = e.module.starts_with(&module[..module.len() - 1]) || users.iter().any(|u| e.module.starts_with(u));
            if inside && !allowed {
                let users: Vec<String> = users.iter().map(|u| u.join("::")).collect();
                found.push(format!("{}: `{}` reaches into `{}`, which only {} import", e.at, e.module.join("::"), module.join("::"), users.join(", ")));
            }
        }
    }
    // Cycles: upward edges are reported above; among the others (each one staying in its
    // layer or going down) a cycle can only be peers of one layer importing each other.
    let level = |e: &&Edge| layer_of(&e.from).zip(layer_of(&e.to)).is_some_and(|(from, to)| to <= from);
    let kept: Vec<&Edge> = edges.iter().filter(level).collect();
    let graph: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = kept.iter().fold(Default::default(), |mut g, e| {
        g.entry(e.from.as_str()).or_default().insert(e.to.as_str());
        g
    });
    let reaches = |start: &str, goal: &str| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![start];
        while let Some(at) = todo.pop() {
            if at == goal {
                return true;
            }
            if seen.insert(at) {
                todo.extend(graph.get(at).into_iter().flatten().copied());
            }
        }
        false
    };
    let mut reported = std::collections::BTreeSet::new();
    for e in kept {
        if reaches(&e.to, &e.from) && reported.insert((e.from.as_str(), e.to.as_str())) {
            found.push(format!(
                "{}: `{}` → `{}` closes a cycle (`{}` reaches `{}` back): peers of a layer never import each other both ways",
                e.at, e.from, e.to, e.to, e.from
            ));
        }
    }
    found
}

#[test]
fn the_layer_list_names_every_module_once() {
    let layers = documented_layers();
    let modules = top_level_modules();
    let listed: Vec<&String> = layers.iter().map(|(_, m)| m).collect();
    let missing: Vec<&String> = modules.iter().filter(|m| !listed.contains(m)).collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md's Layers section does not place these modules of src/: {missing:?}");
    let unknown: Vec<&&String> = listed.iter().filter(|m| !modules.contains(m)).collect();
    assert!(unknown.is_empty(), "ARCHITECTURE.md's Layers section names modules that src/ does not have: {unknown:?}");
    let mut twice: Vec<&&String> = listed.iter().filter(|m| listed.iter().filter(|n| n == m).count() > 1).collect();
    twice.dedup();
    assert!(twice.is_empty(), "ARCHITECTURE.md's Layers section places these modules twice: {twice:?}");
}

#[test]
fn layers_import_only_downwards() {
    let layers = documented_layers();
    let edges = module_edges(&sources("src"));
    assert!(edges.len() > 50, "the parser finds the crate's imports ({} found)", edges.len());
    let found = layering_violations(&layers, &documented_private_modules(), &edges);
    assert!(found.is_empty(), "the layers of ARCHITECTURE.md are broken ({}):\n{}", found.len(), found.join("\n"));
}

/// The parser reads what substring matching missed: groups, `super::super::`, and paths
/// written in full in code.
#[test]
fn the_import_parser_reads_groups_super_paths_and_qualified_paths() {
    let targets = |module: &[&str], text: &str| -> Vec<(usize, String)> {
        let module: Vec<String> = module.iter().map(|m| m.to_string()).collect();
        references(&module, text, None, &[]).unwrap().into_iter().map(|r| (r.line, r.target)).collect()
    };
    let group = targets(&["store", "writer"], "use crate::{http, x::{y, z}};\nuse std::fmt;\n");
    assert_eq!(group, vec![(1, "http".to_string()), (1, "x".to_string()), (1, "x".to_string())]);
    let up = targets(&["store", "user_sets", "build"], "use super::super::super::validate::diff;\nuse super::Tally;\n");
    assert_eq!(up, vec![(1, "validate".to_string()), (2, "store".to_string())]);
    let code = "fn f() -> bool {\n    let p = crate::phase::Phase::New;\n    matches!(p, crate::status::X)\n}\n";
    let qualified = targets(&["store"], code);
    assert!(qualified.contains(&(2, "phase".to_string())), "{qualified:?}");
    assert!(qualified.contains(&(3, "status".to_string())), "a path inside a macro: {qualified:?}");
    let nested = targets(&["reads"], "#[cfg(test)]\nmod tests {\n    use super::super::daemon::x;\n}\n");
    assert_eq!(nested, vec![(3, "daemon".to_string())], "super:: inside an inline module is resolved from that module");
    // And a violation it finds is reported with file:line, the path and the rule.
    let layers = vec![(1, "store".to_string()), (2, "validate".to_string())];
    let strings = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let edges = vec![Edge {
        from: "store".into(),
        module: strings(&["store", "writer"]),
        to: "validate".into(),
        resolved: strings(&["validate", "diff"]),
        at: "src/store/writer.rs:7: crate::validate::diff".into(),
    }];
    let found = layering_violations(&layers, &[], &edges);
    assert_eq!(found.len(), 1);
    let peers = vec![(0, "a".to_string()), (0, "b".to_string())];
    let edge =
        |from: &str, to: &str| Edge { from: from.into(), module: strings(&[from]), to: to.into(), resolved: strings(&[to]), at: format!("src/{from}.rs:1") };
    assert_eq!(layering_violations(&peers, &[], &[edge("a", "b")]), Vec::<String>::new(), "a peer may import a peer");
    assert_eq!(layering_violations(&peers, &[], &[edge("a", "b"), edge("b", "a")]).len(), 2, "but not both ways");
    let private = vec![(strings(&["b", "inner"]), vec![strings(&["c"])])];
    let reach = Edge { resolved: strings(&["b", "inner", "X"]), ..edge("a", "b") };
    assert!(layering_violations(&peers, &private, &[reach])[0].contains("reaches into `b::inner`, which only c import"));
    assert!(found[0].starts_with("src/store/writer.rs:7: crate::validate::diff: `store` (layer 1) imports `validate` (layer 2)"), "{}", found[0]);
}

#[test]
fn only_the_store_names_timescaledb_objects() {
    let files = sources("src");
    let catalog = [
        "timescaledb_information",
        "_retention_policy",
        "_compression_policy",
        "_columnstore_policy",
        "_continuous_aggregate_policy",
        "refresh_continuous_aggregate",
        "hypertable_",
        "create_hypertable",
        "compress_chunk",
        "show_chunks",
    ];
    let found = violations(&files, |p| !p.starts_with("src/store/"), &catalog);
    assert!(found.is_empty(), "TimescaleDB catalogs and functions belong in src/store/ (its Store implementation):\n{}", found.join("\n"));
    let branches = violations(&files, |p| !p.starts_with("src/store/") && !under(p, &["cli"]), &["StorageMode::Timescaledb =>", "StorageMode::Postgres =>"]);
    let allowed = |v: &String| v.contains("src/phase/command/optimize.rs") && !v.contains("sqlx");
    let found: Vec<&String> = branches.iter().filter(|v| !allowed(v)).collect();
    assert!(found.is_empty(), "storage-mode branches above the store (only optimize's text rendering may branch):\n{found:#?}");
}

#[test]
fn clap_stays_in_the_command_line() {
    let files = sources("src");
    let found = violations(&files, |p| !p.starts_with("src/cli/") && p != "src/main.rs", &["clap::", "use clap", "#[arg(", "#[command("]);
    assert!(found.is_empty(), "only src/cli/ and main.rs know clap:\n{}", found.join("\n"));
}

#[test]
fn the_diff_core_does_no_io() {
    let files = sources("src");
    let pure = [
        "src/validate/diff.rs",
        "src/validate/window.rs",
        "src/fingerprint.rs",
        "src/calendar.rs",
        "src/phase/gates.rs",
        "src/assess/project.rs",
        "src/assess/verdict.rs",
        "src/assess/config_file.rs",
        "src/assess/report.rs",
    ];
    let io = ["sqlx::query", "redis::cmd", "redis::pipe", "tokio::", "std::fs", "async fn", ".await", "reqwest"];
    let found = violations(&files, |p| pure.contains(&p), &io);
    assert!(
        found.is_empty(),
        "the diff core, the window, the fingerprint, the calendar, the gates and assess's projection, verdict, settings file and text are pure:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_phase_command_has_its_own_file() {
    let files = sources("src/phase/command");
    for command in [
        "prepare",
        "dual_write_start",
        "dual_write_stop",
        "backfill",
        "backfill_window",
        "import_history",
        "validate",
        "cutover",
        "reverse",
        "retire_flush",
        "optimize",
        "complete",
        "abort",
        "shadow",
    ] {
        let path = format!("src/phase/command/{command}.rs");
        let text = files.iter().find(|(p, _)| *p == path).map(|(_, t)| t.as_str()).unwrap_or_else(|| panic!("{path} is missing"));
        assert!(text.contains("impl PhaseCommand for"), "{path} implements PhaseCommand");
    }
}
