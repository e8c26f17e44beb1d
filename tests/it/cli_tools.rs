//! The commands around the migration: shell completions, the manual, `config show` /
//! `config check`, and `status --watch`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;

use crate::support::{ChildGuard, TestEnv};

#[tokio::test]
async fn completions_and_the_manual_come_from_the_command_line_definition_and_suggest_nothing() {
    let env = TestEnv::new().await;
    let bash = env.cli(&["completions", "bash"]);
    bash.expect_success();
    assert!(bash.stdout.contains("_tsmigrate") && bash.stdout.contains("retire-flush"), "{}", bash.stdout);
    // Not a phase command: no next step of any kind, on either stream.
    assert!(!bash.stdout.contains("next:") && !bash.stderr.contains("next:"), "{}{}", bash.stdout, bash.stderr);
    let zsh = env.cli(&["completions", "zsh", "--json"]);
    let envelope = zsh.expect_success().json();
    assert_eq!(envelope["command"], "completions");
    assert_eq!(envelope["next_steps"], Value::Array(vec![]));
    assert!(envelope["details"]["text"].as_str().unwrap().contains("#compdef tsmigrate"));
    let bad = env.cli(&["completions", "tcsh", "--json"]);
    assert!(bad.expect_code(2).json()["error"]["message"].as_str().unwrap().contains("tcsh"), "{}", bad.stdout);
    // A broken settings file does not stand in the way of completions.
    let broken = env.write_file("broken.toml", "[redis\n");
    env.cli(&["--config", broken.to_str().unwrap(), "completions", "fish"]).expect_success();

    let page = env.cli(&["man"]);
    assert!(page.expect_success().stdout.starts_with(".ie") || page.stdout.contains(".TH tsmigrate"), "{}", page.stdout);
    let dir = env.dir().join("man1");
    let written = env.cli(&["man", "--dir", dir.to_str().unwrap(), "--json"]);
    let files = written.expect_success().details()["files"].clone();
    let names: Vec<String> = files.as_array().unwrap().iter().map(|f| f.as_str().unwrap().rsplit('/').next().unwrap().to_string()).collect();
    for page in ["tsmigrate.1", "tsmigrate-validate.1", "tsmigrate-dual-write-start.1", "tsmigrate-config-check.1"] {
        assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        assert!(dir.join(page).exists());
    }
    env.cleanup().await;
}

#[tokio::test]
async fn config_show_names_the_source_of_every_setting_and_never_a_password() {
    let env = TestEnv::new().await;
    let file = env.write_file("tsmigrate.toml", "[redis]\nevent_cap = 1234\n[migration]\nsoak_hours = \"2h\"\n");
    let secret_url = "postgres://postgres:hunter2-secret@127.0.0.1:5432/postgres";
    let run = |extra: &[&str]| {
        let mut args = vec!["--config", file.to_str().unwrap(), "config", "show"];
        args.extend_from_slice(extra);
        env.cli_with_env(&args, &[("DATABASE_URL", secret_url), ("TSMIGRATE_API_TOKEN", "tok-very-secret")])
    };
    let text = run(&[]);
    text.expect_success();
    let json = run(&["--json", "--log-format", "json"]);
    for out in [&text, &json] {
        for secret in ["hunter2-secret", "tok-very-secret"] {
            assert!(!out.stdout.contains(secret) && !out.stderr.contains(secret), "{secret} shown:\n{}{}", out.stdout, out.stderr);
        }
    }
    assert!(text.stdout.contains(&format!("settings file: {} (chosen by --config)", file.display())), "{}", text.stdout);
    let settings = json.expect_success().details()["settings"].clone();
    let get = |key: &str| settings.as_array().unwrap().iter().find(|s| s["key"] == key).cloned().unwrap_or_else(|| panic!("{key} in {settings}"));
    assert_eq!(get("database.url")["source"], "env");
    assert_eq!(get("database.url")["from"], "DATABASE_URL");
    assert_eq!(get("database.url")["value"], "postgres://postgres:***@127.0.0.1:5432/postgres");
    assert_eq!(get("http.api_token")["value"], "***");
    assert_eq!((get("redis.event_cap")["source"].clone(), get("redis.event_cap")["value"].clone()), (Value::from("file"), Value::from(1234)));
    assert_eq!(get("migration.soak_hours")["value"], 2);
    assert_eq!(get("redis.events_key")["source"], "default");
    assert_eq!(get("log.format")["source"], "command line");
    assert_eq!(get("redis.key_prefix")["from"], "TSMIGRATE_REDIS_PREFIX");
    env.cleanup().await;
}

#[tokio::test]
async fn config_check_says_what_to_fix_and_connect_checks_the_servers() {
    let env = TestEnv::new().await;
    // Valid, without connecting: nothing is tried, even at an address where nothing listens.
    let offline = env.cli_with_env(&["config", "check"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    assert!(offline.expect_success().stdout.contains("settings: ok"), "{}", offline.stdout);
    assert!(offline.stdout.contains("--connect"), "{}", offline.stdout);
    // Every problem at once, exit 2, the settings to change.
    let bad = env.write_file("bad.toml", "[target]\nbucket_timezone = \"Mars/Olympus\"\n[ingest]\nmax_batch = 0\n");
    let out = env.cli(&["--config", bad.to_str().unwrap(), "config", "check", "--json"]);
    let envelope = out.expect_code(2).json();
    let details = &envelope["details"];
    assert_eq!(details["valid"], false);
    let problems = details["problems"].to_string();
    assert!(problems.contains("target.bucket_timezone") && problems.contains("ingest.max_batch"), "{problems}");
    assert!(envelope["error"]["hint"].as_str().unwrap().contains("bad.toml"), "{envelope}");
    // A file that is not TOML is a problem to fix too, not a crash.
    let broken = env.write_file("broken.toml", "[redis\n");
    let out = env.cli(&["--config", broken.to_str().unwrap(), "config", "check"]);
    assert!(out.expect_code(2).stdout.contains("broken.toml"), "{}", out.stdout);
    // --connect: this env's servers answer.
    let reached = env.cli(&["config", "check", "--connect", "--json"]);
    let connections = reached.expect_success().details()["connections"].clone();
    assert_eq!(connections.as_array().unwrap().len(), 2, "{connections}");
    assert!(connections.as_array().unwrap().iter().all(|c| c["ok"] == true), "{connections}");
    // --connect with Redis where nothing listens: exit 2 naming it.
    let down = env.cli_with_env(&["config", "check", "--connect", "--json"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    let envelope = down.expect_code(2).json();
    assert!(envelope["error"]["message"].as_str().unwrap().starts_with("Redis is unreachable"), "{envelope}");
    env.cleanup().await;
}

#[tokio::test]
async fn status_watch_redraws_until_interrupted_without_escape_codes_in_a_pipe() {
    let env = TestEnv::new().await;
    let mut command = env.command(&["status", "--watch", "200ms"], &[]);
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(command);
    let stdout = child.child().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut views = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            views += usize::from(line.starts_with("verdict:"));
            lines.push(line);
            if views == 3 {
                break;
            }
        }
        lines
    });
    let lines = tokio::task::spawn_blocking(move || reader.join().unwrap()).await.unwrap();
    let pid = child.child().id() as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::task::spawn_blocking(move || child.child().wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch normally");
    let text = lines.join("\n");
    assert!(!text.contains('\u{1b}'), "no escape codes in a pipe:\n{text}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("tsmigrate status at ")).count(), 3, "three views, each with its time: {text}");
    // One JSON document per command: a watch with --json is refused, as an envelope.
    let refused = env.cli(&["status", "--watch", "--json"]);
    assert!(refused.expect_code(2).json()["error"]["hint"].as_str().unwrap().contains("status --json"), "{}", refused.stdout);
    env.cleanup().await;
}
