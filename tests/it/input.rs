//! Bad input refused up front with a message that says what to do — and never a secret:
//! URLs without a host, config files that do not parse, settings that would panic or fail
//! later, an empty API token; ingest bodies that are not declared JSON or hold a key twice;
//! connection errors whose advice fits their cause.

use axum::http::StatusCode;
use redis::AsyncCommands;

use crate::dual_write::{post, router};
use crate::support::{field, TestEnv};

/// The run's whole output, for "never shows the secret" assertions.
fn all_output(out: &crate::support::CliOutput) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

#[tokio::test]
async fn a_url_without_a_host_is_refused_and_its_password_shown_nowhere() {
    let env = TestEnv::new().await;
    for (variable, typo) in [
        ("DATABASE_URL", "postgres:/root:Pw7secret@127.0.0.1/analytics"),
        ("LEGACY_DATABASE_URL", "postgres:/root:Pw7secret@127.0.0.1/legacy"),
        ("REDIS_URL", "redis:/:Pw7secret@127.0.0.1:6379"),
    ] {
        for args in [&["status", "--json"][..], &["prepare", "--json"][..]] {
            let out = env.cli_with_env(args, &[(variable, typo)]);
            out.expect_code(2);
            let envelope = out.json();
            let message = envelope["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("({variable}) has no host")), "{variable} {args:?}: {message}");
            assert!(!all_output(&out).contains("Pw7secret"), "{variable} {args:?} leaked the password:\n{}", all_output(&out));
        }
    }
    // Nothing was created in the database the typo would have fallen back to.
    let prepared: bool = sqlx::query_scalar("SELECT to_regclass('tsmigrate.migration_state') IS NOT NULL").fetch_one(&env.pool).await.unwrap();
    assert!(!prepared);
    env.cleanup().await;
}

#[tokio::test]
async fn a_config_file_that_does_not_parse_does_not_quote_its_secrets() {
    let env = TestEnv::new().await;
    let file =
        env.write_file("broken.toml", "[database]\nurl = \"postgres://app:Pw8secret@db.example/x\nmax_connections = 2\n[http]\napi_token = \"Tk8secret\"\n");
    let out = env.cli(&["status", "--json", "--config", file.to_str().unwrap()]);
    out.expect_code(2);
    let message = out.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("broken.toml") && message.contains("line 2"), "{message}");
    let output = all_output(&out);
    assert!(!output.contains("Pw8secret") && !output.contains("Tk8secret"), "{output}");
    env.cleanup().await;
}

#[tokio::test]
async fn settings_that_would_panic_or_fail_later_are_refused_by_every_command() {
    let env = TestEnv::new().await;
    let cases = [
        ("[database]\nmax_connections = 0\n", "database.max_connections must be at least 1"),
        ("[jobs.schedules]\nvalidation = \"0 61 * * * *\"\n", "jobs.schedules.validation \"0 61 * * * *\" is not a cron expression"),
        ("[ingest]\nmax_body_bytes = 0\n", "ingest.max_body_bytes must be at least 1"),
    ];
    for (text, expected) in cases {
        let file = env.write_file("settings.toml", text);
        for args in [&["status", "--json"][..], &["prepare", "--json"][..]] {
            let out = env.cli(&[args, &["--config", file.to_str().unwrap()]].concat());
            out.expect_code(2);
            let message = out.json()["error"]["message"].as_str().unwrap().to_string();
            assert!(message.contains(expected), "{args:?} with {text:?}: {message}");
        }
        // The service refuses before it listens, not after.
        let out = env.cli(&["run", "--bind", "127.0.0.1:0", "--config", file.to_str().unwrap()]);
        out.expect_code(2);
        assert!(out.stderr.contains(expected) && !out.stderr.contains("listening on"), "{}", out.stderr);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_empty_api_token_is_refused_not_taken_as_no_authentication() {
    let env = TestEnv::new().await;
    let out = env.cli_with_env(&["run", "--bind", "127.0.0.1:0"], &[("TSMIGRATE_API_TOKEN", "")]);
    out.expect_code(2);
    assert!(out.stderr.contains("TSMIGRATE_API_TOKEN is set but empty") && out.stderr.contains("unset it"), "{}", out.stderr);
    assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
    let out = env.cli_with_env(&["status", "--json"], &[("TSMIGRATE_API_TOKEN", " ")]);
    out.expect_code(2);
    assert!(out.json()["error"]["message"].as_str().unwrap().contains("TSMIGRATE_API_TOKEN"));
    env.cleanup().await;
}

#[tokio::test]
async fn ingest_reads_only_declared_json_and_refuses_a_key_given_twice() {
    let env = TestEnv::new().await;
    let router = router(&env).await;
    let now = chrono::Utc::now().timestamp_millis();
    let event = |extra: &str| format!(r#"{{"event_name":"click","category":"ui","user_id":"u1","session_id":"s1","timestamp":{now}{extra}}}"#);
    let body = format!(r#"{{"events":[{}]}}"#, event(""));

    // What a cross-site form post can send, and no declaration at all.
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None] {
        let (status, reply) = post_as(&router, &body, content_type).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains("application/json"), "{reply}");
    }
    // A key twice, at the top of an event or inside its properties: 400 naming the key and the event.
    let twice = format!(r#"{{"events":[{},{}]}}"#, event(""), event(r#","user_id":"u2""#));
    let (status, reply) = post(&router, &twice, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert_eq!(field(&reply, "rejected").as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["rejected"][0]["index"], 1, "{reply}");
    assert!(reply["rejected"][0]["problems"][0].as_str().unwrap().contains("\"user_id\" appears more than once"), "{reply}");
    let nested = format!(r#"{{"events":[{}]}}"#, event(r#","properties":{"path":"/a","path":"/b"}"#));
    let (status, reply) = post(&router, &nested, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    assert!(reply["rejected"][0]["problems"][0].as_str().unwrap().contains("\"path\""), "{reply}");
    let stored: u64 = env.redis().await.zcard(&env.keys().events).await.unwrap();
    assert_eq!(stored, 0, "nothing refused was written");

    // Declared JSON with parameters is JSON.
    let (status, reply) = post_as(&router, &body, Some("Application/JSON; charset=utf-8")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    env.cleanup().await;
}

async fn post_as(router: &axum::Router, body: &str, content_type: Option<&str>) -> (StatusCode, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut request = axum::http::Request::post("/api/v1/analytics");
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = router.clone().oneshot(request.body(axum::body::Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

#[tokio::test]
async fn connection_errors_advise_by_cause() {
    let env = TestEnv::new().await;
    let url = |user: &str, port: u16, db: &str| format!("postgres://{user}@127.0.0.1:{port}/{db}");
    let role = format!("no_role_{}", env.db_name);
    let missing = format!("{}_missing", env.db_name);
    let cases = [
        (url(&role, 5432, &env.db_name), vec![format!("there is no role \"{role}\""), "createuser".into()]),
        (
            url("postgres", 5432, &missing),
            vec![format!("database \"{missing}\" does not exist"), format!("createdb -h 127.0.0.1 -p 5432 -U postgres {missing}")],
        ),
        (url("postgres", 1, &env.db_name), vec!["nothing accepts connections at 127.0.0.1:1".into(), "scripts/services.sh".into()]),
    ];
    for (database_url, expected) in cases {
        let out = env.cli_with_env(&["backfill", "--json"], &[("DATABASE_URL", &database_url)]);
        out.expect_code(2);
        let error = out.json()["error"].clone();
        let text = format!("{} / {}", error["message"].as_str().unwrap_or_default(), error["hint"].as_str().unwrap_or_default());
        for words in &expected {
            assert!(text.contains(words.as_str()), "{database_url}: {words:?} missing from {text}");
        }
        if !expected[1].contains("services.sh") {
            assert!(!text.contains("services.sh"), "starting a server fixes no role or database: {text}");
        }
    }

    // Redis down: advice about Redis, not a phase step.
    let out = env.cli_with_env(&["status", "--json"], &[("REDIS_URL", "redis://127.0.0.1:1")]);
    out.expect_code(2);
    let envelope = out.json();
    let hint = envelope["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("start Redis there") && hint.contains("127.0.0.1:1"), "{envelope}");
    let first = &envelope["next_steps"][0];
    assert!(first["command"].is_null() && first["why"].as_str().unwrap().contains("Redis"), "{envelope}");
    // A password the server does not have is a credentials problem, not a server to start.
    let out = env.cli_with_env(&["status", "--json"], &[("REDIS_URL", "redis://:not-the-password@127.0.0.1:6379")]);
    out.expect_code(2);
    let envelope = out.json();
    let hint = envelope["error"]["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("refused the credentials") && !hint.contains("services.sh"), "{envelope}");
    assert!(!all_output(&out).contains("not-the-password"), "{}", all_output(&out));

    // A mistyped DATABASE_URL is reported once, not again as a legacy-table problem.
    let out = env.cli_with_env(&["status", "--json"], &[("DATABASE_URL", &url("postgres", 5432, &missing))]);
    out.expect_code(2);
    let legacy = out.json()["details"]["legacy"]["error"].as_str().unwrap().to_string();
    assert!(legacy.contains("LEGACY_DATABASE_URL is not set") && !legacy.contains("legacy setup") && !legacy.contains("does not exist"), "{legacy}");
    env.cleanup().await;
}
