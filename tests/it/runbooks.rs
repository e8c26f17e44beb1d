//! The runbooks' examples are checked: every ```console block in runbooks/*.md is a
//! session — `$ tsmigrate …` command lines, each followed by lines its output must contain —
//! and this test runs them all, in file order, on one scenario, comparing what the tool
//! prints with what the runbooks quote. A ```console service block starts `tsmigrate run` as
//! a process for the length of the block and sends its `curl` lines to it. The format is
//! described in runbooks/README.md.

use regex::Regex;

use crate::servers::Daemon;
use crate::support::TestEnv;

/// What a command line of a runbook runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `$ tsmigrate …`: a command that runs once and exits.
    Command,
    /// `$ tsmigrate run …` in a service block: the service, started here and stopped (SIGTERM)
    /// at the end of its block; its quoted lines are matched against its whole log.
    Service,
    /// `$ curl [-s] [-i] http://…/path` in a service block: a GET of `path` from that service;
    /// it prints the body (after `HTTP/1.1 <status>` with `-i`). The lines quoted for
    /// `/metrics` may come in any order.
    Get,
}

/// One command line of a runbook and the lines quoted after it.
#[derive(Debug, Clone, PartialEq)]
struct Example {
    /// `runbooks/03-validate.md:42`, for failure messages.
    at: String,
    kind: Kind,
    /// The number of its code block in the file (a service lives until its block ends).
    block: usize,
    args: Vec<String>,
    exit_code: i32,
    expected: Vec<String>,
}

/// The examples of one runbook's text, in order.
fn examples(file: &str, text: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_console = false;
    let mut in_service = false;
    let mut block = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_service = !in_console && trimmed == "```console service";
            in_console = !in_console && (trimmed == "```console" || in_service);
            block += 1;
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
            let kind = match (words.first().map(String::as_str), words.get(1).map(String::as_str)) {
                (Some("tsmigrate"), Some("run")) if in_service => Kind::Service,
                (Some("curl"), _) if in_service => Kind::Get,
                (Some("tsmigrate"), _) => Kind::Command,
                _ => panic!("{file}:{}: a checked command runs tsmigrate (or, in a service block, curl)", i + 1),
            };
            let args = match kind {
                Kind::Get => {
                    let url = words.iter().skip(1).find(|w| !w.starts_with('-')).unwrap_or_else(|| panic!("{file}:{}: curl without a URL", i + 1));
                    let url = url.trim_matches(|c| c == '\'' || c == '"');
                    let path = url.split_once("://").map_or(url, |(_, rest)| rest);
                    let path = path.find('/').map_or("/", |at| &path[at..]);
                    let with_status = words.iter().any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('i'));
                    vec![path.to_string(), with_status.to_string()]
                }
                Kind::Service => words[2..].to_vec(),
                Kind::Command => words[1..].to_vec(),
            };
            out.push(Example { at: format!("{file}:{}", i + 1), kind, block, args, exit_code, expected: vec![] });
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
            (r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2})?( UTC|Z|[+-][0-9]{2}:[0-9]{2})?".to_string(), 6)
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
    assert!(pattern("from <time> to <time>").is_match("from 2026-12-07T04:00:00+00:00 to 2026-12-07T05:00:00+00:00"));

    let text = "```console service\n$ tsmigrate run --no-jobs\ntsmigrate listening on …\n$ curl -si 'http://localhost:8080/ready?x=1&y=2'\nHTTP/1.1 200 OK\n$ tsmigrate status\n```\n```console\n$ tsmigrate history\n```\n";
    let found = examples("x.md", text);
    let kinds: Vec<(Kind, usize)> = found.iter().map(|e| (e.kind, e.block)).collect();
    assert_eq!(kinds, vec![(Kind::Service, 1), (Kind::Get, 1), (Kind::Command, 1), (Kind::Command, 3)], "a service lives for its block");
    assert_eq!(found[0].args, vec!["--no-jobs"]);
    assert_eq!(found[1].args, vec!["/ready?x=1&y=2", "true"], "the path, and whether the status line is printed");
    let result = std::panic::catch_unwind(|| examples("x.md", "```console\n$ curl http://localhost:8080/health\n```\n"));
    assert!(result.is_err(), "curl outside a service block has no service to ask");
}

/// Waits until the service has warmed its read path, as a deploy waits for the readiness
/// probe (within the warm-up's own deadline and a margin).
async fn warmed(http: &reqwest::Client, daemon: &Daemon) {
    let deadline = std::time::Instant::now() + tsmigrate::http::warm::WARM_UP_DEADLINE + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let warming = match http.get(daemon.url("/ready")).send().await {
            Ok(reply) => reply.text().await.unwrap_or_default().contains("warming up"),
            Err(_) => true,
        };
        if !warming {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the service did not warm its read path:\n{}", daemon.logs());
}

/// Stops the service of a service block (SIGTERM) and compares its exit code and log with the
/// lines quoted after its `tsmigrate run`.
fn stop_service(service: &mut Option<(usize, Example, Daemon)>, failures: &mut Vec<String>) {
    if let Some((_, example, daemon)) = service.take() {
        let (code, log) = daemon.stop_and_read_log();
        failures.extend(differs(&example, code, &log));
    }
}

/// What is wrong with `example`'s run, if anything: its exit code or the quoted lines `output` lacks.
fn differs(example: &Example, code: i32, output: &str) -> Option<String> {
    let missing = missing(&example.expected, output);
    (code != example.exit_code || !missing.is_empty()).then(|| {
        format!(
            "{}: {} exited {code} (the runbook says {}); lines not printed:\n  {}\n--- what it printed ---\n{output}",
            example.at,
            match example.kind {
                Kind::Command => format!("tsmigrate {}", example.args.join(" ")),
                Kind::Service => format!("tsmigrate run {} (stopped with SIGTERM)", example.args.join(" ")),
                Kind::Get => format!("GET {}", example.args[0]),
            },
            example.exit_code,
            missing.join("\n  ")
        )
    })
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
    let config_path = std::path::PathBuf::from(&config);
    let http = reqwest::Client::new();
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut unchecked_runbooks = Vec::new();
    for file in files {
        let name = format!("runbooks/{}", file.file_name().unwrap().to_string_lossy());
        let checked_before = checked;
        // The service of the current service block: its block, its example, the process.
        let mut service: Option<(usize, Example, Daemon)> = None;
        for example in examples(&name, &std::fs::read_to_string(&file).unwrap()) {
            if service.as_ref().is_some_and(|(block, ..)| *block != example.block) {
                stop_service(&mut service, &mut failures);
            }
            let args: Vec<&str> = example.args.iter().map(String::as_str).collect();
            match example.kind {
                Kind::Command => {
                    let out = run(&args);
                    failures.extend(differs(&example, out.code, &format!("{}\n{}", out.stdout, out.stderr)));
                }
                Kind::Service => {
                    assert!(service.is_none(), "{}: one `tsmigrate run` per service block", example.at);
                    let daemon = Daemon::start_with(&env, Some(&config_path), &args, &[]);
                    warmed(&http, &daemon).await;
                    service = Some((example.block, example.clone(), daemon));
                }
                Kind::Get => {
                    let (_, _, daemon) = service.as_ref().unwrap_or_else(|| panic!("{}: curl before `tsmigrate run` in its block", example.at));
                    let (code, output) = match http.get(daemon.url(&example.args[0])).send().await {
                        Ok(reply) => {
                            let status = reply.status();
                            let body = reply.text().await.unwrap_or_default();
                            let head = if example.args[1] == "true" { format!("HTTP/1.1 {status}\n") } else { String::new() };
                            (0, format!("{head}{body}"))
                        }
                        Err(e) => (7, format!("curl: {e}")),
                    };
                    // Prometheus's text format has no fixed order of metrics: one quoted
                    // line at a time.
                    let examples = if example.args[0].starts_with("/metrics") {
                        example.expected.iter().map(|line| Example { expected: vec![line.clone()], ..example.clone() }).collect()
                    } else {
                        vec![example.clone()]
                    };
                    failures.extend(examples.iter().filter_map(|example| differs(example, code, &output)));
                }
            }
            checked += 1;
        }
        stop_service(&mut service, &mut failures);
        // Every runbook (`NN-….md`) shows what good output looks like, checked.
        if checked == checked_before && file.file_name().unwrap().to_string_lossy().starts_with(|c: char| c.is_ascii_digit()) {
            unchecked_runbooks.push(name);
        }
    }
    assert!(unchecked_runbooks.is_empty(), "runbooks without a checked ```console block: {unchecked_runbooks:?}");
    assert!(checked >= 10, "the runbooks hold {checked} checked examples");
    assert!(failures.is_empty(), "{} of {checked} runbook examples differ from the tool:\n\n{}", failures.len(), failures.join("\n\n"));
    env.cleanup().await;
}
