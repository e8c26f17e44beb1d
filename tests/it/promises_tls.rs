//! README's PostgreSQL TLS promises that need a server of the test's own: `PGSSLMODE` and
//! `PGSSLROOTCERT` are read when the URL does not set them, and `sslcert` / `sslkey` give a
//! client certificate. The shared server cannot demand client certificates without being
//! reconfigured, so the test runs one private PostgreSQL (`initdb` as the `postgres` OS
//! user, on a free port) that speaks TLS only and authenticates by certificate.

use std::path::{Path, PathBuf};
use std::process::Command;

use tsmigrate::config::SecretUrl;
use tsmigrate::connect::{self, PgLimits};

use crate::servers::TestCa;
use crate::support::TestEnv;

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(output.status.success(), "{command:?} failed:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
}

/// The directory of the newest installed PostgreSQL's programs (Debian's layout).
fn pg_bindir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's programs under /usr/lib/postgresql (the Debian package)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()));
    found.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

/// A client certificate for the role `postgres`, signed by `ca`'s key.
fn client_certificate(ca: &TestCa, dir: &Path) -> (PathBuf, PathBuf) {
    let ca_key = ca.ca_cert.with_file_name("ca.key");
    let (key, csr, cert, ext) = (dir.join("client.key"), dir.join("client.csr"), dir.join("client.pem"), dir.join("client.ext"));
    // Extensions make it an X.509 v3 certificate: rustls refuses v1 ones.
    std::fs::write(&ext, "basicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n").unwrap();
    run(Command::new("openssl").args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=postgres", "-keyout"]).arg(&key).arg("-out").arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-set_serial", "3", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca.ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

/// A private PostgreSQL that accepts TLS connections with a client certificate only.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn start(ca: &TestCa) -> PrivatePostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let bin = pg_bindir();
        run(Command::new("chown").arg("postgres").arg(dir.path()));
        run(as_postgres(&bin.join("initdb")).args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data));
        for (from, name) in [(&ca.server_cert, "server.pem"), (&ca.server_key, "server.key"), (&ca.ca_cert, "ca.pem")] {
            std::fs::copy(from, data.join(name)).unwrap();
            run(Command::new("chown").arg("postgres").arg(data.join(name)));
            run(Command::new("chmod").arg("600").arg(data.join(name)));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).unwrap().port();
        let conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.pem'\n\
             ssl_key_file = 'server.key'\nssl_ca_file = 'ca.pem'\nfsync = off\nmax_connections = 20\nshared_buffers = 16MB\n",
            dir.path().display()
        );
        let mut postgresql_conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut postgresql_conf, conf.as_bytes()).unwrap();
        // TCP: TLS with a certificate the CA signed for the role, nothing else.
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all postgres 127.0.0.1/32 cert\n").unwrap();
        let server = PrivatePostgres { dir, port };
        run(as_postgres(&bin.join("pg_ctl")).args(["-w", "-t", "60", "-l"]).arg(server.dir.path().join("log")).arg("-D").arg(&data).arg("start"));
        server
    }

    fn url(&self, query: &str) -> SecretUrl {
        SecretUrl::new(format!("postgres://postgres@127.0.0.1:{}/postgres{query}", self.port))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&pg_bindir().join("pg_ctl")).args(["-m", "immediate", "-w", "stop", "-D"]).arg(self.dir.path().join("data")).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgsslmode_pgsslrootcert_and_a_client_certificate_from_sslcert_and_sslkey() {
    let ca = TestCa::generate();
    let server = tokio::task::block_in_place(|| PrivatePostgres::start(&ca));
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = client_certificate(&ca, files.path());
    let with_cert = format!("?sslcert={}&sslkey={}", cert.display(), key.display());
    let root = ca.ca_cert.to_str().unwrap();

    // In the URL: verified against the CA, logged in by the client certificate.
    let verified = server.url(&format!("{with_cert}&sslmode=verify-full&sslrootcert={root}"));
    let limits = PgLimits { max_connections: 1, acquire_timeout: std::time::Duration::from_secs(10), statement_timeout: None, prime: &[] };
    let pool = connect::pg_pool(&verified, limits).await.unwrap_or_else(|e| panic!("a client certificate from sslcert/sslkey: {e}"));
    let (ssl, client): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl && client.as_deref() == Some("/CN=postgres"), "encrypted, with the client certificate: {ssl} {client:?}");
    pool.close().await;

    // libpq's variables, read by the command line when the URL does not set them (they are
    // the process's environment, so only child processes get them: other tests run here).
    let env = TestEnv::new().await;
    let url = server.url(&with_cert);
    let status = |vars: &[(&str, &str)], url: &SecretUrl| {
        let mut all = vec![("DATABASE_URL", url.expose())];
        all.extend_from_slice(vars);
        env.cli_with_env(&["status"], &all)
    };
    // PGSSLMODE=disable is read: plaintext, which this server refuses.
    let plain = status(&[("PGSSLMODE", "disable")], &url);
    plain.expect_code(2);
    assert!(plain.stderr.contains("no encryption"), "{}", plain.stderr);
    // PGSSLMODE=verify-full is read: the private CA is not trusted without PGSSLROOTCERT.
    let unverified = status(&[("PGSSLMODE", "verify-full")], &url);
    unverified.expect_code(2);
    assert!(unverified.stderr.contains("TLS to PostgreSQL") && unverified.stderr.contains("sslrootcert="), "{}", unverified.stderr);
    // PGSSLROOTCERT is read: the server is verified and the client certificate logs in.
    let trusted = [("DATABASE_URL", url.expose()), ("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", root)];
    env.cli_with_env(&["prepare", "--mode", "postgres"], &trusted).expect_success();
    let details = env.cli_with_env(&["status", "--json"], &trusted).expect_success().details();
    assert_eq!(details["phase"], "prepared", "{details}");
    // Without sslcert/sslkey there is no certificate to log in with.
    let no_cert = status(&[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", root)], &server.url(""));
    no_cert.expect_code(2);
    assert!(no_cert.stderr.contains("certificate"), "{}", no_cert.stderr);
    // The URL's own sslmode wins over PGSSLMODE.
    status(&[("PGSSLMODE", "disable")], &server.url(&format!("{with_cert}&sslmode=require"))).expect_success();
    // A mode the driver does not know would be ignored by it (prefer: unverified), and a
    // missing CA file would fail as if the server were down: both are refused before connecting.
    let unknown = status(&[("PGSSLMODE", "verify-ful")], &url);
    unknown.expect_code(2);
    assert!(unknown.stderr.contains("PGSSLMODE=\"verify-ful\""), "{}", unknown.stderr);
    let missing = status(&[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", "/nonexistent/ca.pem")], &url);
    missing.expect_code(2);
    assert!(missing.stderr.contains("PGSSLROOTCERT") && missing.stderr.contains("/nonexistent/ca.pem"), "{}", missing.stderr);
    env.cleanup().await;
}
