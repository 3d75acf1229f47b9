//! TLS on rustls with the checks of libpq's `sslmode` (feature `rustls`): [`RustlsConnect`],
//! [`Verify`], [`TlsError`]. The module is private and its types are re-exported at the crate
//! root, so the guide (an example, what is checked, the crypto provider, channel binding) is
//! on [`RustlsConnect`], where rustdoc shows it.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

pub use rustls;

/// How much of the server's certificate is checked: libpq's `sslmode` values that encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verify {
    /// Encrypted, the certificate not checked at all (libpq's `require` without a root
    /// certificate): safe against eavesdroppers, not against an impostor in the middle.
    None,
    /// The certificate chains to one of the roots; the host name is not checked (libpq's
    /// `verify-ca`).
    Ca,
    /// The certificate chains to one of the roots and is valid for the host connected to,
    /// a name or an IP address (libpq's `verify-full`).
    Full,
}

impl fmt::Display for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verify::None => "sslmode=require, no certificate check",
            Verify::Ca => "sslmode=verify-ca",
            Verify::Full => "sslmode=verify-full",
        })
    }
}

/// Makes TLS connections with [rustls] for a [`Manager`](crate::Manager):
/// `Manager::with_tls(config, connector)`, checking the server's certificate as libpq's
/// `sslmode` does. Cheap to clone (the rustls configuration is shared).
///
/// ```no_run
/// use std::path::Path;
///
/// use gracepool_postgres::{Manager, Pool, RustlsConnect, Verify};
/// use gracepool_tokio::TokioRuntime;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     // libpq's `sslmode=verify-full sslrootcert=/etc/app/root.crt`.
///     let tls = RustlsConnect::from_root_cert_file(Verify::Full, Path::new("/etc/app/root.crt"))?;
///     // `sslmode=require`: without it a server that declines TLS gets a plaintext connection.
///     let config = "host=db.example.com user=app dbname=app sslmode=require".parse()?;
///     let pool: Pool<RustlsConnect> = Pool::builder(Manager::with_tls(config, tls))
///         .runtime(TokioRuntime::current())
///         .build()?;
///
///     let conn = pool.get().await?;
///     let row = conn
///         .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
///         .await?;
///     assert!(row.get::<_, bool>(0));
///     drop(conn);
///     pool.close().await;
///     Ok(())
/// }
/// ```
///
/// # What is checked
///
/// [`Verify`] is libpq's `sslmode` from `require` up: [`Verify::None`] encrypts and checks
/// nothing, [`Verify::Ca`] checks that the server's certificate chains to one of the given
/// roots, [`Verify::Full`] also that it is valid for the host connected to (a name, or an IP
/// address such as `127.0.0.1`). The connector only ever does TLS: whether TLS is *required* is
/// the [`Config`](tokio_postgres::Config)'s `sslmode`. tokio-postgres' default, `prefer`, falls
/// back to plaintext when the server declines TLS, whatever the connector; set
/// `sslmode=require` ([`SslMode::Require`](tokio_postgres::config::SslMode::Require)) for every
/// [`Verify`], as libpq's `verify-ca` and `verify-full` imply it.
///
/// libpq's `require` turns into `verify-ca` when a root certificate file is present; here the
/// [`Verify`] given is the one that holds.
///
/// A failed check fails the connection's creation: tokio-postgres' "error performing TLS
/// handshake", whose source is a [`TlsError::Handshake`] that says what was wrong with the
/// certificate and what to do ([`TlsError::certificate_error`] tells it to code), and whose
/// source in turn is rustls' own error.
///
/// # Crypto provider: ring
///
/// The connector uses rustls' *ring* provider, set on each connector (never the process-wide
/// default, so it works whatever other crates install or enable). ring builds quickly with a C
/// compiler alone; aws-lc-rs, rustls' default, is a much larger C and C++ build, which needs
/// cmake beyond the common targets. What ring lacks is post-quantum key exchange
/// (X25519MLKEM768), which is why rustls 0.23.48 deprecates it (0.24 moves it to the
/// `rustls-ring` crate); PostgreSQL servers offer that exchange only when built with OpenSSL
/// 3.5 or later. The protocol versions (TLS 1.2 and 1.3) and the certificate checks are the
/// same with both.
///
/// # Channel binding
///
/// The TLS stream offers `tls-server-end-point` channel binding (RFC 5929): the hash of the
/// server's certificate, with the hash of its signature algorithm (SHA-256 for MD5 and SHA-1
/// signatures), as PostgreSQL computes it. With SCRAM authentication over TLS the client then
/// proves that the server it authenticated to is the one at the end of the TLS session
/// (`channel_binding=require` insists on it). A certificate signed with an algorithm that
/// names no hash (Ed25519, RSA-PSS) offers none, as PostgreSQL cannot compute one for it
/// either: SCRAM then goes without binding, and `channel_binding=require` fails.
///
/// # Not here
///
/// Client certificates (`sslcert`/`sslkey`) and revocation lists (`sslcrl`) are not
/// supported. For the system's root store (libpq's `sslrootcert=system`), build a
/// [`rustls::RootCertStore`] with `rustls-native-certs` (or Mozilla's, with `webpki-roots`)
/// and pass it to [`RustlsConnect::new`].
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    verify: Verify,
}

impl RustlsConnect {
    /// A connector checking the server's certificate as `verify` says, against `roots`
    /// (ignored by [`Verify::None`]).
    ///
    /// With [`Verify::Ca`] or [`Verify::Full`] and no roots, every handshake fails with
    /// "unknown issuer".
    pub fn new(verify: Verify, roots: RootCertStore) -> Self {
        // rustls 0.23.48 deprecates its ring provider for lacking post-quantum key exchange
        // (rustls 0.24 moves it to the `rustls-ring` crate); see the module docs for why it is
        // still the choice here.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Verifier {
            verify,
            roots: Arc::new(roots),
            provider: provider.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring's provider supports rustls' default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // What libpq 17 offers: PostgreSQL 17's direct TLS negotiation requires it, older
        // servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        RustlsConnect {
            config: Arc::new(config),
            verify,
        }
    }

    /// A connector checking as `verify` says, against the certificates of the PEM file at
    /// `path` (libpq's `sslrootcert`): every `CERTIFICATE` section in it is a root.
    ///
    /// Fails when the file cannot be read, holds no certificate, holds a malformed PEM
    /// section, or a certificate rustls cannot use as a root.
    pub fn from_root_cert_file(verify: Verify, path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadRootCerts {
            path: path.to_path_buf(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|source| TlsError::BadPem {
                path: path.to_path_buf(),
                source,
            })?;
            roots.add(cert).map_err(|source| TlsError::BadRootCert {
                path: path.to_path_buf(),
                index: roots.len(),
                source,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoRootCert {
                path: path.to_path_buf(),
            });
        }
        Ok(RustlsConnect::new(verify, roots))
    }

    /// What this connector checks.
    pub fn verify(&self) -> Verify {
        self.verify
    }
}

impl fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsConnect")
            .field("verify", &self.verify)
            .finish_non_exhaustive()
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsTlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsTlsConnect, TlsError> {
        // Never fails here: tokio-postgres asks for a connector before it knows whether TLS
        // will be used at all (a Unix socket passes an empty host and never does TLS). A host
        // that cannot be checked fails the handshake instead.
        Ok(RustlsTlsConnect {
            config: self.config.clone(),
            verify: self.verify,
            host: host.to_owned(),
        })
    }
}

/// One connection's TLS handshake, made by [`RustlsConnect`] for the host connected to.
pub struct RustlsTlsConnect {
    config: Arc<ClientConfig>,
    verify: Verify,
    host: String,
}

impl fmt::Debug for RustlsTlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsTlsConnect")
            .field("verify", &self.verify)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl TlsConnect<Socket> for RustlsTlsConnect {
    type Stream = RustlsStream;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, TlsError>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let RustlsTlsConnect {
                config,
                verify,
                host,
            } = self;
            let name = match ServerName::try_from(host.as_str()) {
                Ok(name) => name.to_owned(),
                Err(_) if verify == Verify::Full => {
                    return Err(TlsError::InvalidHostName { host });
                }
                // Nothing checks the name: an IP address makes rustls send no SNI.
                Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
            };
            tokio_rustls::TlsConnector::from(config)
                .connect(name, socket)
                .await
                .map(|stream| RustlsStream(Box::new(stream)))
                .map_err(|source| TlsError::Handshake {
                    host,
                    verify,
                    source,
                })
        })
    }
}

/// A TLS session to the server, as tokio-postgres reads and writes it; offers
/// `tls-server-end-point` channel binding.
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl fmt::Debug for RustlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustlsStream").finish_non_exhaustive()
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session.peer_certificates().and_then(|certs| certs.first()) {
            Some(cert) => end_point_hash(cert)
                .map(ChannelBinding::tls_server_end_point)
                .unwrap_or_else(ChannelBinding::none),
            None => ChannelBinding::none(),
        }
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// What went wrong setting up or doing TLS.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The root certificate file could not be read.
    ReadRootCerts {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: io::Error,
    },
    /// The root certificate file has a malformed PEM section.
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// The root certificate file holds no `CERTIFICATE` PEM section.
    NoRootCert {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the root certificate file cannot be used as a root.
    BadRootCert {
        /// The file.
        path: PathBuf,
        /// Which certificate, counting from 0.
        index: usize,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// [`Verify::Full`] was asked for a host that is neither a DNS name nor an IP address, so
    /// no certificate can be checked against it.
    InvalidHostName {
        /// The host, as tokio-postgres gave it.
        host: String,
    },
    /// The TLS handshake failed: the server's certificate did not pass the check, or the
    /// connection failed during the handshake.
    Handshake {
        /// The host connected to.
        host: String,
        /// The check that was made.
        verify: Verify,
        /// The failure; rustls' own error is its inner error (`get_ref`).
        source: io::Error,
    },
}

impl TlsError {
    /// The certificate problem behind a failed handshake, if that is what failed it.
    pub fn certificate_error(&self) -> Option<&CertificateError> {
        match self {
            TlsError::Handshake { source, .. } => match source.get_ref()?.downcast_ref() {
                Some(rustls::Error::InvalidCertificate(e)) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::ReadRootCerts { path, .. } => write!(
                f,
                "cannot read the root certificate file {} (sslrootcert): give the path of a \
                 readable PEM file holding the CA certificate that signed the server's",
                path.display()
            ),
            TlsError::BadPem { path, .. } => write!(
                f,
                "the root certificate file {} is not valid PEM: it must hold \
                 -----BEGIN CERTIFICATE----- sections",
                path.display()
            ),
            TlsError::NoRootCert { path } => write!(
                f,
                "the root certificate file {} holds no certificate: it must hold the CA \
                 certificate in PEM (-----BEGIN CERTIFICATE-----), not a key or a DER file",
                path.display()
            ),
            TlsError::BadRootCert { path, index, .. } => write!(
                f,
                "certificate {index} (counting from 0) in the root certificate file {} cannot \
                 be used as a root",
                path.display()
            ),
            TlsError::InvalidHostName { host } => write!(
                f,
                "cannot check the server's certificate against the host {host:?} \
                 (sslmode=verify-full): connect by a DNS name or an IP address, or use verify-ca"
            ),
            TlsError::Handshake { host, verify, .. } => {
                write!(f, "TLS handshake with {host} failed ({verify})")?;
                let Some(e) = self.certificate_error() else {
                    return Ok(());
                };
                let advice = match e {
                    CertificateError::UnknownIssuer => {
                        "the server's certificate is not signed by any of the root \
                         certificates given: give the CA certificate that signed it \
                         (sslrootcert)"
                    }
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => {
                        "the server's certificate is not valid for this host name: connect \
                         by a name (or IP address) the certificate lists, or use verify-ca"
                    }
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. } => {
                        "the server's certificate is outside its validity period: renew it, \
                         or check this machine's clock"
                    }
                    CertificateError::InvalidPurpose
                    | CertificateError::InvalidPurposeContext { .. } => {
                        "the server's certificate is not for TLS servers (its extended key \
                         usage lacks serverAuth)"
                    }
                    _ => "the server's certificate was refused",
                };
                write!(f, ": {advice}")
            }
        }
    }
}

impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            TlsError::ReadRootCerts { source, .. } => Some(source),
            TlsError::BadPem { source, .. } => Some(source),
            TlsError::BadRootCert { source, .. } => Some(source),
            TlsError::Handshake { source, .. } => Some(source),
            TlsError::NoRootCert { .. } | TlsError::InvalidHostName { .. } => None,
        }
    }
}

/// Checks the server's certificate as a [`Verify`] says; the handshake's signatures are always
/// checked (with the provider's algorithms), so the server holds the certificate's key.
#[derive(Debug)]
struct Verifier {
    verify: Verify,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The same steps as rustls' WebPkiServerVerifier (which has no "chain only" mode, and
        // refuses to be built without roots), without revocation lists.
        if self.verify == Verify::None {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.verify == Verify::Full {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data of a server certificate (RFC 5929 4.1):
/// its hash with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None` for an
/// algorithm that names no hash (Ed25519, RSA-PSS) or a certificate that does not parse;
/// PostgreSQL cannot compute a binding for those either.
fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    let algorithm = match signature_algorithm(cert)? {
        MD5_RSA | SHA1_RSA | SHA256_RSA | SHA1_ECDSA | SHA256_ECDSA => &ring::digest::SHA256,
        SHA384_RSA | SHA384_ECDSA => &ring::digest::SHA384,
        SHA512_RSA | SHA512_ECDSA => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(algorithm, cert).as_ref().to_vec())
}

// The DER contents of the signature algorithms' object identifiers.
const MD5_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04]; // 1.2.840.113549.1.1.4
const SHA1_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]; // 1.2.840.113549.1.1.5
const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]; // 1.2.840.113549.1.1.11
const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]; // 1.2.840.113549.1.1.12
const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]; // 1.2.840.113549.1.1.13
const SHA1_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01]; // 1.2.840.10045.4.1
const SHA256_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]; // 1.2.840.10045.4.3.2
const SHA384_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]; // 1.2.840.10045.4.3.3
const SHA512_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]; // 1.2.840.10045.4.3.4

/// The object identifier of a DER certificate's `signatureAlgorithm`: the second field of
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, .. }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (certificate, _) = der_field(cert, SEQUENCE)?;
    let (_tbs, rest) = der_field(certificate, SEQUENCE)?;
    let (algorithm_identifier, _) = der_field(rest, SEQUENCE)?;
    let (oid, _) = der_field(algorithm_identifier, OID)?;
    Some(oid)
}

/// Splits a DER field with tag `tag` off the front of `der`: (its contents, what follows).
fn der_field(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        // Long form: the low bits count the length's bytes (a certificate needs at most 4).
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_signed_with(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).expect("rcgen makes this kind of key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("a valid name");
        params
            .self_signed(&key)
            .expect("a self-signed certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn the_end_point_hash_uses_the_signature_algorithms_hash() {
        let p256 = cert_signed_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(signature_algorithm(&p256), Some(SHA256_ECDSA));
        let hash = end_point_hash(&p256).expect("ECDSA with SHA-256 binds");
        assert_eq!(
            hash,
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );

        let p384 = cert_signed_with(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(signature_algorithm(&p384), Some(SHA384_ECDSA));
        assert_eq!(end_point_hash(&p384).map(|h| h.len()), Some(48));

        // No hash in the algorithm: no binding (PostgreSQL cannot compute one either).
        let ed25519 = cert_signed_with(&rcgen::PKCS_ED25519);
        assert!(signature_algorithm(&ed25519).is_some());
        assert_eq!(end_point_hash(&ed25519), None);
    }

    #[test]
    fn broken_der_has_no_signature_algorithm() {
        let good = cert_signed_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        for cut in [0, 1, 2, 4, 10, good.len() / 2, good.len() - 1] {
            assert_eq!(signature_algorithm(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            signature_algorithm(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(signature_algorithm(&[0x31, 0x00]), None);
    }

    #[test]
    fn root_cert_files_fail_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("gracepool-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        let missing = dir.join("missing.crt");
        let e = RustlsConnect::from_root_cert_file(Verify::Full, &missing).unwrap_err();
        assert!(matches!(e, TlsError::ReadRootCerts { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("cannot read the root certificate file"),
            "{e}"
        );
        assert!(e.source().is_some());

        let key_only = dir.join("key.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key_only, key.serialize_pem()).unwrap();
        let e = RustlsConnect::from_root_cert_file(Verify::Full, &key_only).unwrap_err();
        assert!(matches!(e, TlsError::NoRootCert { .. }), "{e:?}");
        assert!(e.to_string().contains("holds no certificate"), "{e}");

        let broken = dir.join("broken.crt");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n").unwrap();
        let e = RustlsConnect::from_root_cert_file(Verify::Full, &broken).unwrap_err();
        assert!(matches!(e, TlsError::BadPem { .. }), "{e:?}");

        let garbage = dir.join("garbage.crt");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = RustlsConnect::from_root_cert_file(Verify::Full, &garbage).unwrap_err();
        assert!(matches!(e, TlsError::BadRootCert { index: 0, .. }), "{e:?}");

        let good = dir.join("good.crt");
        let cert = rcgen::CertificateParams::new(vec!["ca".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&good, format!("{}{}", cert.pem(), cert.pem())).unwrap();
        let tls = RustlsConnect::from_root_cert_file(Verify::Ca, &good).expect("two roots");
        assert_eq!(tls.verify(), Verify::Ca);

        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_connector_is_what_a_manager_needs() {
        fn manager_ready<T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static>()
        where
            T::Stream: Send + Sync + 'static,
            T::TlsConnect: Send,
            <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
        {
        }
        manager_ready::<RustlsConnect>();
    }
}
