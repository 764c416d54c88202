//! Who may talk to a node's gRPC port: the holders of the cluster key. Every gRPC connection
//! (Raft between nodes, forwarded admin calls, the volume service a gateway calls on another
//! node, `umbra ctl`) starts, before HTTP/2, with a mutual challenge-response under the key:
//!
//! 1. the server sends [`MAGIC`] and a 16-byte nonce Ns;
//! 2. the client sends its nonce Nc and HMAC-SHA256(key, "umbra client" || Ns || Nc || A), where
//!    A is the `host:port` it dialed;
//! 3. the server checks it (constant time) against its own address and sends
//!    HMAC-SHA256(key, "umbra server" || Nc || Ns), which the client checks.
//!
//! Either side that fails closes the connection, so without the key nobody reaches a service
//! (before, anyone who could reach the port could read and write every volume, bypassing SMB
//! logons). Nonces are fresh per connection, so a recorded handshake cannot be replayed; the
//! dialed address in the client's proof means a key holder that dials the wrong address (a
//! squatter on a port, a mistyped `--addr`) cannot have its proof relayed to a real node. What
//! follows is not encrypted or integrity-protected: a node's gRPC port belongs on a private
//! network (TLS between nodes is not built).
//!
//! The key is the process's ([`install_key`]): a node takes it from its config with its own
//! gRPC address, `umbra ctl` from a key file. Without one installed no handshake is made or
//! expected (the simulation, unit tests), and a node without a key cannot talk to one with a
//! key.
//! Written here because it is a few lines over `aws-lc-rs`'s HMAC (no maintained crate does this
//! pre-HTTP/2 exchange for tonic).

use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::hmac;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first bytes a node's gRPC port sends: what it speaks.
pub const MAGIC: &[u8; 8] = b"UMBRAK1\0";
const NONCE_BYTES: usize = 16;
const MAC_BYTES: usize = 32;
/// Bytes of a cluster key.
pub const KEY_BYTES: usize = 32;
/// How long either side waits for the other's part of the handshake (a connection that has
/// not proved the key holds a slot of the server's bounded count meanwhile).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster key: 32 random bytes every node and administrator of the cluster holds.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; KEY_BYTES]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a cluster key is 64 hex digits (got {0} characters, or not hex)")]
pub struct BadKey(usize);

impl ClusterKey {
    /// A new key from the system's generator.
    pub fn generate() -> ClusterKey {
        let mut k = [0u8; KEY_BYTES];
        aws_lc_rs::rand::fill(&mut k).expect("the system's random generator");
        ClusterKey(k)
    }

    /// A key from its 64 hex digits (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<ClusterKey, BadKey> {
        let s = s.trim();
        if s.len() != 2 * KEY_BYTES || !s.is_ascii() {
            return Err(BadKey(s.chars().count()));
        }
        let mut k = [0u8; KEY_BYTES];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| BadKey(s.len()))?;
        }
        Ok(ClusterKey(k))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> hmac::Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(label);
        ctx.update(a);
        ctx.update(b);
        ctx.sign()
    }

    fn verify(&self, label: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hmac::verify(&key, &[label, a, b].concat(), tag).is_ok()
    }
}

static KEY: OnceLock<ClusterKey> = OnceLock::new();
/// The address clients dial to reach this process's server (a node's `grpc_addr`).
static OWN_ADDR: OnceLock<String> = OnceLock::new();

/// Installs the process's cluster key (once) and, for a node, the `host:port` its clients
/// dial; false if a key was installed already.
pub fn install_key(key: ClusterKey, own_addr: Option<&str>) -> bool {
    if let Some(a) = own_addr {
        let _ = OWN_ADDR.set(a.to_string());
    }
    KEY.set(key).is_ok()
}

/// The address this process's server answers to, for [`server_side`].
pub fn own_addr() -> Option<&'static str> {
    OWN_ADDR.get().map(String::as_str)
}

/// The process's cluster key, if any.
pub fn key() -> Option<&'static ClusterKey> {
    KEY.get()
}

fn refused(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string())
}

/// The client's side of the handshake on a fresh connection to `dialed` (`host:port`), under
/// `key`.
pub async fn client_side<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, key: &ClusterKey, dialed: &str) -> std::io::Result<()> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut hello = [0u8; 8 + NONCE_BYTES];
        s.read_exact(&mut hello).await?;
        if &hello[..8] != MAGIC {
            return Err(refused("the server did not start a cluster-key handshake (no key configured there, or not an Umbra node)"));
        }
        let server_nonce = &hello[8..];
        let mut nonce = [0u8; NONCE_BYTES];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| refused("no random bytes"))?;
        let tag = key.mac(b"umbra client", server_nonce, &[&nonce[..], dialed.as_bytes()].concat());
        s.write_all(&[&nonce[..], tag.as_ref()].concat()).await?;
        s.flush().await?;
        let mut answer = [0u8; MAC_BYTES];
        s.read_exact(&mut answer).await.map_err(|_| refused("the server refused this cluster key (or the address dialed is not its grpc_addr)"))?;
        if !key.verify(b"umbra server", &nonce, server_nonce, &answer) {
            return Err(refused("the server does not hold this cluster key"));
        }
        Ok(())
    })
    .await
    .map_err(|_| refused("the cluster-key handshake timed out"))?
}

/// The server's side of the handshake on an accepted connection to `own_addr` (the address
/// its clients dial), under `key`.
pub async fn server_side<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, key: &ClusterKey, own_addr: &str) -> std::io::Result<()> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut nonce = [0u8; NONCE_BYTES];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| refused("no random bytes"))?;
        s.write_all(&[&MAGIC[..], &nonce[..]].concat()).await?;
        s.flush().await?;
        let mut reply = [0u8; NONCE_BYTES + MAC_BYTES];
        s.read_exact(&mut reply).await?;
        let (client_nonce, tag) = reply.split_at(NONCE_BYTES);
        if !key.verify(b"umbra client", &nonce, &[client_nonce, own_addr.as_bytes()].concat(), tag) {
            return Err(refused("the client does not hold the cluster key, or dialed another address than this node's grpc_addr"));
        }
        s.write_all(key.mac(b"umbra server", client_nonce, &nonce).as_ref()).await?;
        s.flush().await
    })
    .await
    .map_err(|_| refused("the cluster-key handshake timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(client_key: ClusterKey, dialed: &str, server_key: ClusterKey) -> (std::io::Result<()>, std::io::Result<()>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_side(&mut b, &server_key, "10.0.0.1:7101").await });
        let client = client_side(&mut a, &client_key, dialed).await;
        drop(a);
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn the_same_key_passes_and_another_key_or_address_is_refused_by_the_server() {
        let k = ClusterKey::generate();
        let (c, s) = pair(k.clone(), "10.0.0.1:7101", k.clone()).await;
        assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
        let (c, s) = pair(ClusterKey::generate(), "10.0.0.1:7101", k.clone()).await;
        assert!(c.is_err() && s.is_err(), "{c:?} {s:?}");
        // A proof made for another address (relayed from a squatter on it) is no proof here.
        let (c, s) = pair(k.clone(), "10.0.0.9:7101", k).await;
        assert!(c.is_err() && s.is_err(), "{c:?} {s:?}");
    }

    #[tokio::test]
    async fn a_client_without_the_key_gets_nothing_past_the_greeting() {
        let k = ClusterKey::generate();
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { server_side(&mut b, &k, "10.0.0.1:7101").await });
        let mut hello = [0u8; 24];
        a.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello[..8], MAGIC);
        // An HTTP/2 preface instead of an answer.
        a.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n0123456789abcdefghijklmn").await.unwrap();
        assert!(server.await.unwrap().is_err());
        let mut rest = Vec::new();
        let _ = a.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "the server answered nothing");
    }

    #[test]
    fn keys_read_back_from_hex_and_bad_hex_is_refused() {
        let k = ClusterKey::generate();
        assert_eq!(ClusterKey::from_hex(&format!(" {}\n", k.to_hex())), Ok(k));
        assert!(ClusterKey::from_hex("abcd").is_err());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_err());
        assert!(ClusterKey::from_hex(&"é".repeat(32)).is_err());
    }
}
