//! Certificates from the user's own PKI, made with the openssl command line (an EC CA, an EC
//! gateway certificate with DNS and IP names, an RSA agent certificate with a PKCS#1 key) work
//! exactly like the built-in development ones: the agent's identity is its subject CN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{batch, connect, handshake, send_batch, start, wait_for};
use uplink_shared::wire::AckStatus;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is installed (deploy/dev/setup.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_made_with_openssl_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // The CA.
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        "/O=Example/CN=Example Root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(d, &args);
    // The gateway: EC key, server auth, DNS and IP names.
    std::fs::write(
        d.join("gw.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "gateway.key",
        "-out",
        "gateway.csr",
        "-subj",
        "/CN=gateway.example",
    ]);
    openssl(d, &args);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "gateway.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "gw.ext",
            "-out",
            "gateway.crt",
        ],
    );
    // The agent: RSA key in PKCS#1 form, client auth, identity in the CN.
    std::fs::write(d.join("agent.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(d, &["genrsa", "-traditional", "-out", "good.key", "2048"]);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "good.key",
            "-out",
            "good.csr",
            "-subj",
            "/O=Example/CN=plant-7",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "good.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "agent.ext",
            "-out",
            "good.crt",
        ],
    );
    assert!(
        std::fs::read_to_string(d.join("good.key"))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );

    let s = start(dir).await;
    let conn = connect(&s.dir, "good", s.quic)
        .await
        .expect("mTLS with openssl certificates");
    let (_send, _recv, identity) = handshake(&conn).await;
    assert_eq!(identity, "plant-7");
    let ack = send_batch(&conn, batch(0, 1, 1.0)).await;
    assert_eq!(ack.status, AckStatus::Accepted);
    wait_for("the sample", || s.capture.len() == 1).await;
    s.stop.cancel();
}
