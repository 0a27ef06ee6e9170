//! A stand-in ticketing system: an Alertmanager webhook receiver that opens one ticket per
//! firing alert (by fingerprint) and resolves it when Alertmanager says so. It speaks
//! Alertmanager's real webhook payload (version 4) and prints one line per change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// One change of a ticket.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TicketEvent {
    /// `opened` or `resolved`.
    pub action: String,
    pub alertname: String,
    /// Every label of the alert.
    pub labels: BTreeMap<String, String>,
    pub summary: String,
}

#[derive(serde::Deserialize)]
struct Payload {
    alerts: Vec<Alert>,
}

#[derive(serde::Deserialize)]
struct Alert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    fingerprint: String,
}

#[derive(Default)]
struct Inner {
    open: BTreeMap<String, ()>,
    events: Vec<TicketEvent>,
    print: bool,
}

/// The running receiver.
pub struct Tickets {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    cancel: CancellationToken,
}

async fn webhook(State(inner): State<Arc<Mutex<Inner>>>, body: String) -> StatusCode {
    let Ok(p) = serde_json::from_str::<Payload>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    for a in p.alerts {
        let opened = g.open.contains_key(&a.fingerprint);
        let action = match (a.status.as_str(), opened) {
            ("firing", false) => {
                g.open.insert(a.fingerprint.clone(), ());
                "opened"
            }
            ("resolved", true) => {
                g.open.remove(&a.fingerprint);
                "resolved"
            }
            // A repeat notification for an open ticket, or a resolve for an unknown one.
            _ => continue,
        };
        let ev = TicketEvent {
            action: action.into(),
            alertname: a.labels.get("alertname").cloned().unwrap_or_default(),
            summary: a.annotations.get("summary").cloned().unwrap_or_default(),
            labels: a.labels,
        };
        if g.print {
            println!(
                "ticket {}: [{}] {} ({})",
                ev.action,
                ev.alertname,
                ev.summary,
                ev.labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != "alertname")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        g.events.push(ev);
    }
    StatusCode::OK
}

impl Tickets {
    /// Serves `POST /tickets` on `addr`; `print` echoes each change to stdout.
    pub async fn start(addr: SocketAddr, print: bool) -> std::io::Result<Tickets> {
        let inner = Arc::new(Mutex::new(Inner {
            print,
            ..Inner::default()
        }));
        let l = tokio::net::TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let cancel = CancellationToken::new();
        let app = Router::new()
            .route("/tickets", post(webhook))
            .with_state(inner.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(Tickets {
            addr,
            inner,
            cancel,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/tickets", self.addr)
    }

    /// Every change so far.
    pub fn events(&self) -> Vec<TicketEvent> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .clone()
    }
}

impl Drop for Tickets {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
