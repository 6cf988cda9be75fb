//! Who may connect: client-certificate policies per port, and the names a peer's certificate
//! must carry. Each handshake uses the material current at that moment.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};

use super::TlsMaterial;
use super::cert::{CertInfo, name_matches};
use crate::config::{Identity, Peers};

/// Which client certificates a port asks for.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// None (server-only TLS).
    None,
    /// Verified against the CA when presented; clients without one complete the handshake
    /// (a port that requires certificates refuses their requests with an explanation, see
    /// [`crate::listen::ListenConfig::client_cert_required`]).
    Optional,
    /// Required, verified, and valid for a member name (the peer port).
    Peers(PeerNames),
}

impl ClientAuth {
    pub(crate) fn offers(&self) -> bool {
        !matches!(self, ClientAuth::None)
    }
}

/// The names a member's certificate may carry (at least one of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerNames {
    /// `{set}-{N}.{suffix}` for any ordinal N, or the wildcard `*.{suffix}` (one certificate
    /// for the whole headless Service).
    StatefulSet {
        /// The StatefulSet.
        set: String,
        /// `{service}.{namespace}.svc.{domain}`.
        suffix: String,
    },
    /// The hosts of a static peer map (names or IP addresses).
    Hosts(Vec<String>),
}

impl PeerNames {
    /// The member names of this member's cluster, or `None` without peers.
    pub fn of(identity: &Identity, peers: &Peers) -> Option<PeerNames> {
        match peers {
            Peers::None => None,
            Peers::Static(map) => {
                let mut hosts: Vec<String> = map
                    .values()
                    .filter_map(|a| crate::resolve::split_host_port(a).ok())
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_ascii_lowercase())
                    .collect();
                hosts.sort();
                hosts.dedup();
                Some(PeerNames::Hosts(hosts))
            }
            Peers::Dns {
                service,
                namespace,
                cluster_domain,
                ..
            } => Some(PeerNames::StatefulSet {
                set: identity.set.clone(),
                suffix: format!("{service}.{namespace}.svc.{cluster_domain}"),
            }),
        }
    }

    /// Whether a certificate with `info` names a member.
    pub fn admits(&self, info: &CertInfo) -> bool {
        match self {
            PeerNames::StatefulSet { set, suffix } => info.dns_names.iter().any(|d| {
                if d.strip_prefix("*.") == Some(suffix.as_str()) {
                    return true;
                }
                d.strip_suffix(suffix.as_str())
                    .and_then(|h| h.strip_suffix('.'))
                    .and_then(|h| h.strip_prefix(set.as_str()))
                    .and_then(|h| h.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            }),
            PeerNames::Hosts(hosts) => hosts.iter().any(|h| match h.parse() {
                Ok(ip) => info.ips.contains(&ip),
                Err(_) => info.dns_names.iter().any(|d| name_matches(d, h)),
            }),
        }
    }
}

impl std::fmt::Display for PeerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerNames::StatefulSet { set, suffix } => {
                write!(f, "{set}-N.{suffix} or *.{suffix}")
            }
            PeerNames::Hosts(hosts) => write!(f, "one of [{}]", hosts.join(", ")),
        }
    }
}

/// The serving certificate, as loaded now.
#[derive(Debug)]
pub(crate) struct CurrentCert(pub(crate) TlsMaterial);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

/// The client certificate of one version of the material (a dial config is rebuilt on
/// reload).
#[derive(Debug)]
pub(crate) struct FixedClientCert(pub(crate) Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against the CA loaded now, then (for peers) their names.
#[derive(Debug)]
pub(crate) struct DynamicClientVerifier {
    pub(crate) material: TlsMaterial,
    pub(crate) auth: ClientAuth,
}

impl DynamicClientVerifier {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        let current = self.material.current();
        match self.auth {
            ClientAuth::Optional => current.client_optional.clone(),
            _ => current.client_required.clone(),
        }
    }
}

fn refuse(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(message),
    ))))
}

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.auth.offers()
    }

    fn client_auth_mandatory(&self) -> bool {
        matches!(self.auth, ClientAuth::Peers(_))
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA can change under a running config; clients send their only certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner()
            .verify_client_cert(end_entity, intermediates, now)?;
        if let ClientAuth::Peers(names) = &self.auth {
            let info = CertInfo::parse(end_entity).map_err(refuse)?;
            if !names.admits(&info) {
                return Err(refuse(format!(
                    "peer certificate names {} match no member name ({names})",
                    info.names()
                )));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(dns: &[&str], ips: &[&str]) -> CertInfo {
        CertInfo {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            common_name: None,
            not_after: 0,
        }
    }

    #[test]
    fn statefulset_names_admit_members_only() {
        let names = PeerNames::StatefulSet {
            set: "kv".into(),
            suffix: "kv.default.svc.cluster.local".into(),
        };
        assert!(names.admits(&info(&["kv-2.kv.default.svc.cluster.local"], &[])));
        assert!(names.admits(&info(&["*.kv.default.svc.cluster.local"], &[])));
        assert!(!names.admits(&info(&["kv-x.kv.default.svc.cluster.local"], &[])));
        assert!(!names.admits(&info(&["other-0.kv.default.svc.cluster.local"], &[])));
        assert!(!names.admits(&info(&["kv-0.kv.prod.svc.cluster.local"], &[])));
        assert!(!names.admits(&info(&["kv-"], &["10.0.0.1"])));
    }

    #[test]
    fn static_hosts_admit_by_name_or_ip() {
        let names = PeerNames::Hosts(vec!["127.0.0.1".into(), "node-a.example".into()]);
        assert!(names.admits(&info(&[], &["127.0.0.1"])));
        assert!(names.admits(&info(&["*.example"], &[])));
        assert!(!names.admits(&info(&["node-b.other"], &["127.0.0.2"])));
    }
}
