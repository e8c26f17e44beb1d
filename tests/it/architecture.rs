//! The architecture invariants of ARCHITECTURE.md that can be checked by reading the
//! sources: which module may import which, where TimescaleDB is named, where clap is
//! used, and that the diff core does no I/O. A failure names the file and the line.

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

#[test]
fn layers_import_only_downwards() {
    let files = sources("src");
    // The edges: nothing below them reaches up into them.
    let edges = ["crate::cli", "crate::http", "crate::daemon"];
    let below_edges = |p: &str| !under(p, &["cli", "http", "daemon"]) && p != "src/main.rs" && p != "src/lib.rs";
    let found = violations(&files, below_edges, &edges);
    assert!(found.is_empty(), "only the edges (cli, http, daemon) may import cli, http or daemon:\n{}", found.join("\n"));
    // Phase commands sit on top of everything but the edges; nothing below imports them.
    let below_phase = |p: &str| {
        under(
            p,
            &[
                "assess",
                "store",
                "legacy",
                "validate",
                "dual_write",
                "reads",
                "state",
                "stop",
                "calendar",
                "duration",
                "context",
                "event",
                "config",
                "connect",
                "db",
                "identity",
                "human",
                "progress",
                "remembered",
                "schedule",
                "telemetry",
            ],
        )
    };
    let found = violations(&files, below_phase, &["crate::phase", "crate::status"]);
    assert!(found.is_empty(), "assess, store, legacy, validate, dual_write, reads and the base modules never import phase or status:\n{}", found.join("\n"));
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
        "src/validate/fingerprint.rs",
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
