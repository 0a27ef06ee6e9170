//! Which proxy a request goes through, decided as Prometheus decides it.
//!
//! Prometheus (`prometheus/common` `ProxyConfig.Proxy`) has three cases, and so has
//! [`ProxyRule`]:
//!
//! - `proxy_url` alone: every request goes through it, loopback targets included (Go's
//!   `http.ProxyURL`): [`ProxyRule::all`].
//! - `proxy_url` with `no_proxy`: Go's `golang.org/x/net/http/httpproxy` with the URL as both
//!   the HTTP and the HTTPS proxy: [`ProxyRule::new`].
//! - `proxy_from_environment`: the same, with `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` (or
//!   their lower-case spellings, upper case first) read once, when the client is built:
//!   [`ProxyRule::from_env`].
//!
//! `httpproxy`'s rules, which the second and third case follow:
//!
//! - `http://` requests use the HTTP proxy, `https://` ones the HTTPS proxy; a proxy written
//!   without a scheme (`proxy:3128`) is `http://proxy:3128`; an unparseable one is no proxy.
//! - `localhost` and loopback addresses never go through a proxy.
//! - `NO_PROXY` is a comma-separated list, each entry trimmed and lower-cased: `*` exempts
//!   every host; an IP network (`10.0.0.0/8`) exempts the addresses in it; an IP, optionally
//!   with a port (`192.168.1.3:80`, `[2001:db8::3]:443`), exempts that address (on that port);
//!   a domain `example.com` exempts it and its subdomains, `.example.com` and
//!   `*.example.com` only its subdomains, each optionally with a port. Domains never match
//!   IP targets. Ports compare with the target's, its scheme's default when the URL has none.
//!
//! Not followed: Go's refusal of `HTTP_PROXY` in a CGI environment (`REQUEST_METHOD` set),
//! and IDNA conversion of non-ASCII `NO_PROXY` entries (targets' names are converted by URL
//! parsing; write such entries in their `xn--` form).
//!
//! Pure but for [`ProxyRule::from_env`]: no I/O.

use std::net::IpAddr;

use reqwest::Url;

/// How requests choose a proxy; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyRule {
    /// Every request through this proxy.
    All(Url),
    /// `httpproxy`'s rules.
    Go {
        http: Option<Url>,
        https: Option<Url>,
        no_proxy: NoProxy,
    },
}

/// A parsed `NO_PROXY` list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NoProxy {
    /// `*`: nothing goes through a proxy.
    all: bool,
    ips: Vec<IpMatch>,
    domains: Vec<DomainMatch>,
}

#[derive(Clone, Debug, PartialEq)]
enum IpMatch {
    Net { addr: IpAddr, prefix: u8 },
    Addr { addr: IpAddr, port: String },
}

#[derive(Clone, Debug, PartialEq)]
struct DomainMatch {
    /// With a leading dot.
    suffix: String,
    port: String,
    /// Whether the domain itself matches too (the entry had no leading `.` or `*.`).
    exact_too: bool,
}

impl ProxyRule {
    /// `proxy_url` alone.
    pub fn all(url: Url) -> ProxyRule {
        ProxyRule::All(url)
    }

    /// `httpproxy` with these settings (empty strings: unset).
    pub fn new(http: &str, https: &str, no_proxy: &str) -> ProxyRule {
        ProxyRule::Go {
            http: parse_proxy(http),
            https: parse_proxy(https),
            no_proxy: NoProxy::parse(no_proxy),
        }
    }

    /// `httpproxy.FromEnvironment`.
    pub fn from_env() -> ProxyRule {
        let var = |upper: &str, lower: &str| {
            [upper, lower]
                .iter()
                .filter_map(|n| std::env::var(n).ok())
                .find(|v| !v.is_empty())
                .unwrap_or_default()
        };
        ProxyRule::new(
            &var("HTTP_PROXY", "http_proxy"),
            &var("HTTPS_PROXY", "https_proxy"),
            &var("NO_PROXY", "no_proxy"),
        )
    }

    /// The proxy for a request to `target`, or `None` to connect directly.
    pub fn proxy_for(&self, target: &Url) -> Option<Url> {
        let (http, https, no_proxy) = match self {
            ProxyRule::All(url) => return Some(url.clone()),
            ProxyRule::Go {
                http,
                https,
                no_proxy,
            } => (http, https, no_proxy),
        };
        let proxy = match target.scheme() {
            "https" => https.as_ref(),
            "http" => http.as_ref(),
            _ => None,
        }?;
        no_proxy.uses_proxy(target).then(|| proxy.clone())
    }
}

/// `httpproxy`'s `parseProxy`: a URL, or `http://` plus the text when that is not one.
fn parse_proxy(text: &str) -> Option<Url> {
    if text.is_empty() {
        return None;
    }
    match Url::parse(text) {
        Ok(u) if u.has_host() && !u.host_str().unwrap_or_default().is_empty() => Some(u),
        _ => Url::parse(&format!("http://{text}")).ok(),
    }
}

/// Go's `net.SplitHostPort`, for the forms a `NO_PROXY` entry takes: `host:port` or
/// `[v6]:port` (the port may be empty). `None` when there is no port or too many colons.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return (!port.contains(':') && !port.contains('[')).then_some((host, port));
    }
    let (host, port) = s.split_once(':')?;
    (!port.contains(':') && !host.contains('[') && !host.contains(']')).then_some((host, port))
}

/// `a.b.c.d/n` or `v6/n`.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let prefix: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let bits = |a: IpAddr| -> (u128, u8) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    // An IPv4-mapped IPv6 address is the IPv4 address, as for Go's net.IP.
    let canon = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    // A mapped network of at least 96 bits is the IPv4 network (Go's `IPNet.Contains`).
    let (net, prefix) = match net {
        IpAddr::V6(v6) if prefix >= 96 => v6
            .to_ipv4_mapped()
            .map_or((net, prefix), |v4| (IpAddr::V4(v4), prefix - 96)),
        _ => (net, prefix),
    };
    let ((a, wa), (n, wn)) = (bits(canon(ip)), bits(net));
    if wa != wn {
        return false;
    }
    // IPv4 addresses sit in the top 32 bits: the prefix counts from the top either way.
    let prefix = u32::from(prefix).min(u32::from(wn));
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    a & mask == n & mask
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    let canon = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    canon(a) == canon(b)
}

impl NoProxy {
    /// `httpproxy`'s parsing of `NO_PROXY`.
    pub fn parse(list: &str) -> NoProxy {
        let mut out = NoProxy::default();
        for entry in list.split(',') {
            let p = entry.trim().to_lowercase();
            if p.is_empty() {
                continue;
            }
            if p == "*" {
                return NoProxy {
                    all: true,
                    ..NoProxy::default()
                };
            }
            if let Some((addr, prefix)) = parse_cidr(&p) {
                out.ips.push(IpMatch::Net { addr, prefix });
                continue;
            }
            let (host, port) = match split_host_port(&p) {
                Some(("", _)) => continue,
                Some((h, port)) => (h, port),
                None => (p.as_str(), ""),
            };
            if let Ok(addr) = host.parse::<IpAddr>() {
                out.ips.push(IpMatch::Addr {
                    addr,
                    port: port.to_owned(),
                });
                continue;
            }
            let host = host
                .strip_prefix('*')
                .filter(|h| h.starts_with('.'))
                .unwrap_or(host);
            let exact_too = !host.starts_with('.');
            out.domains.push(DomainMatch {
                suffix: if exact_too {
                    format!(".{host}")
                } else {
                    host.to_owned()
                },
                port: port.to_owned(),
                exact_too,
            });
        }
        out
    }

    /// `httpproxy`'s `useProxy`: whether a request to `target` goes through the proxy.
    fn uses_proxy(&self, target: &Url) -> bool {
        let Some(host) = target.host_str().filter(|h| !h.is_empty()) else {
            return true;
        };
        let port = target
            .port_or_known_default()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_lowercase();
        let ip = name.parse::<IpAddr>().ok();
        if name == "localhost" || ip.is_some_and(|ip| ip.is_loopback() || mapped_loopback(ip)) {
            return false;
        }
        if self.all {
            return false;
        }
        if let Some(ip) = ip {
            let exempt = self.ips.iter().any(|m| match m {
                IpMatch::Net { addr, prefix } => in_network(ip, *addr, *prefix),
                IpMatch::Addr { addr, port: p } => {
                    same_ip(ip, *addr) && (p.is_empty() || *p == port)
                }
            });
            if exempt {
                return false;
            }
            return true;
        }
        !self.domains.iter().any(|m| {
            (name.ends_with(&m.suffix) || (m.exact_too && name == m.suffix[1..]))
                && (m.port.is_empty() || m.port == port)
        })
    }
}

/// Go's `IsLoopback` also holds for `::ffff:127.0.0.1`.
fn mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    fn via(rule: &ProxyRule, target: &str) -> Option<String> {
        rule.proxy_for(&url(target)).map(|u| u.to_string())
    }

    #[test]
    fn proxies_without_a_scheme_are_http() {
        let r = ProxyRule::new("cache.corp.example.com:1234", "", "");
        assert_eq!(
            via(&r, "http://example.com/"),
            Some("http://cache.corp.example.com:1234/".into())
        );
        let r = ProxyRule::new("127.0.0.1:8080", "", "");
        assert_eq!(
            via(&r, "http://example.com/"),
            Some("http://127.0.0.1:8080/".into())
        );
        let r = ProxyRule::new("localhost", "", "");
        assert_eq!(
            via(&r, "http://example.com/"),
            Some("http://localhost/".into())
        );
        let r = ProxyRule::new("https://cache.corp.example.com", "", "");
        assert_eq!(
            via(&r, "http://example.com/"),
            Some("https://cache.corp.example.com/".into())
        );
    }

    #[test]
    fn the_scheme_picks_the_proxy() {
        let r = ProxyRule::new("http://proxy.tld", "https://secure.proxy.tld", "");
        assert_eq!(
            via(&r, "http://insecure.tld/"),
            Some("http://proxy.tld/".into())
        );
        assert_eq!(
            via(&r, "https://secure.tld/"),
            Some("https://secure.proxy.tld/".into())
        );
        let only_http = ProxyRule::new("http://proxy.tld", "", "");
        assert_eq!(via(&only_http, "https://secure.tld/"), None);
        assert_eq!(
            via(&ProxyRule::new("", "", ""), "http://example.com/"),
            None
        );
    }

    #[test]
    fn proxy_url_alone_proxies_everything() {
        let r = ProxyRule::all(url("http://p:3128"));
        assert_eq!(
            via(&r, "http://localhost:9100/metrics"),
            Some("http://p:3128/".into())
        );
        assert_eq!(via(&r, "https://[::1]/"), Some("http://p:3128/".into()));
    }

    #[test]
    fn no_proxy_domains() {
        let cases = [
            ("example.com", "http://example.com/", false),
            (".example.com", "http://example.com/", true),
            ("ample.com", "http://example.com/", true),
            ("example.com", "http://foo.example.com/", false),
            (".foo.com", "http://example.com/", true),
            ("xn--fsq092h.com", "http://www.示例.com", false),
            ("example.com:8080", "http://example.com:8080/", false),
            ("example.com:8080", "http://example.com/", true),
            ("Example.COM ", "http://EXAMPLE.com/", false),
        ];
        for (no_proxy, target, proxied) in cases {
            let r = ProxyRule::new("proxy", "proxy", no_proxy);
            assert_eq!(
                via(&r, target).is_some(),
                proxied,
                "no_proxy={no_proxy:?} {target}"
            );
        }
    }

    /// The host table of Go's `TestUseProxy`, on port 80.
    #[test]
    fn no_proxy_list_as_go_reads_it() {
        let no_proxy = "foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, \
            192.168.1.3:80, 10.0.0.0/30, 2001:db8::52:0:1, [2001:db8::52:0:2]:443, \
            [2001:db8::52:0:3]:80, 2002:db8:a::45/64";
        let r = ProxyRule::new("proxy", "proxy", no_proxy);
        let all = ProxyRule::new("proxy", "proxy", "*");
        let hosts = [
            ("localhost", false),
            ("127.0.0.1", false),
            ("127.0.0.2", false),
            ("[::1]", false),
            ("[::2]", true),
            ("192.168.1.1", false),
            ("192.168.1.2", true),
            ("192.168.1.3", false),
            ("192.168.1.4", true),
            ("10.0.0.2", false),
            ("[2001:db8::52:0:1]", false),
            ("[2001:db8::52:0:2]", true),
            ("[2001:db8::52:0:3]", false),
            ("[2002:db8:a::123]", false),
            ("[fe80::424b:c8be:1643:a1b6]", true),
            ("barbaz.net", true),
            ("www.barbaz.net", false),
            ("foobar.com", false),
            ("www.foobar.com", false),
            ("foofoobar.com", true),
            ("baz.com", true),
            ("localhost.net", true),
            ("local.localhost", true),
            ("barbarbaz.net", true),
            ("wildcard.io", true),
            ("nested.wildcard.io", false),
            ("awildcard.io", true),
        ];
        for (host, proxied) in hosts {
            let target = format!("http://{host}:80/");
            assert_eq!(via(&r, &target).is_some(), proxied, "{host}");
            assert_eq!(via(&all, &target), None, "{host} with *");
        }
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let r = ProxyRule::new("proxy", "", ":1, , [::1, 10.0.0.0/33");
        assert!(via(&r, "http://example.com/").is_some());
        assert!(via(&r, "http://10.0.0.1/").is_some());
    }

    #[test]
    fn domains_do_not_match_ips() {
        let r = ProxyRule::new("proxy", "", "0.1");
        assert!(via(&r, "http://10.0.0.1/").is_some());
        let r = ProxyRule::new("proxy", "", "::ffff:10.0.0.0/104");
        assert_eq!(via(&r, "http://10.0.0.1/"), None);
    }
}
