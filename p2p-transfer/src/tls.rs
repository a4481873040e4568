//! Cluster PKI and QUIC/TLS configuration for coordinator peers.
//!
//! Every coordinator node holds a certificate issued by one private cluster CA ([`ClusterCa`]),
//! and peers authenticate each other with mutual TLS: the server accepts only client certificates
//! signed by that CA ([`ClientAuth::Required`]), and the client trusts only that CA for the server
//! ([`client_config`]). [`server_config`] and [`client_config`] turn a [`NodeCert`] into quinn
//! configs.
//!
//! Goals:
//! - One crypto provider, `ring`, passed explicitly to every rustls builder, so no config build
//!   depends on the process-default provider (see raft-anchors §4.3).
//! - Key files are created with mode 0600, and loading refuses a key that group or others can
//!   access, rather than silently using a leaked key.
//!
//! Non-goals:
//! - Per-node identity. Every node certificate carries the DNS SAN [`CLUSTER_SERVER_NAME`] and
//!   clients verify the server against that fixed name, not against the IP they dialled. A valid
//!   certificate therefore proves "member of this cluster", not "node 2"; binding Raft node ids to
//!   certificates would need a custom verifier.
//! - Revocation and rotation. Re-issue with [`issue_node_cert`] and restart the node.
//!
//! Files, all PEM: `ca.pem` (CA certificate), `ca.key` (CA private key, PKCS#8), `node.pem`
//! (node certificate), `node.key` (node private key, PKCS#8).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS server name clients send, and a DNS SAN on every node certificate.
///
/// Nodes are addressed by IP (often loopback), so the name in the handshake cannot be the address
/// a client dialled without re-issuing certificates whenever addresses change. Instead every node
/// certificate carries this name, and [`crate::rpc::RpcClient`] connects with it.
pub const CLUSTER_SERVER_NAME: &str = "tt-node";

/// File name of the CA certificate inside a PKI directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a PKI directory. Written with mode [`KEY_FILE_MODE`].
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of a node certificate inside a node's directory.
pub const NODE_CERT_FILE: &str = "node.pem";
/// File name of a node private key inside a node's directory. Written with mode [`KEY_FILE_MODE`].
pub const NODE_KEY_FILE: &str = "node.key";

/// Unix mode for private key files: owner read/write only.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Unix mode for certificate files, which are public.
const CERT_FILE_MODE: u32 = 0o644;
/// Permission bits that must be clear on a key file before we load it: any group or other access.
const KEY_FILE_FORBIDDEN_MODE_BITS: u32 = 0o077;

/// How long a freshly generated cluster CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a node certificate is valid. Re-issue with [`issue_node_cert`] before it expires.
pub const NODE_CERT_VALIDITY_DAYS: i64 = 825;
/// Certificates start being valid this many days in the past, to tolerate clock skew between
/// the machine that issued them and the machines that verify them.
const CERT_BACKDATE_DAYS: i64 = 1;

/// QUIC keep-alive period. Keeps idle peer connections open and lets a dead peer be noticed
/// within [`IDLE_TIMEOUT`] even when no RPC is in flight.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A connection with no packets from the peer for this long is closed (connection lost).
/// Must be several times [`KEEP_ALIVE_INTERVAL`] so a few lost keep-alives are tolerated.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

const SECONDS_PER_DAY: u64 = 86_400;

/// Errors from generating, issuing, writing and loading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rcgen refused the certificate parameters or failed to generate a key or signature.
    /// A bug or an unsupported key algorithm; not retryable.
    #[error("generating certificate: {0}")]
    Generate(#[source] rcgen::Error),
    /// A SAN given to [`issue_node_cert`] is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {san:?}: {source}")]
    InvalidSan {
        san: String,
        #[source]
        source: rcgen::Error,
    },
    /// Reading, writing or creating a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A private key file is accessible by group or others. Fix the mode and retry.
    #[error(
        "private key {path} is accessible by group or others (mode {mode:03o}); \
         run `chmod 600 {path}`"
    )]
    KeyFileTooOpen { path: PathBuf, mode: u32 },
    /// A file does not hold the expected PEM section (a certificate or a PKCS#8 private key).
    #[error("{path}: not a valid PEM {expected}: {reason}")]
    Pem { path: PathBuf, expected: &'static str, reason: String },
    /// A certificate's DER does not have the X.509 shape we can read.
    #[error("{path}: malformed certificate: {reason}")]
    MalformedCert { path: PathBuf, reason: &'static str },
    /// The private key does not belong to the certificate next to it.
    #[error("private key {key_path} does not match certificate {cert_path}")]
    KeyMismatch { cert_path: PathBuf, key_path: PathBuf },
}

/// Errors from building quinn server or client configs.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls rejected the certificate, key or protocol versions.
    #[error("building rustls config: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built (for example, an unusable CA).
    #[error("building client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The crypto provider lacks the cipher suite QUIC needs for Initial packets.
    #[error("building QUIC crypto config: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// Whether a server demands client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: the client must present a certificate signed by the cluster CA.
    Required,
    /// Any client may connect; only the server authenticates.
    None,
}

/// Installs `ring` as the process-wide rustls crypto provider.
///
/// Idempotent: if a provider is already installed (by us or anyone else), this does nothing.
/// Config builders in this module pass `ring` explicitly and do not need it; call it once in
/// `main` and in test setup for other rustls users in the process.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is the state we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `ring` with TLS 1.3 only and AES-128-GCM-SHA256 preferred: its SHA-256 key schedule and
/// transcript hash run on the CPU's SHA extensions, where ring's default first choice
/// (AES-256-GCM-SHA384) hashes with SHA-512 in software, and AES-128 encrypts with 10 rounds
/// instead of 14. Measured with `tt bench swarm` (BENCHMARKS.md): handshakes and bulk data
/// both cost less CPU. TLS 1.2 suites are dropped: QUIC and our configs allow TLS 1.3 only.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The cluster's private certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer's Debug elides the key.
        f.debug_struct("ClusterCa").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new self-signed CA (ECDSA P-256) named `common_name`, valid for
    /// [`CA_VALIDITY_DAYS`]. It may sign end-entity certificates only (path length 0).
    pub fn generate(common_name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params = ca_params(distinguished_name(common_name));
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        Ok(ClusterCa {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating `dir` if needed.
    /// Existing files are replaced atomically.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        self.write_cert(dir)?;
        write_file(&dir.join(CA_KEY_FILE), self.issuer.key().serialize_pem().as_bytes(), true)
    }

    /// Writes only `ca.pem` into `dir`: what a node needs to verify its peers.
    pub fn write_cert(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        write_file(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), false)
    }

    /// Loads a CA written by [`ClusterCa::write`] from `dir`.
    ///
    /// Refuses a `ca.key` accessible by group or others, and a key that does not match the
    /// certificate.
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = read_file_text(&cert_path, false)?;
        let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
        let key = parse_key_pair(&key_path, &read_file_text(&key_path, true)?)?;

        let fields = der::cert_fields(&cert_der)
            .ok_or(TlsError::MalformedCert { path: cert_path.clone(), reason: "bad X.509 DER" })?;
        if fields.spki != key.subject_public_key_info().as_slice() {
            return Err(TlsError::KeyMismatch { cert_path, key_path });
        }
        let name = der::parse_name(fields.subject).ok_or(TlsError::MalformedCert {
            path: cert_path.clone(),
            reason: "subject name has attributes we cannot re-encode",
        })?;
        let params = ca_params(name);

        // Issued certificates chain to the CA only if their issuer name is byte-identical to the
        // CA's subject. Re-encode the parsed name and compare, so a mismatch fails here rather
        // than as an unknown-issuer handshake error on some later connection.
        let probe = params.self_signed(&key).map_err(TlsError::Generate)?;
        let probe_fields = der::cert_fields(probe.der()).ok_or(TlsError::MalformedCert {
            path: cert_path.clone(),
            reason: "re-encoded certificate unreadable",
        })?;
        if probe_fields.subject != fields.subject {
            return Err(TlsError::MalformedCert {
                path: cert_path,
                reason: "subject name does not re-encode to the same bytes",
            });
        }

        Ok(ClusterCa { cert_der, cert_pem, issuer: Issuer::new(params, key) })
    }

    /// Loads only the CA certificate (`ca.pem`) from `dir`, for nodes that verify peers but do
    /// not issue certificates.
    pub fn load_cert(dir: &Path) -> Result<CertificateDer<'static>, TlsError> {
        let path = dir.join(CA_CERT_FILE);
        let pem = read_file_text(&path, false)?;
        parse_cert_pem(&path, &pem)
    }

    /// The CA certificate, DER-encoded: the only trust anchor for cluster peers.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }
}

/// A node's certificate (signed by the cluster CA) and its private key.
pub struct NodeCert {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: PrivatePkcs8KeyDer<'static>,
    key_pem: String,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert").field("key", &"[elided]").finish_non_exhaustive()
    }
}

impl NodeCert {
    /// Writes `node.pem` and `node.key` (mode 0600) into `dir`, creating `dir` if needed.
    /// Existing files are replaced atomically.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        write_file(&dir.join(NODE_CERT_FILE), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join(NODE_KEY_FILE), self.key_pem.as_bytes(), true)
    }

    /// Loads `node.pem` and `node.key` from `dir`.
    ///
    /// Refuses a `node.key` accessible by group or others ([`TlsError::KeyFileTooOpen`]), and a
    /// key that does not match the certificate.
    pub fn load(dir: &Path) -> Result<NodeCert, TlsError> {
        let cert_path = dir.join(NODE_CERT_FILE);
        let key_path = dir.join(NODE_KEY_FILE);
        let cert_pem = read_file_text(&cert_path, false)?;
        let cert_der = parse_cert_pem(&cert_path, &cert_pem)?;
        let key_pem = read_file_text(&key_path, true)?;
        let key_pair = parse_key_pair(&key_path, &key_pem)?;

        let fields = der::cert_fields(&cert_der)
            .ok_or(TlsError::MalformedCert { path: cert_path.clone(), reason: "bad X.509 DER" })?;
        if fields.spki != key_pair.subject_public_key_info().as_slice() {
            return Err(TlsError::KeyMismatch { cert_path, key_path });
        }
        let key_der = PrivatePkcs8KeyDer::from(key_pair.serialize_der());
        Ok(NodeCert { cert_der, cert_pem, key_der, key_pem })
    }

    /// The node certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The node certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A copy of the node's private key, for handing to rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// This node's QUIC stateless-reset key (see [`StableResetKey`]), derived from its private
    /// key: the same in every incarnation of the node, secret to it.
    pub fn reset_key(&self) -> StableResetKey {
        StableResetKey::derive(self.key_der.secret_pkcs8_der())
    }
}

/// A QUIC stateless-reset key that survives restarts (RFC 9000 §10.3: derived from a static
/// secret). Peers holding connections to a crashed node's previous incarnation keep sending
/// on them; a restarted node whose key is random cannot prove those connections are gone, so
/// the peers wait out [`IDLE_TIMEOUT`] (a Raft leader sends a restarted follower nothing
/// meanwhile). With this key the new incarnation answers their packets with a valid reset,
/// they drop the connection at once, and the next call reconnects.
pub struct StableResetKey([u8; 32]);

impl StableResetKey {
    /// Derives the key from `secret` (e.g. the node's private key).
    pub fn derive(secret: &[u8]) -> StableResetKey {
        StableResetKey(blake3::derive_key("tt QUIC stateless reset key v1", secret))
    }

    /// An endpoint config that resets with this key. Its connection ids are random and any
    /// id is taken as possibly ours: quinn's default generator tags ids with a per-process
    /// key and drops packets whose ids a new incarnation cannot recognise, without a reset.
    pub fn endpoint_config(self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(self));
        config.cid_generator(|| Box::new(RandomCids));
        config
    }
}

/// Length of the connection ids [`RandomCids`] issues, in bytes.
const CID_BYTES: usize = 8;

/// Random connection ids that every incarnation accepts as possibly its own.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; CID_BYTES]>())
    }

    fn cid_len(&self) -> usize {
        CID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

impl quinn::crypto::HmacKey for StableResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(blake3::OUT_LEN);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let expected = blake3::keyed_hash(&self.0, data);
        // `blake3::Hash` compares in constant time.
        match <[u8; blake3::OUT_LEN]>::try_from(signature) {
            Ok(sig) if blake3::Hash::from(sig) == expected => Ok(()),
            _ => Err(quinn::crypto::CryptoError),
        }
    }
}

/// Issues a certificate for `node_name` (its subject common name) signed by `ca`.
///
/// `sans` are IP addresses and DNS names the node is reachable at; each string that parses as
/// an IP address becomes an IP SAN, anything else a DNS SAN. [`CLUSTER_SERVER_NAME`] is always
/// added as a DNS SAN. The certificate is valid for both server and client authentication, since
/// every node is both, and for [`NODE_CERT_VALIDITY_DAYS`].
pub fn issue_node_cert(
    ca: &ClusterCa,
    node_name: &str,
    sans: &[String],
) -> Result<NodeCert, TlsError> {
    let mut subject_alt_names = Vec::with_capacity(sans.len() + 1);
    for san in sans.iter().map(String::as_str).chain([CLUSTER_SERVER_NAME]) {
        let san_type = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                san.to_owned()
                    .try_into()
                    .map_err(|source| TlsError::InvalidSan { san: san.to_owned(), source })?,
            ),
        };
        if !subject_alt_names.contains(&san_type) {
            subject_alt_names.push(san_type);
        }
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(node_name);
    params.subject_alt_names = subject_alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, NODE_CERT_VALIDITY_DAYS);

    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params.signed_by(&key, &ca.issuer).map_err(TlsError::Generate)?;
    Ok(NodeCert {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        key_pem: key.serialize_pem(),
    })
}

/// The QUIC transport settings shared by every peer connection: keep-alive every
/// [`KEEP_ALIVE_INTERVAL`], connection lost after [`IDLE_TIMEOUT`] of silence.
/// Stream limits are left at quinn's defaults; protocols set their own (see
/// [`crate::rpc::RpcServer::bind`]).
pub fn transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("IDLE_TIMEOUT fits a QUIC varint"),
    ));
    transport
}

/// A quinn server config presenting `node`'s certificate and offering `alpn` protocols.
///
/// With [`ClientAuth::Required`], clients must present a certificate that chains to `ca_cert`
/// and nothing else; the handshake fails otherwise and no stream is ever accepted.
pub fn server_config(
    node: &NodeCert,
    ca_cert: &CertificateDer<'_>,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<quinn::ServerConfig, TlsConfigError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_auth {
        ClientAuth::Required => builder.with_client_cert_verifier(client_verifier(ca_cert)?),
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(vec![node.cert_der.clone()], node.key_der())?;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// A quinn client config that trusts only `ca_cert` and offers `alpn` protocols.
///
/// With `Some(node)`, the client presents `node`'s certificate (required by servers built with
/// [`ClientAuth::Required`]). Connect with server name [`CLUSTER_SERVER_NAME`].
pub fn client_config(
    node: Option<&NodeCert>,
    ca_cert: &CertificateDer<'_>,
    alpn: &[&[u8]],
) -> Result<quinn::ClientConfig, TlsConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca_cert)?);
    let mut tls = match node {
        Some(node) => builder.with_client_auth_cert(vec![node.cert_der.clone()], node.key_der())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();

    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

fn root_store(ca_cert: &CertificateDer<'_>) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.clone().into_owned())?;
    Ok(roots)
}

fn client_verifier(
    ca_cert: &CertificateDer<'_>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let roots = Arc::new(root_store(ca_cert)?);
    Ok(WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn ca_params(name: DistinguishedName) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Makes `params` valid from [`CERT_BACKDATE_DAYS`] ago until `days` from now.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now_days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / SECONDS_PER_DAY)
        .unwrap_or(0) as i64;
    let date = |days_since_epoch: i64| {
        let (year, month, day) = civil_from_days(days_since_epoch);
        rcgen::date_time_ymd(year, month, day)
    };
    params.not_before = date(now_days - CERT_BACKDATE_DAYS);
    params.not_after = date(now_days + days);
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

fn io_error(path: &Path, source: io::Error) -> TlsError {
    TlsError::Io { path: path.to_owned(), source }
}

/// Writes `contents` to `path` via a temporary file and a rename, so a reader never sees a
/// half-written file. Secret files are created with [`KEY_FILE_MODE`] from the start (never
/// briefly world-readable).
fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mode = if secret { KEY_FILE_MODE } else { CERT_FILE_MODE };
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        // `mode` applies only when the file is created; force it in case `tmp` already existed.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        io_error(path, source)
    })
}

/// Reads `path` as UTF-8. For a secret, checks the mode on the opened file (not the path, so
/// the file checked is the file read).
fn read_file_text(path: &Path, secret: bool) -> Result<String, TlsError> {
    let mut file = File::open(path).map_err(|source| io_error(path, source))?;
    if secret {
        let mode = file.metadata().map_err(|source| io_error(path, source))?.permissions().mode();
        if mode & KEY_FILE_FORBIDDEN_MODE_BITS != 0 {
            return Err(TlsError::KeyFileTooOpen { path: path.to_owned(), mode: mode & 0o777 });
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|source| io_error(path, source))?;
    Ok(text)
}

fn parse_cert_pem(path: &Path, pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        expected: "CERTIFICATE",
        reason: e.to_string(),
    })
}

fn parse_key_pair(path: &Path, pem: &str) -> Result<KeyPair, TlsError> {
    KeyPair::from_pem(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        expected: "PRIVATE KEY",
        reason: e.to_string(),
    })
}

/// Just enough DER reading to take a certificate we wrote apart again: the subject name (to
/// rebuild the CA's issuer name on load) and the public key (to check the key file matches).
/// rcgen can do this only with its `x509-parser` feature, which would add a dependency tree for
/// a few dozen lines.
mod der {
    use rcgen::{DistinguishedName, DnType, DnValue, string::PrintableString};

    const TAG_SEQUENCE: u8 = 0x30;
    const TAG_SET: u8 = 0x31;
    const TAG_OID: u8 = 0x06;
    const TAG_UTF8_STRING: u8 = 0x0c;
    const TAG_PRINTABLE_STRING: u8 = 0x13;
    const TAG_VERSION: u8 = 0xa0;

    pub(super) struct CertFields<'a> {
        /// The full subject `Name` TLV.
        pub(super) subject: &'a [u8],
        /// The full `SubjectPublicKeyInfo` TLV.
        pub(super) spki: &'a [u8],
    }

    /// One DER tag-length-value, split off the front of some input.
    struct Tlv<'a> {
        tag: u8,
        /// The value bytes.
        contents: &'a [u8],
        /// Tag, length and value bytes.
        whole: &'a [u8],
        /// The input after this TLV.
        rest: &'a [u8],
    }

    fn read_tlv(input: &[u8]) -> Option<Tlv<'_>> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n_bytes = usize::from(first & 0x7f);
            if n_bytes == 0 || n_bytes > 4 || rest.len() < n_bytes {
                return None;
            }
            let (len_bytes, after) = rest.split_at(n_bytes);
            rest = after;
            len_bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let header_len = input.len() - rest.len();
        let (contents, rest) = rest.split_at(len);
        Some(Tlv { tag, contents, whole: &input[..header_len + len], rest })
    }

    fn expect(input: &[u8], tag: u8) -> Option<Tlv<'_>> {
        read_tlv(input).filter(|tlv| tlv.tag == tag)
    }

    pub(super) fn cert_fields(cert: &[u8]) -> Option<CertFields<'_>> {
        let cert = expect(cert, TAG_SEQUENCE)?;
        let tbs = expect(cert.contents, TAG_SEQUENCE)?;
        let mut rest = tbs.contents;
        if rest.first() == Some(&TAG_VERSION) {
            rest = read_tlv(rest)?.rest;
        }
        let rest = read_tlv(rest)?.rest; // serialNumber
        let rest = expect(rest, TAG_SEQUENCE)?.rest; // signature algorithm
        let rest = expect(rest, TAG_SEQUENCE)?.rest; // issuer
        let rest = expect(rest, TAG_SEQUENCE)?.rest; // validity
        let subject = expect(rest, TAG_SEQUENCE)?;
        let spki = expect(subject.rest, TAG_SEQUENCE)?;
        Some(CertFields { subject: subject.whole, spki: spki.whole })
    }

    /// Parses a `Name` whose attribute values are UTF8String or PrintableString, the only kinds
    /// we emit.
    pub(super) fn parse_name(name_tlv: &[u8]) -> Option<DistinguishedName> {
        let mut rdns = expect(name_tlv, TAG_SEQUENCE)?.contents;
        let mut name = DistinguishedName::new();
        while !rdns.is_empty() {
            let rdn = expect(rdns, TAG_SET)?;
            rdns = rdn.rest;
            let mut attributes = rdn.contents;
            while !attributes.is_empty() {
                let attribute = expect(attributes, TAG_SEQUENCE)?;
                attributes = attribute.rest;
                let oid = expect(attribute.contents, TAG_OID)?;
                let value = read_tlv(oid.rest)?;
                let text = String::from_utf8(value.contents.to_vec()).ok()?;
                let value = match value.tag {
                    TAG_UTF8_STRING => DnValue::Utf8String(text),
                    TAG_PRINTABLE_STRING => {
                        DnValue::PrintableString(PrintableString::try_from(text).ok()?)
                    }
                    _ => return None,
                };
                name.push(DnType::from_oid(&parse_oid(oid.contents)?), value);
            }
        }
        Some(name)
    }

    fn parse_oid(bytes: &[u8]) -> Option<Vec<u64>> {
        let mut arcs = Vec::new();
        let mut acc: u64 = 0;
        for &b in bytes {
            acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = (acc / 40).min(2);
                    arcs.push(first);
                    arcs.push(acc - first * 40);
                } else {
                    arcs.push(acc);
                }
                acc = 0;
            }
        }
        (!arcs.is_empty()).then_some(arcs)
    }
}
