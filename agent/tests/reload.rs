//! Reload as Prometheus users expect: `POST /-/reload` and SIGHUP apply a new scrape
//! configuration without a restart; an invalid one is refused with file:line:column, the old
//! one keeps running, and `uplink_agent_config_last_reload_successful` says so. The uplink
//! section may live in its own file (`--uplink.config.file`) so prometheus.yml stays unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf))
}

/// Sum of the samples whose line starts with `prefix`; NaN when there is none.
fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    http(addr, "GET", "/metrics")
        .and_then(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v))
        })
        .unwrap_or(f64::NAN)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn prom(dir: &Path, job: &str) {
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n\
             scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:9']\n"
        ),
    )
    .expect("write");
}

#[test]
fn reload_applies_valid_and_refuses_invalid_configs() {
    let dir = std::env::temp_dir().join(format!("uplink-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    prom(&dir, "first");
    std::fs::write(
        dir.join("uplink.yml"),
        "gateways: ['127.0.0.1:9']\nserver_name: localhost\n\
         tls: {cert_file: a.crt, key_file: a.key, ca_file: ca.crt}\nqueue: {directory: q, sync: interval}\n",
    )
    .expect("write");
    // Certificates only need to load: mint them with the shared helpers.
    let ca = uplink_shared::certs::Authority::generate("t", 1).expect("ca");
    ca.write(&dir).expect("ca");
    ca.issue_agent("a", 1)
        .expect("agent")
        .write(&dir, "a")
        .expect("write");

    let web = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let bin = env!("CARGO_BIN_EXE_uplink-agent");
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--uplink.config.file={}",
            dir.join("uplink.yml").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agent = Kill(child);
    wait_for("agent ready", || {
        matches!(http(web, "GET", "/-/ready"), Some((200, _)))
    });
    wait_for("job first scraped", || {
        metric(web, "uplink_agent_scrapes_total{job=\"first\"}") > 0.0
    });
    assert_eq!(
        metric(web, "uplink_agent_config_last_reload_successful"),
        1.0
    );

    // A valid change applies through POST /-/reload.
    prom(&dir, "second");
    let (status, _) = http(web, "POST", "/-/reload").expect("reload answers");
    assert_eq!(status, 200);
    wait_for("job second scraped", || {
        metric(web, "uplink_agent_scrapes_total{job=\"second\"}") > 0.0
    });
    let first_after = metric(web, "uplink_agent_scrapes_total{job=\"first\"}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        metric(web, "uplink_agent_scrapes_total{job=\"first\"}"),
        first_after,
        "old job stopped"
    );

    // An invalid change is refused with its location; the running config stays.
    std::fs::write(
        dir.join("prometheus.yml"),
        "scrape_configs:\n  - job_name: third\n    scrape_interval: often\n",
    )
    .expect("write");
    let (status, body) = http(web, "POST", "/-/reload").expect("reload answers");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("prometheus.yml:3:"), "{body}");
    assert!(body.contains("scrape_configs[0].scrape_interval"), "{body}");
    assert_eq!(
        metric(web, "uplink_agent_config_last_reload_successful"),
        0.0
    );
    let second = metric(web, "uplink_agent_scrapes_total{job=\"second\"}");
    wait_for("job second still scraped", || {
        metric(web, "uplink_agent_scrapes_total{job=\"second\"}") > second
    });

    // SIGHUP reloads too.
    prom(&dir, "fourth");
    let pid = agent.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_for("job fourth scraped after SIGHUP", || {
        metric(web, "uplink_agent_scrapes_total{job=\"fourth\"}") > 0.0
    });
    assert_eq!(
        metric(web, "uplink_agent_config_last_reload_successful"),
        1.0
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn uplink_section_in_both_files_is_refused() {
    let dir = std::env::temp_dir().join(format!("uplink-both-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let example = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/agent.yml"
    ));
    std::fs::write(
        dir.join("u.yml"),
        "gateways: ['g:1']\ntls: {cert_file: a, key_file: b, ca_file: c}\nqueue: {directory: q}\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_uplink-agent"))
        .arg(format!("--config.file={}", example.display()))
        .arg(format!(
            "--uplink.config.file={}",
            dir.join("u.yml").display()
        ))
        .arg("--check-config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both here and in"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_reload_follows_every_configuration_file_and_failures_are_logged() {
    let dir = std::env::temp_dir().join(format!("uplink-auto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("jobs")).expect("dir");
    // The main file includes jobs/*.yml; one job logs its failed scrapes (127.0.0.1:9 refuses).
    let main = |extra: &str| {
        format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\n  \
             scrape_failure_log_file: failures.log\n\
             scrape_config_files: ['jobs/*.yml']\n\
             scrape_configs:\n  - job_name: main\n    static_configs:\n      - targets: ['127.0.0.1:9']\n{extra}"
        )
    };
    std::fs::write(dir.join("prometheus.yml"), main("")).expect("write");
    let job = |name: &str| {
        format!(
            "scrape_configs:\n  - job_name: {name}\n    static_configs:\n      - targets: ['127.0.0.1:9']\n"
        )
    };
    std::fs::write(dir.join("jobs/a.yml"), job("inc_a")).expect("write");
    std::fs::write(
        dir.join("uplink.yml"),
        "gateways: ['127.0.0.1:9']\nserver_name: localhost\n\
         tls: {cert_file: a.crt, key_file: a.key, ca_file: ca.crt}\nqueue: {directory: q, sync: interval}\n\
         self_scrape: {enabled: false}\n",
    )
    .expect("write");
    let ca = uplink_shared::certs::Authority::generate("t", 1).expect("ca");
    ca.write(&dir).expect("ca");
    ca.issue_agent("a", 1)
        .expect("agent")
        .write(&dir, "a")
        .expect("write");
    let web = {
        let l = TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr")
    };
    let child = Command::new(env!("CARGO_BIN_EXE_uplink-agent"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--uplink.config.file={}",
            dir.join("uplink.yml").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .arg("--enable-feature=auto-reload-config")
        .arg("--config.auto-reload-interval=1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let _agent = Kill(child);
    let scraped =
        |job: &str| metric(web, &format!("uplink_agent_scrapes_total{{job=\"{job}\"}}")) > 0.0;
    wait_for("the main and the included job scraped", || {
        scraped("main") && scraped("inc_a")
    });
    // A new included file, then a change to the main file: each applied with no signal.
    std::fs::write(dir.join("jobs/b.yml"), job("inc_b")).expect("write");
    wait_for("the new included job scraped", || scraped("inc_b"));
    std::fs::write(
        dir.join("prometheus.yml"),
        main("  - job_name: main2\n    static_configs:\n      - targets: ['127.0.0.1:9']\n"),
    )
    .expect("write");
    wait_for("the job added to the main file scraped", || {
        scraped("main2")
    });
    assert_eq!(
        metric(web, "uplink_agent_config_last_reload_successful"),
        1.0
    );
    // Every failed scrape has its JSON line, naming its job and target.
    let log = std::fs::read_to_string(dir.join("failures.log")).expect("the failure log");
    let first: serde_json::Value =
        serde_json::from_str(log.lines().next().expect("a line")).expect("JSON");
    assert_eq!(first["level"], "ERROR");
    assert!(
        first["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("http://127.0.0.1:9/"))
    );
    assert!(first["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    for job in ["main", "inc_a", "inc_b", "main2"] {
        assert!(
            log.contains(&format!("\"job_name\":\"{job}\"")),
            "{job}: {log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
