//! Health checks on the wire: a TCP handshake, or `GET path` over HTTP or
//! HTTPS answered with 200. Every read is bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{CheckKind, HealthCheck};

/// The most of an answer a check reads: the status line is all it needs.
const MAX_ANSWER: usize = 4096;

/// One configured check, ready to run against any backend.
#[derive(Clone)]
pub struct Checker {
    kind: CheckKind,
    path: String,
    timeout: Duration,
    tls: Option<TlsConnector>,
}

impl Checker {
    pub fn new(h: &HealthCheck) -> Checker {
        let tls = (h.kind == CheckKind::Https).then(|| TlsConnector::from(Arc::new(tls_config())));
        Checker {
            kind: h.kind,
            path: h.path.clone(),
            timeout: h.timeout,
            tls,
        }
    }

    /// Checks `addr` once; the error says what failed.
    pub async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        match timeout(self.timeout, self.run(addr)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        }
    }

    async fn run(&self, addr: SocketAddr) -> Result<(), String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        match (self.kind, &self.tls) {
            (CheckKind::Tcp, _) => Ok(()),
            (CheckKind::Https, Some(tls)) => {
                let name = ServerName::IpAddress(addr.ip().into());
                let s = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                http_get(s, addr, &self.path).await
            }
            _ => http_get(tcp, addr, &self.path).await,
        }
    }
}

async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    addr: SocketAddr,
    path: &str,
) -> Result<(), String> {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: vipd\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    // Until the end of the status line, and never more than MAX_ANSWER.
    while !buf.contains(&b'\n') && buf.len() < MAX_ANSWER {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    status_ok(&buf)
}

/// Whether an answer starts with an HTTP status line saying 200.
pub fn status_ok(answer: &[u8]) -> Result<(), String> {
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/") => Ok(()),
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Err(format!("answered {code}")),
        _ if line.is_empty() => Err("closed without an answer".into()),
        _ => Err(format!("not an HTTP answer: {:?}", truncate(line))),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn tls_config() -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth()
}

/// Accepts any certificate but still checks the handshake's signatures: a
/// health check learns whether the server answers, and carries no secrets.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_status_line_is_healthy() {
        assert_eq!(
            status_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"),
            Ok(())
        );
        assert_eq!(status_ok(b"HTTP/1.0 200\r\n"), Ok(()));
        assert_eq!(
            status_ok(b"HTTP/1.1 500 Internal Server Error\r\n"),
            Err("answered 500".into())
        );
        assert_eq!(
            status_ok(b"HTTP/1.1 404 Not Found"),
            Err("answered 404".into())
        );
        assert_eq!(status_ok(b""), Err("closed without an answer".into()));
        assert!(status_ok(b"SSH-2.0-OpenSSH_9.2\r\n").is_err());
        assert!(status_ok(&[0xff; 5000]).is_err());
        assert!(status_ok("200 HTTP/1.1 é".as_bytes()).is_err());
    }
}
