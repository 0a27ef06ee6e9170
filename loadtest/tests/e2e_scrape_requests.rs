//! The scrape request itself, as the real Prometheus 3 agent sends it: `http_headers` (values,
//! secrets and files) and every proxy setting (`proxy_url` alone, with `no_proxy`,
//! `proxy_from_environment` with `HTTP_PROXY`/`NO_PROXY`, and `proxy_connect_header` on the
//! CONNECT of an `https://` target).
//!
//! Each side (a Prometheus 3 agent, `uplink-agent`) gets its own recording target and its
//! own recording proxy, and the same configuration but for those two addresses. The oracle:
//! after replacing each side's addresses with placeholders, both sides' recorders saw the
//! same requests (request line, then every header with its values in order), `User-Agent`
//! aside. The expected set is also checked by name, so the test cannot pass by seeing
//! nothing: what `no_proxy`, `NO_PROXY` and the loopback rule send directly reaches the
//! target (or nothing, for names that do not resolve), the rest reaches the proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uplink_loadtest::harness::{self, Bins, Peer, Proc};

/// A request as a recorder saw it: the request line, and each header (name lower-cased)
/// with its values in the order sent.
type Seen = (String, BTreeMap<String, Vec<String>>);

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

const BODY: &str = "# TYPE probe gauge\nprobe 1\n";

/// Records every request's head; answers CONNECT with 403 (the tunnel is not needed: its
/// request is what is compared) and anything else with a small exposition.
async fn recorder(log: Log) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut lines = text.split("\r\n");
                let line = lines.next().unwrap_or_default().to_owned();
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for l in lines.take_while(|l| !l.is_empty()) {
                    if let Some((k, v)) = l.split_once(':') {
                        headers
                            .entry(k.trim().to_ascii_lowercase())
                            .or_default()
                            .push(v.trim().to_owned());
                    }
                }
                let connect = line.starts_with("CONNECT ");
                log.0.lock().unwrap().push((line, headers));
                let resp = if connect {
                    "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                        BODY.len()
                    )
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// The shared configuration, for one side's target and proxy.
fn config(target: SocketAddr, proxy: SocketAddr) -> String {
    format!(
        r#"global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: headers
    metrics_path: /headers
    http_headers:
      X-Tenant: {{values: [a, b], secrets: [s3cret], files: [tenant.txt]}}
      X-Scope-OrgID: {{values: [edge]}}
    static_configs: [{{targets: ['{target}']}}]
  - job_name: proxied
    metrics_path: /proxied
    proxy_url: http://{proxy}
    static_configs: [{{targets: ['{target}']}}]
  - job_name: no-proxy
    metrics_path: /no-proxy
    proxy_url: http://{proxy}
    no_proxy: direct.test, 10.0.0.0/8
    static_configs: [{{targets: ['via-proxy.test:9100', 'direct.test:9100', '{target}']}}]
  - job_name: from-env
    metrics_path: /from-env
    proxy_from_environment: true
    http_headers:
      X-Via: {{values: [env]}}
    static_configs: [{{targets: ['env.test:9100', 'skip.test:9100']}}]
  - job_name: connect
    scheme: https
    metrics_path: /connect
    proxy_url: http://{proxy}
    proxy_connect_header:
      Proxy-Token: [t0k, t1k]
    static_configs: [{{targets: ['tls.test:9443']}}]
"#
    )
}

/// One side's recorders, with its addresses replaced by placeholders: request line to the
/// headers of the first such request, `User-Agent` dropped.
fn normalized(
    target: (&Log, SocketAddr),
    proxy: (&Log, SocketAddr),
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    let fix = |s: &str| {
        s.replace(&target.1.to_string(), "TARGET")
            .replace(&proxy.1.to_string(), "PROXY")
    };
    for (who, log) in [("target", target.0), ("proxy", proxy.0)] {
        for (line, headers) in log.0.lock().unwrap().iter() {
            let headers = headers
                .iter()
                .filter(|(k, _)| *k != "user-agent")
                .map(|(k, v)| (k.clone(), v.iter().map(|v| fix(v)).collect()))
                .collect();
            out.entry(format!("{who}: {}", fix(line)))
                .or_insert(headers);
        }
    }
    out
}

/// What each side must have sent, by request line.
const EXPECTED: [&str; 6] = [
    "target: GET /headers HTTP/1.1",
    // A loopback target goes direct under httpproxy's rules (no_proxy set)...
    "target: GET /no-proxy HTTP/1.1",
    // ...but through the proxy with proxy_url alone.
    "proxy: GET http://TARGET/proxied HTTP/1.1",
    "proxy: GET http://via-proxy.test:9100/no-proxy HTTP/1.1",
    "proxy: GET http://env.test:9100/from-env HTTP/1.1",
    "proxy: CONNECT tls.test:9443 HTTP/1.1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_requests_match_prometheus_3() {
    let _serial = harness::serial().await;
    assert!(
        Peer::Prometheus.installed(),
        "{} is required (deploy/dev/setup.sh installs it)",
        Peer::Prometheus.label()
    );
    let bins = Bins::locate().expect("binaries built by cargo test --workspace");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    harness::write_certs(d, &["requests".to_owned()]).unwrap();
    std::fs::write(d.join("tenant.txt"), "from-file\n").unwrap();

    let logs: [(Log, Log); 2] = Default::default();
    let mut addrs = Vec::new();
    for (target, proxy) in &logs {
        addrs.push((
            recorder(target.clone()).await,
            recorder(proxy.clone()).await,
        ));
    }
    let env = |cmd: &mut Command, proxy: SocketAddr| {
        cmd.env("HTTP_PROXY", format!("http://{proxy}"))
            .env("NO_PROXY", "skip.test")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("no_proxy");
    };

    // The Prometheus 3 agent.
    let (pt, pp) = addrs[0];
    let pcfg = d.join("prometheus.yml");
    std::fs::write(&pcfg, config(pt, pp)).unwrap();
    let pweb = harness::free_addr().unwrap();
    let mut cmd = Peer::Prometheus.command();
    cmd.arg(Peer::Prometheus.agent_flag())
        .arg(format!("--config.file={}", pcfg.display()))
        .arg(format!("--storage.agent.path={}", d.join("wal").display()))
        .arg(format!("--web.listen-address={pweb}"));
    env(&mut cmd, pp);
    let _prometheus = Proc::spawn("prometheus-agent", &mut cmd, &d.join("prometheus.log")).unwrap();

    // uplink-agent on the same file but for its addresses (no gateway: it only scrapes).
    let (ut, up) = addrs[1];
    let ucfg = d.join("uplink-prometheus.yml");
    std::fs::write(&ucfg, config(ut, up)).unwrap();
    let uplink_file = d.join("uplink.yml");
    let gateway = harness::free_addr().unwrap();
    std::fs::write(
        &uplink_file,
        format!(
            "gateways: ['{gateway}']\nserver_name: localhost\n\
             tls: {{cert_file: requests.crt, key_file: requests.key, ca_file: ca.crt}}\n\
             queue: {{directory: queue}}\nself_scrape: {{enabled: false}}\n"
        ),
    )
    .unwrap();
    let uweb = harness::free_addr().unwrap();
    let mut cmd = Command::new(&bins.agent);
    cmd.arg(format!("--config.file={}", ucfg.display()))
        .arg(format!("--uplink.config.file={}", uplink_file.display()))
        .arg(format!("--web.listen-address={uweb}"));
    env(&mut cmd, up);
    let _uplink = Proc::spawn("uplink-agent", &mut cmd, &d.join("uplink-agent.log")).unwrap();

    let sides = || [0, 1].map(|i| normalized((&logs[i].0, addrs[i].0), (&logs[i].1, addrs[i].1)));
    let complete = |m: &BTreeMap<String, BTreeMap<String, Vec<String>>>| {
        EXPECTED.iter().all(|e| m.contains_key(*e))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !sides().iter().all(complete) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more scrapes, so that anything sent that should not be shows up too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let [prometheus, uplink] = sides();
    let logs_of = || {
        ["prometheus.log", "uplink-agent.log"]
            .map(|f| std::fs::read_to_string(d.join(f)).unwrap_or_default())
            .join("\n---\n")
    };
    for (name, side) in [("prometheus", &prometheus), ("uplink", &uplink)] {
        for e in EXPECTED {
            assert!(
                side.contains_key(e),
                "{name} never sent {e:?}; it sent {:#?}\n{}",
                side.keys(),
                logs_of()
            );
        }
        assert!(
            side.keys()
                .all(|k| !k.contains("direct.test") && !k.contains("skip.test")),
            "{name} proxied what no_proxy exempts: {:#?}",
            side.keys()
        );
    }
    assert_eq!(
        uplink, prometheus,
        "the requests differ (left: uplink, right: Prometheus 3)"
    );

    // And the values themselves, so that equal-but-empty cannot pass.
    let headers = &uplink["target: GET /headers HTTP/1.1"];
    assert_eq!(headers["x-tenant"], ["a", "b", "s3cret", "from-file"]);
    assert_eq!(headers["x-scope-orgid"], ["edge"]);
    let connect = &uplink["proxy: CONNECT tls.test:9443 HTTP/1.1"];
    assert_eq!(connect["proxy-token"], ["t0k", "t1k"]);
    assert_eq!(
        uplink["proxy: GET http://env.test:9100/from-env HTTP/1.1"]["x-via"],
        ["env"]
    );
    assert!(
        !uplink["proxy: GET http://TARGET/proxied HTTP/1.1"].contains_key("proxy-token"),
        "CONNECT headers are for CONNECT only"
    );
}
