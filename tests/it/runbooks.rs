//! The runbooks' examples are checked: every ```console block in runbooks/*.md is a
//! session — `$ tsmigrate …` command lines, each followed by lines its output must contain —
//! and this test runs them all, in file order, on one scenario, comparing what the tool
//! prints with what the runbooks quote. The format is described in runbooks/README.md.

use regex::Regex;

use crate::support::TestEnv;

/// One `$ tsmigrate …` line of a runbook and the lines quoted after it.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    /// `runbooks/03-validate.md:42`, for failure messages.
    at: String,
    args: Vec<String>,
    exit_code: i32,
    expected: Vec<String>,
}

/// The examples of one runbook's text, in order.
fn examples(file: &str, text: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_console = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_console = !in_console && trimmed == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        if let Some(command) = trimmed.strip_prefix("$ ") {
            let (command, exit_code) = match command.split_once("# exit ") {
                Some((command, code)) => (command.trim(), code.trim().parse().unwrap_or_else(|_| panic!("{file}:{}: `# exit N` wants a number", i + 1))),
                None => (command.trim(), 0),
            };
            let words: Vec<String> = command.split_whitespace().map(String::from).collect();
            assert_eq!(words.first().map(String::as_str), Some("tsmigrate"), "{file}:{}: a checked command runs tsmigrate", i + 1);
            out.push(Example { at: format!("{file}:{}", i + 1), args: words[1..].to_vec(), exit_code, expected: vec![] });
        } else if !trimmed.is_empty() && trimmed != "..." && trimmed != "…" {
            let example = out.last_mut().unwrap_or_else(|| panic!("{file}:{}: output quoted before any `$ tsmigrate` line", i + 1));
            example.expected.push(trimmed.to_string());
        }
    }
    out
}

/// A quoted line as a pattern over one whole output line: `…` is any text, `<n>` a number
/// (`1,234`, `0.5`), `<time>` a time as the tool writes it; everything else is literal and
/// spaces may be any run of spaces.
fn pattern(quoted: &str) -> Regex {
    let mut re = String::from("^");
    let mut rest = quoted;
    while !rest.is_empty() {
        let (token, len) = if rest.starts_with('…') {
            (".*".to_string(), '…'.len_utf8())
        } else if rest.starts_with("<n>") {
            (r"-?[0-9][0-9,]*(\.[0-9]+)?".to_string(), 3)
        } else if rest.starts_with("<time>") {
            (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2})?( UTC|Z)?".to_string(), 6)
        } else if rest.starts_with(' ') {
            (" +".to_string(), rest.len() - rest.trim_start_matches(' ').len())
        } else {
            let c = rest.chars().next().unwrap();
            (regex::escape(&c.to_string()), c.len_utf8())
        };
        re.push_str(&token);
        rest = &rest[len..];
    }
    re.push('$');
    Regex::new(&re).unwrap_or_else(|e| panic!("pattern of {quoted:?}: {e}"))
}

/// The quoted lines missing from `output`, in order: each must match a line after the
/// one the previous quoted line matched.
fn missing<'a>(expected: &'a [String], output: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = output.lines().map(str::trim).collect();
    let mut from = 0;
    let mut missing = Vec::new();
    for quoted in expected {
        let re = pattern(quoted);
        match lines[from..].iter().position(|l| re.is_match(l)) {
            Some(i) => from += i + 1,
            None => missing.push(quoted.as_str()),
        }
    }
    missing
}

#[test]
fn the_quoted_line_patterns_match_what_they_say_and_nothing_else() {
    let text = "intro\n```sh\ntsmigrate prepare\n```\n```console\n$ tsmigrate validate --depth events   # exit 1\nvalidate: <n> differences …\n...\n$ tsmigrate status\nverdict:    healthy: …\n```\n";
    let found = examples("x.md", text);
    assert_eq!(found.len(), 2, "the sh block is not checked: {found:?}");
    assert_eq!((found[0].args.clone(), found[0].exit_code), (vec!["validate".to_string(), "--depth".into(), "events".into()], 1));
    assert_eq!(found[0].expected, vec!["validate: <n> differences …"]);
    assert_eq!(found[1].at, "x.md:9");
    assert!(pattern("validate: <n> differences …").is_match("validate: 1,234 differences in 3 hours"));
    assert!(!pattern("validate: <n> differences …").is_match("validate: clean"));
    assert!(pattern("phase: new -> prepared").is_match("phase: new   -> prepared"));
    assert!(pattern("at <time>").is_match("at 2026-12-07 06:00:00 UTC"));
    assert!(!pattern("(a.b)").is_match("(axb)"), "literal, not a regular expression");
    assert_eq!(missing(&["b".into(), "a".into()], "a\nb\n"), vec!["a"], "in order");
    assert!(missing(&["a".into(), "b".into()], "  a\nb  \n").is_empty());
}

/// Runs every runbook's examples in order on one scenario: a day and a half of seeded legacy
/// traffic, plain PostgreSQL (the TimescaleDB-only lines of the runbooks are written as `…`),
/// a soak of 0 hours so the runbooks' commands run as written one after the other.
#[tokio::test]
async fn every_runbook_example_prints_what_the_runbook_quotes() {
    let env = TestEnv::new().await;
    let config = env.write_file("tsmigrate.toml", "[target]\nmode = \"postgres\"\n[migration]\nsoak_hours = 0\n");
    let config = config.to_str().unwrap().to_string();
    let run = |args: &[&str]| env.cli_with_env(args, &[("TSMIGRATE_CONFIG", config.as_str())]);
    run(&["legacy", "setup"]).expect_success();
    run(&["seed", "--events", "3000", "--days", "2", "--users", "60", "--seed", "7"]).expect_success();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    files.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in files {
        let name = format!("runbooks/{}", file.file_name().unwrap().to_string_lossy());
        for example in examples(&name, &std::fs::read_to_string(&file).unwrap()) {
            let args: Vec<&str> = example.args.iter().map(String::as_str).collect();
            let out = run(&args);
            let output = format!("{}\n{}", out.stdout, out.stderr);
            let missing = missing(&example.expected, &output);
            if out.code != example.exit_code || !missing.is_empty() {
                failures.push(format!(
                    "{}: tsmigrate {} exited {} (the runbook says {}); lines not printed:\n  {}\n--- what it printed ---\n{output}",
                    example.at,
                    args.join(" "),
                    out.code,
                    example.exit_code,
                    missing.join("\n  ")
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "the runbooks hold {checked} checked examples");
    assert!(failures.is_empty(), "{} of {checked} runbook examples differ from the tool:\n\n{}", failures.len(), failures.join("\n\n"));
    env.cleanup().await;
}
