//! Server and client configs shaking hands over real sockets: SAN checks both ways and a
//! certificate reload that new handshakes pick up while the old connection keeps working.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use outrider_config::{CertFiles, ClientTls as ClientSpec, ListenerTls, ListenerTlsMode};
use outrider_tls::{ClientTls, ServerTls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// Writes a leaf for `san` to `<name>.pem` / `<name>.key`, bumping the mtime.
    fn leaf(&self, name: &str, san: &str) -> CertFiles {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![san.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let files = CertFiles {
            certificate_chain: self.path(&format!("{name}.pem")),
            private_key: self.path(&format!("{name}.key")),
        };
        let stamp = SystemTime::now() + Duration::from_secs(next_stamp_offset(name));
        for (path, text) in [
            (&files.certificate_chain, cert.pem()),
            (&files.private_key, key.serialize_pem()),
        ] {
            std::fs::write(path, text).unwrap();
            let f = std::fs::File::options().write(true).open(path).unwrap();
            f.set_modified(stamp).unwrap();
        }
        files
    }
}

/// A distinct offset per write so that a rewrite always changes the mtime.
fn next_stamp_offset(name: &str) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) * 10 + name.len() as u64
}

/// Accepts TLS connections forever and echoes one line per connection.
async fn echo_server(tls: std::sync::Arc<ServerTls>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(client: &ClientTls, addr: std::net::SocketAddr) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    let mut s = client.connect(tcp).await?;
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn client_checks_san_and_reload_swaps_the_server_certificate() {
    let pki = Pki::new();
    let spec = ListenerTls {
        mode: ListenerTlsMode::Strict,
        certificate: pki.leaf("server", "a.test"),
        client_trust: None,
        client_sans: Vec::new(),
    };
    let server = ServerTls::new(&spec).unwrap();
    let addr = echo_server(server.clone()).await;
    let client_for = |san: &str| {
        ClientTls::new(
            &ClientSpec {
                server_name: "svc.local".into(),
                certificate: None,
                trust: pki.path("ca.pem"),
                sans: vec![san.to_string()],
            },
            false,
        )
        .unwrap()
    };
    let (want_a, want_b) = (client_for("a.test"), client_for("b.test"));
    round_trip(&want_a, addr).await.unwrap();
    assert!(round_trip(&want_b, addr).await.is_err());

    // An open connection made with the old certificate survives the reload.
    let mut old = want_a
        .connect(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    pki.leaf("server", "b.test");
    assert!(server.reload().unwrap());
    assert!(!server.reload().unwrap(), "unchanged files reload nothing");
    round_trip(&want_b, addr).await.unwrap();
    assert!(round_trip(&want_a, addr).await.is_err());
    old.write_all(b"old!").await.unwrap();
    let mut buf = [0u8; 4];
    old.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"old!");
}

#[tokio::test]
async fn server_requires_a_client_certificate_with_a_listed_san() {
    let pki = Pki::new();
    let spec = ListenerTls {
        mode: ListenerTlsMode::Strict,
        certificate: pki.leaf("server", "a.test"),
        client_trust: Some(pki.path("ca.pem")),
        client_sans: vec!["good.client".into()],
    };
    let addr = echo_server(ServerTls::new(&spec).unwrap()).await;
    let client_with = |cert: Option<CertFiles>| {
        ClientTls::new(
            &ClientSpec {
                server_name: "a.test".into(),
                certificate: cert,
                trust: pki.path("ca.pem"),
                sans: Vec::new(),
            },
            true,
        )
        .unwrap()
    };
    round_trip(&client_with(Some(pki.leaf("good", "good.client"))), addr)
        .await
        .unwrap();
    // TLS 1.3 reports a refused client certificate on the first read.
    assert!(
        round_trip(&client_with(Some(pki.leaf("bad", "bad.client"))), addr)
            .await
            .is_err()
    );
    assert!(round_trip(&client_with(None), addr).await.is_err());
}

#[test]
fn missing_files_are_reported() {
    let spec = ListenerTls {
        mode: ListenerTlsMode::Permissive,
        certificate: CertFiles {
            certificate_chain: "/nonexistent/cert.pem".into(),
            private_key: "/nonexistent/key.pem".into(),
        },
        client_trust: None,
        client_sans: Vec::new(),
    };
    let err = ServerTls::new(&spec).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
}
