//! The fleet status page: every site this gateway knows, by tenant: connected or offline and
//! since when, last batch, lag, the backlog its agent reports, its rate, what was dropped.
//!
//! - `GET /` and `GET /fleet`: HTML rendered on the server, with no script and no external
//!   asset (a gateway may have no Internet access, and an operator's browser may be
//!   locked down); it refreshes itself every 10 s.
//! - `GET /api/v1/fleet`: the same as JSON (`{"sites": [...]}`, see [`SiteView`]).
//!
//! Everything comes from the freshness ledger (`ledger.rs`): the page and the `uplink_site_*`
//! series never disagree.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use crate::ledger::{Ledger, SiteView};

/// The page's routes, served beside `/metrics` on the web listener.
pub fn routes(ledger: Arc<Ledger>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/fleet", get(page))
        .route("/api/v1/fleet", get(json))
        .with_state(ledger)
}

async fn json(State(ledger): State<Arc<Ledger>>) -> impl IntoResponse {
    let body = serde_json::json!({ "sites": ledger.snapshot() });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn page(State(ledger): State<Arc<Ledger>>) -> Html<String> {
    Html(render(&ledger.snapshot(), now_secs()))
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The HTML page for `sites` at `now` (Unix seconds).
pub fn render(sites: &[SiteView], now: f64) -> String {
    let connected = sites.iter().filter(|s| s.connected).count();
    let backlog: u64 = sites.iter().map(|s| s.backlog_records).sum();
    let rate: f64 = sites.iter().map(|s| s.samples_per_second).sum();
    let mut out = String::with_capacity(4096 + 512 * sites.len());
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"10\">",
        "<title>Uplink gateway: fleet</title><style>",
        "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}",
        "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}",
        ".summary span{display:inline-block;margin-right:2em;font-size:1.1em}",
        "table{border-collapse:collapse;width:100%}",
        "th,td{padding:.35em .7em;border-bottom:1px solid #ddd;text-align:right}",
        "th:first-child,td:first-child,th.state,td.state{text-align:left}",
        "th{background:#f4f4f4}",
        ".up{color:#17693a;font-weight:600}.down{color:#b3261e;font-weight:600}",
        ".warn{color:#b3261e}",
        "</style></head><body>\n<h1>Uplink gateway: fleet</h1>\n"
    ));
    let _ = writeln!(
        out,
        "<p class=\"summary\"><span id=\"sites\">{} sites</span>\
         <span id=\"connected\">{connected} connected</span>\
         <span id=\"offline\">{} offline</span>\
         <span>{backlog} records waiting at the sites</span>\
         <span>{} samples/s</span></p>",
        sites.len(),
        sites.len() - connected,
        fmt_rate(rate),
    );
    if sites.is_empty() {
        out.push_str("<p>No agent has connected since the gateway started.</p>\n");
    }
    let mut tenants: Vec<&str> = sites.iter().map(|s| s.tenant.as_str()).collect();
    tenants.dedup();
    for tenant in tenants {
        let label = if tenant.is_empty() {
            "Sites without a tenant".to_owned()
        } else {
            format!("Tenant {}", escape(tenant))
        };
        let _ = write!(
            out,
            "<h2>{label}</h2>\n<table><thead><tr><th>site</th><th class=\"state\">state</th><th>last batch</th>\
             <th>lag</th><th>backlog (records)</th><th>backlog (bytes)</th>\
             <th>oldest unsent</th><th>samples/s</th><th>forwarded</th><th>dropped</th>\
             </tr></thead><tbody>\n"
        );
        for s in sites.iter().filter(|s| s.tenant == tenant) {
            let state = match (s.connected, s.since) {
                (true, Some(t)) => {
                    format!("<span class=\"up\">connected</span> for {}", age(now - t))
                }
                (true, None) => "<span class=\"up\">connected</span>".to_owned(),
                (false, Some(t)) => {
                    format!("<span class=\"down\">offline</span> for {}", age(now - t))
                }
                (false, None) => "<span class=\"down\">offline</span>".to_owned(),
            };
            let ago =
                |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{} ago", age(now - t)));
            let dropped = if s.dropped_samples > 0 {
                format!("<span class=\"warn\">{}</span>", s.dropped_samples)
            } else {
                "0".to_owned()
            };
            let _ = writeln!(
                out,
                "<tr data-site=\"{site}\"><td>{site}</td><td class=\"state\">{state}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{dropped}</td></tr>",
                ago(s.last_batch),
                s.lag_seconds.map_or("-".to_owned(), age),
                s.backlog_records,
                s.backlog_bytes,
                s.oldest_backlog_age_seconds.map_or("-".to_owned(), age),
                fmt_rate(s.samples_per_second),
                s.forwarded_samples,
                site = escape(&s.site),
            );
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str(
        "<p><a href=\"/api/v1/fleet\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n\
         </body></html>\n",
    );
    out
}

/// A duration for people: `42s`, `3m 5s`, `2h 10m`, `4d 3h`.
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// HTML-escapes text (identities are restricted, but a page never trusts that).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(tenant: &str, site: &str, connected: bool) -> SiteView {
        SiteView {
            tenant: tenant.into(),
            site: site.into(),
            connected,
            since: Some(1000.0),
            last_batch: Some(1090.0),
            lag_seconds: Some(2.5),
            backlog_records: 3,
            backlog_bytes: 4096,
            oldest_backlog_age_seconds: None,
            samples_per_second: 12.34,
            forwarded_samples: 500,
            dropped_samples: 0,
        }
    }

    #[test]
    fn page_groups_by_tenant_and_escapes() {
        let sites = vec![
            view("", "lab", true),
            view("acme", "<b>x</b>", false),
            view("acme", "berlin", true),
        ];
        let html = render(&sites, 1100.0);
        assert!(
            html.contains("3 sites") && html.contains("2 connected") && html.contains("1 offline")
        );
        assert!(html.contains("Sites without a tenant") && html.contains("Tenant acme"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"));
        assert!(html.contains("connected</span> for 1m 40s"));
        assert!(html.contains("10s ago"));
        assert!(
            !html.contains("http://") && !html.contains("<script"),
            "no external assets"
        );
        assert_eq!(age(3.0 * 86_400.0 + 7200.0), "3d 2h");
    }
}
