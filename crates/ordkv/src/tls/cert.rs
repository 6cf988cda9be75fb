//! What a certificate says about its holder: names, identity and validity, read with
//! `x509-parser` (rustls verifies chains and signatures; this only describes).

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The parts of an end-entity certificate that ordkv checks or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject Alternative Names of type DNS.
    pub dns_names: Vec<String>,
    /// Subject Alternative Names of type IP address.
    pub ips: Vec<IpAddr>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// Validity end, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertInfo {
    /// Describes a DER certificate.
    pub fn parse(der: &CertificateDer<'_>) -> Result<CertInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut info = CertInfo {
            dns_names: Vec::new(),
            ips: Vec::new(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_string),
            not_after: cert.validity().not_after.timestamp(),
        };
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("bad subjectAltName: {e}"))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        info.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        info.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// The identity access control sees: the common name, else the first DNS name.
    pub fn identity(&self) -> Option<&str> {
        self.common_name
            .as_deref()
            .or(self.dns_names.first().map(String::as_str))
    }

    /// The names, for messages: `[kv-0.kv.default.svc.cluster.local, 127.0.0.1]`.
    pub fn names(&self) -> String {
        let all: Vec<String> = self
            .dns_names
            .iter()
            .cloned()
            .chain(self.ips.iter().map(IpAddr::to_string))
            .collect();
        format!("[{}]", all.join(", "))
    }
}

/// Whether `pattern` (a SAN, possibly `*.suffix`) covers `host`. A wildcard covers exactly
/// one leftmost label, as in RFC 6125.
pub(crate) fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("kv-0.kv.ns.svc", "KV-0.kv.ns.svc"));
        assert!(name_matches("*.kv.ns.svc", "kv-0.kv.ns.svc"));
        assert!(!name_matches("*.kv.ns.svc", "a.kv-0.kv.ns.svc"));
        assert!(!name_matches("*.kv.ns.svc", "kv.ns.svc"));
        assert!(!name_matches("kv-0.kv.ns.svc", "kv-1.kv.ns.svc"));
    }
}
