//! The binary itself: `plan` prints the seed's totals; configuration errors exit 2 naming the key.

use std::process::Command;

fn provisioner(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(args)
        .current_dir(dir)
        .env_remove("SMARTVPS_BASE_URL")
        .env_remove("SMARTVPS_USERNAME")
        .env_remove("SMARTVPS_PASSWORD")
        .env_remove("PROVISIONER_SECRET_KEY")
        .output()
        .expect("the provisioner binary runs")
}

#[test]
fn plan_prints_the_four_seed_totals() {
    let dir = tempfile::tempdir().unwrap();
    let out = provisioner(&["plan"], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "Best case         40s",
        "Moderate case     7 min 10 s",
        "Worst case        15 min 40 s",
        "Complete failure  11 min 0 s",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[test]
fn bad_configs_stop_start_up_with_exit_2_naming_the_key() {
    let cases = [
        (
            "[policy.buy]\nattempts = 3\ndelays = [\"2m\"]\n",
            "policy.buy.delays",
        ),
        (
            "[policy.status]\nattempts = 0\ndelays = []\n",
            "policy.status.attempts",
        ),
        ("[policy.buy]\ntimeout = \"soon\"\n", "policy.buy.timeout"),
        ("[policy.buy]\natempts = 3\n", "policy.buy.atempts"),
        (
            "[smartvps]\nbase_url = \"https://smartvps.online/\"\nusername = \"r\"\n",
            "smartvps.password",
        ),
        // What used to start a service that answered 500 to everything, or exit 1 unnamed.
        ("[database]\nurl = \"sqlite://\"\n", "database.url"),
        ("[database]\nurl = \"sqlite::memory:\"\n", "database.url"),
        (
            "[database]\nurl = \"sqlite:///no-such-directory-7c1f/p.db\"\n",
            "database.url",
        ),
        (
            "[database]\nurl = \"postgres://postgres@127.0.0.1:1/provisioner\"\n",
            "database.url",
        ),
        (
            "[smartvps]\nbase_url = \"https://reseller:hunter2@smartvps.online/\"\nusername = \"r\"\npassword = \"p\"\n",
            "smartvps.base_url",
        ),
        (
            "[[admin.tokens]]\nname = \"alice\"\ntoken = \"aaaaaaaaaaaaaaaa\"\n",
            "admin.tokens[0].token",
        ),
        (
            "[[storefronts]]\nname = \"shop\"\nsecret_env = \"PROVISIONER_TEST_UNSET_SECRET_9\"\n",
            "storefronts[0].secret_env",
        ),
    ];
    for (toml, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = provisioner(&["--config", path.to_str().unwrap(), "serve"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(key), "expected {key} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "one clear message: {err:?}");
        assert!(
            !err.contains("hunter2"),
            "no secret in the message: {err:?}"
        );
    }
}

#[test]
fn a_taken_port_and_an_unopenable_database_are_refused_with_exit_2_naming_the_key() {
    // Another program holds the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a-directory.db")).unwrap();
    for (toml, key) in [
        (
            format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            "server.listen",
        ),
        (
            "[database]\nurl = \"sqlite://a-directory.db\"\n".to_string(),
            "database.url",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &toml).unwrap();
        let out = provisioner(&["--config", path.to_str().unwrap(), "serve"], dir.path());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        assert!(err.contains(key), "expected {key} in {err:?}");
    }
    drop(taken);
}

#[test]
fn a_real_smartvps_without_a_secret_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.toml");
    std::fs::write(
        &path,
        "[smartvps]\nbase_url = \"https://smartvps.online/\"\nusername = \"r\"\npassword = \"p\"\n",
    )
    .unwrap();
    let out = provisioner(&["--config", path.to_str().unwrap(), "serve"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("PROVISIONER_SECRET_KEY")
    );
}

#[test]
fn orders_list_without_a_config_refuses_rather_than_creating_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["orders", "list"])
        .current_dir(dir.path())
        .env_remove("PROVISIONER_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--config") && err.contains("PROVISIONER_DATABASE_URL"),
        "{err}"
    );
    assert!(
        !dir.path().join("provisioner.db").exists(),
        "no database was created"
    );
}

#[test]
fn json_reads_parse_and_bad_demo_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("j.db").display());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .args(args)
            .current_dir(dir.path())
            .env("PROVISIONER_DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    for args in [
        &["orders", "list", "--json"][..],
        &["orders", "search", "nobody", "--json"],
        &["catalog", "list", "--json"],
        &["plan", "--json"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert!(v.is_object(), "{args:?}");
    }
    let out = run(&["orders", "show", "nope-1", "--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no order"));
    // clap's usage errors exit 2; the demo's own refusal exits 1.
    for (args, says, code) in [
        (&["demo", "--speed", "0"][..], "--speed", 2),
        (&["demo", "--speed", "fast"], "--speed", 2),
        (&["--config", "x.toml", "demo"], "--config", 1),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn demo_into_a_closed_pipe_does_not_panic() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .args(["demo", "--speed", "600"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `demo | head -1`: read one line, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("provisioner demo: service at http://"),
        "{first}"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
