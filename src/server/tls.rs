//! TLS on the proxy listener: rustls with TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, optional
//! required client certificates, and certificate reload that keeps open connections (whose
//! client certificates are checked again, before each request, against the client CAs in
//! force and the clock).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::identity::{ChainConstraints, ClientCert};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {reason}")]
    File { file: PathBuf, reason: String },
    /// The private key's file, shown only when something is there: a PEM key pasted where its
    /// path belongs would otherwise be printed whole.
    #[error("{}: {reason}", crate::files::shown_secret_path(file))]
    KeyFile { file: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::File {
        file: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Whether a `client_ca` certificate may issue certificates: basicConstraints with cA set, and
/// keyCertSign among its key usages when it lists any. webpki takes any certificate as a trust
/// anchor (it reads only the subject, key and name constraints), so a client's own certificate
/// "pinned" here would let its holder sign a certificate with another caller's SAN or CN.
fn issuing_ca(cert: &CertificateDer<'_>) -> Result<(), &'static str> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| "it does not parse as X.509")?;
    match parsed.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(Some(_)) => return Err("its basicConstraints say cA is false"),
        Ok(None) => return Err("it has no basicConstraints extension"),
        Err(_) => return Err("its basicConstraints extension is malformed or repeated"),
    }
    match parsed.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            Err("its key usage does not include keyCertSign")
        }
        Ok(_) => Ok(()),
        Err(_) => Err("its key usage extension is malformed or repeated"),
    }
}

/// A certificate's subject as messages show it (a CA's name, never secret).
fn subject_of(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "unparsable".into())
}

/// What new handshakes use: the server configuration and, with `client_ca`, the verifier in it
/// (kept to check open connections' certificates again after a reload or an expiry).
pub struct Loaded {
    config: Arc<ServerConfig>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The raw subjects of the `client_ca` CAs that carry name constraints, each with what
    /// its constraints bind of the names it issues.
    constrained_anchors: Vec<(Vec<u8>, ChainConstraints)>,
    /// The raw subject and notAfter of each `client_ca` CA.
    anchors_not_after: Vec<(Vec<u8>, SystemTime)>,
    /// The served chain's earliest notAfter (None: a date that does not parse).
    serving_not_after: Option<SystemTime>,
    /// Each `client_ca` CA's subject as messages show it and its validity period.
    ca_periods: Vec<(String, SystemTime, SystemTime)>,
}

/// When the loaded certificates stop being valid, for `/metrics`: an expiry an SRE can alert
/// on before clients fail their handshakes (the serving certificate) or every certificate a CA
/// issued is refused (`client_ca`).
pub struct Expiries {
    pub serving: Option<SystemTime>,
    /// The earliest notAfter among the `client_ca` CAs.
    pub client_ca: Option<SystemTime>,
}

impl Loaded {
    /// Until when `chain` may be taken as verified without verifying it again: the earliest
    /// notAfter of the certificates it presented and of the `client_ca` CAs that may have
    /// issued one of them (None: unknown, so verified again for every request).
    fn verified_until(&self, chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
        let presented = earliest_not_after(chain)?;
        let issuers: Vec<Vec<u8>> = chain
            .iter()
            .filter_map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
                Some(cert.issuer().as_raw().to_vec())
            })
            .collect();
        Some(
            self.anchors_not_after
                .iter()
                .filter(|(subject, _)| issuers.contains(subject))
                .map(|(_, t)| *t)
                .fold(presented, SystemTime::min),
        )
    }
}

/// A certificate's validity period.
fn validity(cert: &x509_parser::certificate::X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let at = |t: i64| match u64::try_from(t) {
        Ok(secs) => UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .unwrap_or(UNIX_EPOCH),
        Err(_) => UNIX_EPOCH,
    };
    (
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    )
}

/// One `client_ca` CA with a verifier of its own, and its validity period.
#[derive(Debug)]
struct DatedAnchor {
    verifier: Arc<dyn ClientCertVerifier>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The `client_ca` CAs, each trusted only within its own validity period. webpki reads a trust
/// anchor's subject, key and name constraints, never its dates: a CA that had expired (or one
/// whose key leaked after it expired, when nobody guards it any more) went on vouching for every
/// certificate it issued, for as long as it stayed in the bundle. So a chain is accepted when
/// it verifies up to a CA that is within its validity now; one that verifies only up to a CA
/// out of its period fails as expired (or not yet valid).
#[derive(Debug)]
struct DatedAnchors {
    anchors: Vec<DatedAnchor>,
    hints: Vec<rustls::DistinguishedName>,
}

impl ClientCertVerifier for DatedAnchors {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let at = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let unix = |t: SystemTime| {
            UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
        };
        let mut out_of_period = None;
        let mut failed = None;
        for anchor in &self.anchors {
            match anchor
                .verifier
                .verify_client_cert(end_entity, intermediates, now)
            {
                Ok(verified) if anchor.not_before <= at && at <= anchor.not_after => {
                    return Ok(verified)
                }
                Ok(_) if at > anchor.not_after => {
                    out_of_period.get_or_insert(CertificateError::ExpiredContext {
                        time: now,
                        not_after: unix(anchor.not_after),
                    });
                }
                Ok(_) => {
                    out_of_period.get_or_insert(CertificateError::NotValidYetContext {
                        time: now,
                        not_before: unix(anchor.not_before),
                    });
                }
                // The reason of a CA that issued the chain (expired, wrong usage, ...) says
                // more than another CA's "unknown issuer".
                Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        Err(match (out_of_period, failed) {
            (Some(why), _) => Error::InvalidCertificate(why),
            (None, Some(e)) => e,
            (None, None) => Error::InvalidCertificate(CertificateError::UnknownIssuer),
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.first()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.first()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.first()
            .map(|v| v.supported_verify_schemes())
            .unwrap_or_default()
    }
}

impl DatedAnchors {
    /// The handshake signature checks depend on the client's key only, not on its CA.
    fn first(&self) -> Result<&Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.anchors
            .first()
            .map(|a| &a.verifier)
            .ok_or_else(|| rustls::Error::General("no CA in client_ca".into()))
    }
}

/// What the name constraints of the CAs that may be on the path of `chain` (as presented, end
/// entity first) bind of its end entity's names: its intermediates' constraints, and those of a
/// `client_ca` CA that issued one of its certificates; the most a CA left unbound counts. A
/// certificate that does not parse binds nothing: its names are then not trusted, never the
/// reverse.
fn names_constrained(
    chain: &[CertificateDer<'_>],
    constrained_anchors: &[(Vec<u8>, ChainConstraints)],
) -> ChainConstraints {
    let mut bound = ChainConstraints::None;
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return ChainConstraints::NothingBound;
        };
        let issued_by = constrained_anchors
            .iter()
            .filter(|(subject, _)| subject.as_slice() == cert.issuer().as_raw())
            .map(|(_, binds)| *binds);
        // The end entity's own constraints bind nothing it issues (it issues nothing).
        let own = (i > 0).then(|| constraints_of(&cert)).flatten();
        for binds in issued_by.chain(own) {
            bound = bound.max(binds);
        }
    }
    bound
}

/// What a CA's name constraints bind of the names it issues (None: it has none). webpki holds
/// a DNS SAN to them only when they list DNS subtrees (permitted or excluded), a URI SAN never
/// (it refuses every URI under a URI subtree), and the CN never.
fn constraints_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<ChainConstraints> {
    use x509_parser::extensions::GeneralName;
    let constraints = match cert.name_constraints() {
        Ok(None) => return None,
        Ok(Some(ext)) => ext.value,
        Err(_) => return Some(ChainConstraints::NothingBound),
    };
    let subtrees = [
        &constraints.permitted_subtrees,
        &constraints.excluded_subtrees,
    ];
    let lists_dns = subtrees
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| matches!(t.base, GeneralName::DNSName(_)));
    Some(match lists_dns {
        true => ChainConstraints::DnsBound,
        false => ChainConstraints::NothingBound,
    })
}

/// A verified chain's names as a request may use them under `loaded`.
fn names_under(chain: &[CertificateDer<'_>], loaded: &Loaded) -> Option<Arc<ClientCert>> {
    Some(Arc::new(ClientCert {
        constraints: names_constrained(chain, &loaded.constrained_anchors),
        ..ClientCert::from_der(chain.first()?.as_ref())
    }))
}

/// Builds a server configuration from PEM files: a certificate chain, its key (PKCS#8, PKCS#1
/// or SEC1) and, for mTLS, the CA bundle client certificates must chain to.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Loaded, TlsError> {
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::KeyFile {
        file: key.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Parse the key on its own first, so a bad key is blamed on the key file.
    provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| TlsError::KeyFile {
            file: key.to_path_buf(),
            reason: format!("the private key cannot be used: {e}"),
        })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client_verifier = None;
    let mut constrained_anchors = Vec::new();
    let mut anchors_not_after = Vec::new();
    let mut ca_periods = Vec::new();
    let serving_not_after = earliest_not_after(&chain);
    let builder = match client_ca {
        Some(ca) => {
            let mut anchors = Vec::new();
            let mut hints = Vec::new();
            for (i, c) in certs(ca)?.into_iter().enumerate() {
                issuing_ca(&c).map_err(|why| TlsError::File {
                    file: ca.to_path_buf(),
                    reason: format!(
                        "certificate {} ({}) is not a CA certificate: {why}. A trust anchor \
                         need not be a CA to rustls, so whoever holds the key of a client \
                         certificate listed here could issue certificates naming any caller; \
                         list the CAs that issue client certificates, not the certificates \
                         themselves",
                        i + 1,
                        subject_of(&c)
                    ),
                })?;
                // issuing_ca parsed it.
                let (_, parsed) = x509_parser::parse_x509_certificate(c.as_ref()).map_err(|e| {
                    TlsError::File {
                        file: ca.to_path_buf(),
                        reason: format!("not a usable CA certificate: {e}"),
                    }
                })?;
                let subject = parsed.subject().as_raw().to_vec();
                if let Some(binds) = constraints_of(&parsed) {
                    constrained_anchors.push((subject.clone(), binds));
                }
                let (not_before, not_after) = validity(&parsed);
                anchors_not_after.push((subject, not_after));
                ca_periods.push((parsed.subject().to_string(), not_before, not_after));
                let mut roots = rustls::RootCertStore::empty();
                roots.add(c.clone()).map_err(|e| TlsError::File {
                    file: ca.to_path_buf(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                hints.extend_from_slice(verifier.root_hint_subjects());
                anchors.push(DatedAnchor {
                    verifier,
                    not_before,
                    not_after,
                });
            }
            let verifier: Arc<dyn ClientCertVerifier> = Arc::new(DatedAnchors { anchors, hints });
            client_verifier = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::File {
            file: cert.to_path_buf(),
            reason: format!("certificate and key do not form a usable pair: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if client_ca.is_some() {
        // A resumed session is not verified again: its client certificate is the one stored
        // with the session, so a certificate that has expired since would go on naming its
        // caller on every new connection until the session aged out. Client certificates
        // are checked on every connection instead, at the cost of a full handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Loaded {
        config: Arc::new(config),
        verifier: client_verifier,
        constrained_anchors,
        anchors_not_after,
        serving_not_after,
        ca_periods,
    })
}

/// A connection's client certificate: its names, the chain it presented, and the TLS state it
/// was last verified under. A connection lives on for as long as its client keeps sending
/// within idle_timeout_ms, and its handshake verified the chain once: without a check before
/// each request, a certificate that expired since, or whose CA a reload removed from
/// `client_ca` (the way to revoke a CA), went on naming its caller on that connection.
pub struct PeerCert {
    chain: Vec<CertificateDer<'static>>,
    verified: Mutex<Verified>,
}

/// The TLS state a connection's certificate was last verified under, and what that made of it:
/// kept together, so that the names a request uses are always read under the `client_ca` the
/// certificate was verified against (whose CAs' name constraints decide whether its CN counts).
struct Verified {
    under: Arc<Loaded>,
    /// Until when that holds: the earliest notAfter of the chain it presented (None: unknown,
    /// so verified again for every request).
    until: Option<SystemTime>,
    /// Its names; `unreadable` says why when rustls verified it but its names do not parse
    /// (it then names no caller).
    names: Arc<ClientCert>,
}

/// The earliest notAfter among certificates (those of the path verified are among them).
fn earliest_not_after(chain: &[CertificateDer<'_>]) -> Option<SystemTime> {
    chain
        .iter()
        .map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
            UNIX_EPOCH.checked_add(Duration::from_secs(secs))
        })
        .try_fold(None::<SystemTime>, |earliest, t| {
            let t = t?;
            Some(Some(earliest.map_or(t, |e| e.min(t))))
        })
        .flatten()
}

/// The TLS state a handshake used, to tie the certificate it verified to it.
pub struct Accepting {
    loaded: Arc<Loaded>,
}

impl Accepting {
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.loaded.config.clone())
    }

    /// The client certificate of a finished handshake (the chain rustls verified), if any.
    pub fn peer(self, conn: &rustls::ServerConnection, now: SystemTime) -> Option<Arc<PeerCert>> {
        let chain: Vec<CertificateDer<'static>> = conn
            .peer_certificates()?
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        // Kept even when its names do not parse: with identity.mode = "sigv4" it is still the
        // certificate the connection holds, and must still be checked before each request.
        let names = names_under(&chain, &self.loaded)?;
        let until = self
            .loaded
            .verified_until(&chain)
            .filter(|until| now <= *until);
        Some(Arc::new(PeerCert {
            chain,
            verified: Mutex::new(Verified {
                under: self.loaded,
                until,
                names,
            }),
        }))
    }
}

/// The listener's TLS state: the configuration new handshakes use, swapped on reload.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: ArcSwap<Loaded>,
    /// Why the last reload failed, while the previous certificate stays in use.
    pub last_error: Mutex<Option<String>>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Tls, TlsError> {
        let config = Arc::new(server_config(cert, key, client_ca)?);
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            current: ArcSwap::new(config),
            last_error: Mutex::new(None),
        })
    }

    pub fn expiries(&self) -> Expiries {
        let loaded = self.current.load();
        Expiries {
            serving: loaded.serving_not_after,
            client_ca: loaded.ca_periods.iter().map(|(_, _, end)| *end).min(),
        }
    }

    /// What the loaded certificates cannot do at `now`, for the log at start and reload. Such
    /// a set still loads (a CA out of its period refuses what it issued, which is closed), but
    /// the operator should hear that it refuses every client, or serves an expired certificate.
    pub fn cautions(&self, now: SystemTime) -> Vec<String> {
        let loaded = self.current.load();
        let mut cautions = Vec::new();
        if loaded.serving_not_after.is_some_and(|end| end < now) {
            cautions.push(format!(
                "the serving certificate {} has expired: clients refuse the handshake",
                self.cert.display()
            ));
        }
        let Some(ca) = &self.client_ca else {
            return cautions;
        };
        let out: Vec<&str> = loaded
            .ca_periods
            .iter()
            .filter(|(_, start, end)| now < *start || *end < now)
            .map(|(subject, _, _)| subject.as_str())
            .collect();
        if !out.is_empty() && out.len() == loaded.ca_periods.len() {
            cautions.push(format!(
                "no CA in client_ca {} is valid now (expired or not yet valid: {}): every client \
                 certificate is refused",
                ca.display(),
                out.join("; ")
            ));
        } else if !out.is_empty() {
            cautions.push(format!(
                "client_ca {} holds CAs that are expired or not yet valid, whose client \
                 certificates are refused: {}",
                ca.display(),
                out.join("; ")
            ));
        }
        cautions
    }

    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.clone());
        files
    }

    /// The state a new connection's handshake uses.
    pub fn accepting(&self) -> Accepting {
        Accepting {
            loaded: self.current.load_full(),
        }
    }

    /// A connection's client certificate as the next request on it may use it: as verified in
    /// its handshake while the TLS state is the same and no certificate of its chain has
    /// expired since; otherwise verified again, against the client CAs in force now. One that
    /// no longer verifies comes back with `lapsed` saying why, and names no caller.
    pub fn recheck(&self, peer: &PeerCert, now: SystemTime) -> Arc<ClientCert> {
        let current = self.current.load_full();
        let mut verified = peer.verified.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&verified.under, &current) && verified.until.is_some_and(|u| now <= u) {
            return verified.names.clone();
        }
        // Without client_ca (never so after a reload: it is not reloadable) there is nothing
        // a certificate is checked against.
        let Some(verifier) = &current.verifier else {
            return verified.names.clone();
        };
        let checked = match peer.chain.split_first() {
            Some((end_entity, intermediates)) => {
                let at =
                    UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
                verifier
                    .verify_client_cert(end_entity, intermediates, at)
                    .map_err(|e| e.to_string())
            }
            None => Err("the connection has no certificate chain".to_string()),
        };
        match checked {
            Ok(_) => {
                let until = current
                    .verified_until(&peer.chain)
                    .filter(|until| now <= *until);
                // Verified, so it has an end entity: names_under finds one.
                let names =
                    names_under(&peer.chain, &current).unwrap_or_else(|| verified.names.clone());
                *verified = Verified {
                    under: current,
                    until,
                    names: names.clone(),
                };
                names
            }
            Err(why) => Arc::new(ClientCert {
                lapsed: Some(why),
                ..ClientCert::clone(&verified.names)
            }),
        }
    }

    /// Re-reads the files. Open connections keep the configuration they started with.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = server_config(&self.cert, &self.key, self.client_ca.as_deref());
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                *last = None;
                Ok(())
            }
            Err(e) => {
                *last = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// A short, bounded label for why a handshake failed (for metrics; the log has the detail).
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "invalid_certificate",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible_peer",
        Some(rustls::Error::InvalidMessage(_)) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(_) => "tls_error",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "closed_early",
        None => "io_error",
    }
}
