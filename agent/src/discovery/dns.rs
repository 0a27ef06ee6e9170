//! `dns_sd_configs`: targets from DNS A, AAAA, SRV, MX or NS records.
//!
//! `run(cfg, resolver, out, failures, shutdown)` queries every name at once (concurrently),
//! then every `refresh_interval`, and publishes one group per name, in `names` order, with
//! source = the name as configured. As in Prometheus's `dns.go`:
//!
//! - Every target carries `__address__`, `__meta_dns_name` (the name as configured) and the
//!   four record labels `__meta_dns_srv_record_target`, `__meta_dns_srv_record_port`,
//!   `__meta_dns_mx_record_target`, `__meta_dns_ns_record_target`, empty unless the record is
//!   of that type. Record targets are kept as received (fully qualified, trailing dot).
//! - `__address__` is `target:port` for SRV, `host:port` for MX and NS (the record's host with
//!   its trailing dot removed, `port` from the config), `ip:port` for A and `[ip]:port` for
//!   AAAA. CNAME records in an answer are skipped.
//! - A name that does not exist (NXDOMAIN) or has no record of the type yields a group with no
//!   targets; any other failure (timeout, SERVFAIL, unreadable `/etc/resolv.conf`) keeps that
//!   name's last good group, is logged and counted in `failures` (once per name and refresh).
//! - [`DnsResolver::system`] reads `/etc/resolv.conf` (nameservers, search domains, `ndots`,
//!   timeout, attempts) again at every refresh, as Prometheus does, so a modem whose DNS
//!   servers change with its WAN link follows them. Non-qualified names go through the search
//!   list; `/etc/hosts` is not consulted and nothing is cached between refreshes. Queries use
//!   UDP with EDNS0, and TCP when an answer is truncated.
//!
//! Not in Prometheus: `type` is case-sensitive (`SRV`, not `srv`), as the config struct
//! deserializes it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{self, RData};
use hickory_resolver::proto::{ProtoError, ProtoErrorKind};
use hickory_resolver::{Name, ResolveError, Resolver, TokioResolver};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uplink_shared::duration::PromDuration;

use super::{ADDRESS_LABEL, LabelSet, Publisher, TargetGroup, publish};

pub const NAME_LABEL: &str = "__meta_dns_name";
pub const SRV_TARGET_LABEL: &str = "__meta_dns_srv_record_target";
pub const SRV_PORT_LABEL: &str = "__meta_dns_srv_record_port";
pub const MX_TARGET_LABEL: &str = "__meta_dns_mx_record_target";
pub const NS_TARGET_LABEL: &str = "__meta_dns_ns_record_target";

/// Record type to query (its name in any case, as Prometheus reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordType {
    #[default]
    SRV,
    A,
    AAAA,
    MX,
    NS,
}

impl<'de> Deserialize<'de> for RecordType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.to_ascii_uppercase().as_str() {
            "SRV" => RecordType::SRV,
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "MX" => RecordType::MX,
            "NS" => RecordType::NS,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "invalid DNS-SD records type {s}"
                )));
            }
        })
    }
}

impl RecordType {
    /// The type's name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::SRV => "SRV",
            RecordType::A => "A",
            RecordType::AAAA => "AAAA",
            RecordType::MX => "MX",
            RecordType::NS => "NS",
        }
    }

    fn query_type(self) -> rr::RecordType {
        match self {
            RecordType::SRV => rr::RecordType::SRV,
            RecordType::A => rr::RecordType::A,
            RecordType::AAAA => rr::RecordType::AAAA,
            RecordType::MX => rr::RecordType::MX,
            RecordType::NS => rr::RecordType::NS,
        }
    }
}

/// One `dns_sd_configs` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsSdConfig {
    pub names: Vec<String>,
    /// Prometheus default: 30s.
    #[serde(default = "default_refresh")]
    pub refresh_interval: PromDuration,
    #[serde(default, rename = "type")]
    pub record_type: RecordType,
    /// Required for every type but SRV.
    #[serde(default)]
    pub port: Option<u16>,
}

fn default_refresh() -> PromDuration {
    PromDuration(std::time::Duration::from_secs(30))
}

/// Why a name yielded no group.
#[derive(Debug, thiserror::Error)]
pub enum DnsSdError {
    #[error("reading the system DNS configuration: {0}")]
    SystemConfig(ResolveError),
    #[error("{name:?} is not a valid DNS name: {message}")]
    Name { name: String, message: String },
    #[error("could not resolve {name:?}: {source}")]
    Lookup { name: String, source: ResolveError },
    #[error("looking up {name:?} did not complete")]
    Incomplete { name: String },
}

impl DnsSdConfig {
    /// Checks what Prometheus checks at load time (at least one name, a non-zero port for
    /// every type but SRV), plus: names non-empty and syntactically valid, and a positive
    /// `refresh_interval`.
    pub fn validate(&self) -> Result<(), String> {
        if self.names.is_empty() {
            return Err("DNS-SD config must contain at least one SRV record name".into());
        }
        for name in &self.names {
            if name.is_empty() {
                return Err("DNS-SD names must not be empty".into());
            }
            query_name(name).map_err(|e| e.to_string())?;
        }
        if self.record_type != RecordType::SRV && self.port.unwrap_or(0) == 0 {
            return Err(
                "a port is required in DNS-SD configs for all record types except SRV".into(),
            );
        }
        if self.refresh_interval.0.is_zero() {
            return Err(super::ZERO_REFRESH.into());
        }
        Ok(())
    }
}

/// Where queries go.
#[derive(Clone, Debug, Default)]
pub struct DnsResolver {
    /// `None`: the system's configuration.
    nameserver: Option<SocketAddr>,
}

impl DnsResolver {
    /// The system's configuration (`/etc/resolv.conf`), read again at every refresh.
    pub fn system() -> DnsResolver {
        DnsResolver { nameserver: None }
    }

    /// Every query to `addr` (UDP, then TCP for truncated answers), without search domains.
    pub fn with_nameserver(addr: SocketAddr) -> DnsResolver {
        DnsResolver {
            nameserver: Some(addr),
        }
    }

    /// A resolver for one refresh.
    fn build(&self) -> Result<TokioResolver, DnsSdError> {
        let mut builder = match self.nameserver {
            None => Resolver::builder_tokio().map_err(DnsSdError::SystemConfig)?,
            Some(addr) => {
                let servers =
                    NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), servers),
                    TokioConnectionProvider::default(),
                )
            }
        };
        let opts = builder.options_mut();
        opts.use_hosts_file = ResolveHosts::Never;
        opts.edns0 = true;
        Ok(builder.build())
    }
}

fn query_name(name: &str) -> Result<Name, DnsSdError> {
    Name::from_str_relaxed(name).map_err(|e| DnsSdError::Name {
        name: name.into(),
        message: e.to_string(),
    })
}

/// Runs until `shutdown` is cancelled; see the module docs.
pub async fn run(
    cfg: DnsSdConfig,
    resolver: DnsResolver,
    out: Publisher,
    failures: Counter,
    shutdown: CancellationToken,
) {
    let mut names: Vec<String> = Vec::with_capacity(cfg.names.len());
    for n in &cfg.names {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let every = cfg.refresh_interval.0.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut good: HashMap<String, TargetGroup> = HashMap::new();
    let mut first = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let results = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = refresh(&names, &cfg, &resolver) => r,
        };
        let results = match results {
            Ok(r) => r,
            Err(error) => {
                failures.inc();
                warn!(%error, "DNS service discovery failed; keeping the last good targets.");
                Vec::new()
            }
        };
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(group) => {
                    good.insert(name.clone(), group);
                }
                Err(error) => {
                    failures.inc();
                    warn!(%error, "DNS service discovery failed; keeping the name's last good targets.");
                }
            }
        }
        let groups = names.iter().filter_map(|n| good.get(n)).cloned().collect();
        publish(&out, groups, first);
        first = false;
    }
}

/// Looks every name up concurrently; one result per name, in order.
async fn refresh(
    names: &[String],
    cfg: &DnsSdConfig,
    resolver: &DnsResolver,
) -> Result<Vec<Result<TargetGroup, DnsSdError>>, DnsSdError> {
    let resolver = resolver.build()?;
    let port = cfg.port.unwrap_or(0);
    let mut set = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (r, name) = (resolver.clone(), name.clone());
        let kind = cfg.record_type;
        set.spawn(async move { (i, lookup(&r, name, kind, port).await) });
    }
    let mut results: Vec<Option<Result<TargetGroup, DnsSdError>>> =
        names.iter().map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(error) => warn!(%error, "A DNS lookup task failed."),
        }
    }
    Ok(names
        .iter()
        .zip(results)
        .map(|(name, r)| r.unwrap_or_else(|| Err(DnsSdError::Incomplete { name: name.clone() })))
        .collect())
}

/// The group of one name.
async fn lookup(
    resolver: &TokioResolver,
    name: String,
    kind: RecordType,
    port: u16,
) -> Result<TargetGroup, DnsSdError> {
    let query = query_name(&name)?;
    let records = match resolver.lookup(query, kind.query_type()).await {
        Ok(found) => found.records().to_vec(),
        Err(e) if is_absent(&e) => {
            debug!(
                name,
                "DNS name has no records of the type; its group is empty."
            );
            Vec::new()
        }
        Err(source) => return Err(DnsSdError::Lookup { name, source }),
    };
    let targets = records
        .iter()
        .filter_map(|r| target(&name, r.data(), port))
        .collect();
    Ok(TargetGroup {
        source: name,
        targets,
        labels: LabelSet::new(),
    })
}

/// Whether `e` says the name does not exist (NXDOMAIN) or has no record of the type (an empty
/// answer), rather than that the lookup failed (SERVFAIL, REFUSED, timeout...).
fn is_absent(e: &ResolveError) -> bool {
    matches!(
        e.proto().map(ProtoError::kind),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        })
    )
}

/// The target one answer record stands for, with Prometheus's labels; `None` for CNAMEs and
/// unexpected types.
fn target(name: &str, data: &RData, port: u16) -> Option<LabelSet> {
    let (mut srv_target, mut srv_port, mut mx_target, mut ns_target) =
        (String::new(), String::new(), String::new(), String::new());
    let address = match data {
        RData::SRV(srv) => {
            srv_target = srv.target().to_ascii();
            srv_port = srv.port().to_string();
            join_host_port(srv_target.trim_end_matches('.'), srv.port())
        }
        RData::MX(mx) => {
            mx_target = mx.exchange().to_ascii();
            join_host_port(mx_target.trim_end_matches('.'), port)
        }
        RData::NS(ns) => {
            ns_target = ns.0.to_ascii();
            join_host_port(ns_target.trim_end_matches('.'), port)
        }
        RData::A(a) => join_host_port(&a.0.to_string(), port),
        RData::AAAA(a) => join_host_port(&a.0.to_string(), port),
        RData::CNAME(_) => return None,
        other => {
            warn!(name, record = %other.record_type(), "Ignoring an unexpected DNS record.");
            return None;
        }
    };
    Some(LabelSet::from([
        (ADDRESS_LABEL.to_owned(), address),
        (NAME_LABEL.to_owned(), name.to_owned()),
        (SRV_TARGET_LABEL.to_owned(), srv_target),
        (SRV_PORT_LABEL.to_owned(), srv_port),
        (MX_TARGET_LABEL.to_owned(), mx_target),
        (NS_TARGET_LABEL.to_owned(), ns_target),
    ]))
}

/// Go's `net.JoinHostPort`: brackets around hosts containing `:`.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::{Arc, Mutex};

    use hickory_resolver::proto::op::{Message, MessageType};
    use hickory_resolver::proto::rr::Record;
    use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SRV};
    use tokio::sync::watch;

    use super::*;

    /// Answers by (lower-case FQDN, type); a name absent from every key is NXDOMAIN, a name in
    /// `failing` is SERVFAIL.
    #[derive(Default)]
    struct Zone {
        records: HashMap<(String, rr::RecordType), Vec<RData>>,
        failing: Vec<String>,
    }

    type SharedZone = Arc<Mutex<Zone>>;

    fn name(s: &str) -> Name {
        Name::from_str_relaxed(s).expect("name")
    }

    /// A UDP DNS server on 127.0.0.1 answering from `zone`; stops with the test's runtime.
    async fn dns_server(zone: SharedZone) -> SocketAddr {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&zone, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        addr
    }

    fn answer(zone: &SharedZone, query: &Message) -> Message {
        let mut reply = Message::new();
        reply
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true);
        let Some(q) = query.queries().first() else {
            reply.set_response_code(ResponseCode::FormErr);
            return reply;
        };
        reply.add_query(q.clone());
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let zone = zone.lock().expect("lock");
        if zone.failing.contains(&qname) {
            reply.set_response_code(ResponseCode::ServFail);
            return reply;
        }
        if !zone.records.keys().any(|(n, _)| *n == qname) {
            reply.set_response_code(ResponseCode::NXDomain);
            return reply;
        }
        for data in zone
            .records
            .get(&(qname, q.query_type()))
            .into_iter()
            .flatten()
        {
            reply.add_answer(Record::from_rdata(q.name().clone(), 0, data.clone()));
        }
        reply
    }

    fn zone() -> SharedZone {
        let mut z = Zone::default();
        let mut add = |n: &str, t: rr::RecordType, data: Vec<RData>| {
            z.records.insert((n.to_owned(), t), data);
        };
        add(
            "_node._tcp.example.test.",
            rr::RecordType::SRV,
            vec![
                RData::SRV(SRV::new(0, 10, 9100, name("node1.example.test."))),
                RData::SRV(SRV::new(0, 10, 9101, name("node2.example.test."))),
            ],
        );
        add(
            "hosts.example.test.",
            rr::RecordType::A,
            vec![
                RData::A(A(Ipv4Addr::new(10, 0, 0, 1))),
                RData::A(A(Ipv4Addr::new(10, 0, 0, 2))),
            ],
        );
        add(
            "hosts.example.test.",
            rr::RecordType::AAAA,
            vec![
                RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                RData::AAAA(AAAA("2001:db8::5".parse().expect("ip"))),
            ],
        );
        add(
            "alias.example.test.",
            rr::RecordType::A,
            vec![
                RData::CNAME(CNAME(name("hosts.example.test."))),
                RData::A(A(Ipv4Addr::new(10, 0, 0, 9))),
            ],
        );
        add(
            "example.test.",
            rr::RecordType::MX,
            vec![RData::MX(MX::new(10, name("mx1.example.test.")))],
        );
        add(
            "example.test.",
            rr::RecordType::NS,
            vec![RData::NS(NS(name("ns1.example.test.")))],
        );
        Arc::new(Mutex::new(z))
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        let mut l: LabelSet = [
            SRV_TARGET_LABEL,
            SRV_PORT_LABEL,
            MX_TARGET_LABEL,
            NS_TARGET_LABEL,
        ]
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
        l.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    }

    async fn group(addr: SocketAddr, n: &str, kind: RecordType, port: u16) -> TargetGroup {
        let r = DnsResolver::with_nameserver(addr)
            .build()
            .expect("resolver");
        lookup(&r, n.into(), kind, port).await.expect("lookup")
    }

    #[tokio::test]
    async fn srv_a_aaaa_mx_ns_targets_carry_prometheus_labels() {
        let addr = dns_server(zone()).await;
        let srv = group(addr, "_node._tcp.example.test", RecordType::SRV, 0).await;
        assert_eq!(srv.source, "_node._tcp.example.test");
        assert_eq!(srv.labels, LabelSet::new());
        let name = (NAME_LABEL, "_node._tcp.example.test");
        assert_eq!(
            srv.targets,
            vec![
                labels(&[
                    ("__address__", "node1.example.test:9100"),
                    name,
                    (SRV_TARGET_LABEL, "node1.example.test."),
                    (SRV_PORT_LABEL, "9100"),
                ]),
                labels(&[
                    ("__address__", "node2.example.test:9101"),
                    name,
                    (SRV_TARGET_LABEL, "node2.example.test."),
                    (SRV_PORT_LABEL, "9101"),
                ]),
            ]
        );

        let name = (NAME_LABEL, "hosts.example.test");
        let a = group(addr, "hosts.example.test", RecordType::A, 9100).await;
        assert_eq!(
            a.targets,
            vec![
                labels(&[("__address__", "10.0.0.1:9100"), name]),
                labels(&[("__address__", "10.0.0.2:9100"), name]),
            ]
        );
        let aaaa = group(addr, "hosts.example.test", RecordType::AAAA, 9100).await;
        assert_eq!(
            aaaa.targets,
            vec![
                labels(&[("__address__", "[::1]:9100"), name]),
                labels(&[("__address__", "[2001:db8::5]:9100"), name]),
            ]
        );

        let alias = group(addr, "alias.example.test.", RecordType::A, 80).await;
        assert_eq!(
            alias.targets,
            vec![labels(&[
                ("__address__", "10.0.0.9:80"),
                (NAME_LABEL, "alias.example.test.")
            ])]
        );

        let name = (NAME_LABEL, "example.test");
        let mx = group(addr, "example.test", RecordType::MX, 25).await;
        assert_eq!(
            mx.targets,
            vec![labels(&[
                ("__address__", "mx1.example.test:25"),
                name,
                (MX_TARGET_LABEL, "mx1.example.test."),
            ])]
        );
        let ns = group(addr, "example.test", RecordType::NS, 53).await;
        assert_eq!(
            ns.targets,
            vec![labels(&[
                ("__address__", "ns1.example.test:53"),
                name,
                (NS_TARGET_LABEL, "ns1.example.test."),
            ])]
        );

        // NXDOMAIN and "no record of this type" are empty groups, not failures.
        let none = group(addr, "missing.example.test", RecordType::A, 80).await;
        assert_eq!(none.targets, Vec::<LabelSet>::new());
        let none = group(addr, "example.test", RecordType::SRV, 0).await;
        assert_eq!(none.targets, Vec::<LabelSet>::new());
    }

    #[tokio::test]
    async fn run_publishes_per_name_and_keeps_groups_of_failing_names() {
        let zone = zone();
        let addr = dns_server(zone.clone()).await;
        let cfg = DnsSdConfig {
            names: vec![
                "hosts.example.test".into(),
                "missing.example.test".into(),
                "hosts.example.test".into(),
            ],
            refresh_interval: PromDuration(Duration::from_millis(100)),
            record_type: RecordType::A,
            port: Some(9100),
        };
        cfg.validate().expect("valid");
        let (tx, mut rx) = watch::channel(Vec::new());
        let failures = Counter::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            cfg,
            DnsResolver::with_nameserver(addr),
            tx,
            failures.clone(),
            stop.clone(),
        ));
        let next = async |rx: &mut watch::Receiver<Vec<TargetGroup>>| {
            tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .expect("an update within 5s")
                .expect("alive");
            rx.borrow_and_update().clone()
        };
        let groups = next(&mut rx).await;
        let sources: Vec<&str> = groups.iter().map(|g| g.source.as_str()).collect();
        assert_eq!(sources, ["hosts.example.test", "missing.example.test"]);
        assert_eq!(groups[0].targets.len(), 2);
        assert!(groups[1].targets.is_empty());

        zone.lock()
            .expect("lock")
            .failing
            .push("hosts.example.test.".into());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while failures.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no failure counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!rx.has_changed().expect("alive"), "groups were kept");

        {
            let mut z = zone.lock().expect("lock");
            z.failing.clear();
            z.records.insert(
                ("hosts.example.test.".into(), rr::RecordType::A),
                vec![RData::A(A(Ipv4Addr::new(10, 0, 0, 3)))],
            );
        }
        let groups = next(&mut rx).await;
        assert_eq!(groups[0].targets[0][ADDRESS_LABEL], "10.0.0.3:9100");

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops")
            .expect("no panic");
    }

    #[test]
    fn validate_follows_prometheus() {
        let cfg = |names: &[&str], t: RecordType, port: Option<u16>| DnsSdConfig {
            names: names.iter().map(|s| s.to_string()).collect(),
            refresh_interval: PromDuration(Duration::from_secs(30)),
            record_type: t,
            port,
        };
        assert_eq!(
            cfg(&["_prom._tcp.example.com"], RecordType::SRV, None).validate(),
            Ok(())
        );
        assert_eq!(
            cfg(&["a.example"], RecordType::A, Some(80)).validate(),
            Ok(())
        );
        assert_eq!(
            cfg(&[], RecordType::SRV, None).validate(),
            Err("DNS-SD config must contain at least one SRV record name".into())
        );
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::MX,
            RecordType::NS,
        ] {
            assert_eq!(
                cfg(&["x.example"], t, None).validate(),
                Err("a port is required in DNS-SD configs for all record types except SRV".into())
            );
            assert!(cfg(&["x.example"], t, Some(0)).validate().is_err());
        }
        assert!(cfg(&[""], RecordType::SRV, None).validate().is_err());
        assert!(cfg(&["a..b"], RecordType::SRV, None).validate().is_err());
        let mut zero = cfg(&["a.example"], RecordType::SRV, None);
        zero.refresh_interval = PromDuration(Duration::ZERO);
        assert!(zero.validate().is_err());
        let parsed: DnsSdConfig = serde_yaml::from_str("names: [a.example]").expect("defaults");
        assert_eq!(parsed.record_type, RecordType::SRV);
        assert_eq!(parsed.refresh_interval.0, Duration::from_secs(30));
    }

    #[test]
    fn join_host_port_brackets_ipv6() {
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("a.b", 80), "a.b:80");
    }
}
