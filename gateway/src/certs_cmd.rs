//! `uplink-gateway certs ...`: a development PKI in one minute, without openssl.
//!
//! - `certs init --dir D [--name N]...`: writes `D/ca.crt`, `D/ca.key` (the CA that signs
//!   both sides), and `D/gateway.crt`, `D/gateway.key` valid for every `--name` (DNS names or
//!   IP addresses; default `localhost` and `127.0.0.1`).
//! - `certs issue-agent --dir D --site S`: writes `D/S.crt`, `D/S.key`, a client certificate
//!   whose identity (subject CN) is `S`.
//! - `certs revoke --dir D --site S`: adds `D/S.crt` to the CRL `D/ca.crl` (`init` writes it
//!   empty; point `tls.crl_file` at it, and the gateway cuts that agent off at its next reload).

use std::path::PathBuf;

use clap::Subcommand;
use uplink_shared::certs::{Authority, CertError};

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create a CA and the gateway's server certificate.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address agents use to reach the gateway (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Issue an agent's client certificate, signed by the CA in --dir.
    IssueAgent {
        #[arg(long)]
        dir: PathBuf,
        /// Site name: the agent's identity.
        #[arg(long)]
        site: String,
        #[arg(long, default_value_t = 825)]
        days: i64,
    },
    /// Revoke an agent's certificate: add it to the CRL `ca.crl` in --dir.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        /// Site whose certificate (`<site>.crt` in --dir) is revoked.
        #[arg(long)]
        site: String,
    },
}

/// Runs a certs subcommand; prints what it wrote.
pub fn run(cmd: CertsCmd) -> Result<(), CertError> {
    match cmd {
        CertsCmd::Init { dir, names, days } => {
            let names = if names.is_empty() {
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
            } else {
                names
            };
            let ca = Authority::generate("Uplink development CA", days)?;
            ca.write(&dir)?;
            ca.issue_gateway(&names, days)?.write(&dir, "gateway")?;
            println!(
                "wrote {0}/ca.crt {0}/ca.key {0}/ca.crl {0}/gateway.crt {0}/gateway.key (names: {1})",
                dir.display(),
                names.join(", ")
            );
        }
        CertsCmd::IssueAgent { dir, site, days } => {
            let ca = Authority::load(&dir)?;
            ca.issue_agent(&site, days)?.write(&dir, &site)?;
            println!("wrote {0}/{1}.crt {0}/{1}.key", dir.display(), site);
        }
        CertsCmd::Revoke { dir, site } => {
            let ca = Authority::load(&dir)?;
            ca.revoke_into(&dir, &dir.join(format!("{site}.crt")))?;
            println!("wrote {}/ca.crl (revokes {site})", dir.display());
        }
    }
    Ok(())
}
