use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::*;

/// A throwaway CA that issues leaf certificates into `kubernetes.io/tls` directories.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes `tls.crt` and `tls.key` for `names` (DNS names or IPs; the first is the CN)
    /// and this CA's `ca.crt` into `dir`.
    pub(crate) fn issue(&self, dir: &Path, names: &[&str]) {
        self.issue_with(dir, names, |_| {});
    }

    pub(crate) fn issue_with(
        &self,
        dir: &Path,
        names: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), self.pem()).unwrap();
    }
}

#[test]
fn loads_a_secret_directory_and_describes_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    TestCa::new("ca").issue(
        dir.path(),
        &["kv-0.kv.default.svc.cluster.local", "127.0.0.1"],
    );
    let material = TlsMaterial::load(dir.path()).unwrap();
    let info = material.cert_info();
    assert_eq!(info.dns_names, ["kv-0.kv.default.svc.cluster.local"]);
    assert_eq!(info.ips, ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert_eq!(info.identity(), Some("kv-0.kv.default.svc.cluster.local"));
    assert!(info.not_after > 4_000_000_000, "{}", info.not_after);
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = TlsMaterial::load(dir.path()).unwrap_err();
    assert!(
        err.contains("tls.crt") && err.contains("kubernetes.io/tls"),
        "{err}"
    );

    let ca = TestCa::new("ca");
    ca.issue(dir.path(), &["a"]);
    let other = tempfile::tempdir().unwrap();
    ca.issue(other.path(), &["b"]);
    std::fs::copy(other.path().join("tls.key"), dir.path().join("tls.key")).unwrap();
    let err = TlsMaterial::load(dir.path()).unwrap_err();
    assert!(err.contains("does not go with"), "{err}");

    ca.issue(dir.path(), &["a"]);
    std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
    let err = TlsMaterial::load(dir.path()).unwrap_err();
    assert!(err.contains("ca.crt"), "{err}");
}

#[test]
fn reload_swaps_good_files_and_keeps_the_old_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ca");
    ca.issue(dir.path(), &["first"]);
    let material = TlsMaterial::load(dir.path()).unwrap();
    assert_eq!(material.reload(), Ok(false), "unchanged files are not new");

    ca.issue(dir.path(), &["second"]);
    assert_eq!(material.reload(), Ok(true));
    assert_eq!(material.cert_info().dns_names, ["second"]);

    std::fs::write(dir.path().join("tls.crt"), "garbage").unwrap();
    assert!(material.reload().is_err());
    assert_eq!(
        material.cert_info().dns_names,
        ["second"],
        "old material kept"
    );
}

/// A handshake through the configs `server_config` and `dial_config` build: the peer port
/// admits a member certificate and refuses one for another name or from another CA, with a
/// reason that says which.
#[tokio::test]
async fn peer_handshakes_check_the_ca_and_the_member_name() {
    let ca = TestCa::new("ca");
    let server_dir = tempfile::tempdir().unwrap();
    ca.issue(server_dir.path(), &["kv-0.kv.ns.svc.cluster.local"]);
    let server = TlsMaterial::load(server_dir.path()).unwrap();
    let names = PeerNames::StatefulSet {
        set: "kv".into(),
        suffix: "kv.ns.svc.cluster.local".into(),
    };
    let config = server.server_config(ClientAuth::Peers(names), &[b"h2"]);

    let member = tempfile::tempdir().unwrap();
    ca.issue(member.path(), &["kv-1.kv.ns.svc.cluster.local"]);
    let intruder = tempfile::tempdir().unwrap();
    ca.issue(intruder.path(), &["db-1.kv.ns.svc.cluster.local"]);
    let stranger = tempfile::tempdir().unwrap();
    TestCa::new("other").issue(stranger.path(), &["kv-2.kv.ns.svc.cluster.local"]);
    std::fs::copy(
        server_dir.path().join("ca.crt"),
        stranger.path().join("ca.crt"),
    )
    .unwrap();

    for (dir, expect) in [
        (member.path(), None),
        (intruder.path(), Some("match no member name")),
        (stranger.path(), Some("UnknownIssuer")),
    ] {
        let client = TlsMaterial::load(dir).unwrap();
        let result = handshake(config.clone(), client.dial_config()).await;
        match (expect, result) {
            (None, Ok(())) => {}
            (Some(want), Err(got)) => assert!(got.contains(want), "{want:?} not in {got:?}"),
            (want, got) => panic!("expected {want:?}, got {got:?}"),
        }
    }
}

/// Runs one handshake over a socket pair; the server's error on failure.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(a);
    let name = rustls::pki_types::ServerName::try_from("kv-0.kv.ns.svc.cluster.local").unwrap();
    let connect = tokio_rustls::TlsConnector::from(client).connect(name, b);
    let (server, client) = tokio::join!(accept, connect);
    let _ = client;
    server.map(drop).map_err(|e| e.to_string())
}
