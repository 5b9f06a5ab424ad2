//! AES-256-GCM sealing with a keyring: the first key seals, every key opens (rotation).
//!
//! A sealed value is `base64url(nonce ‖ ciphertext+tag)`; the cookie name is the associated data, so a value
//! cannot be moved from one cookie to another.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::config::SessionKey;

const NONCE_LEN: usize = 12;
/// Sealed values longer than this are refused unread: a session cookie is far smaller.
const MAX_SEALED_LEN: usize = 8192;

/// The session keys, ready to use.
#[derive(Clone)]
pub struct Keyring {
    ciphers: Vec<Aes256Gcm>,
}

/// Why a sealed value could not be opened. Deliberately coarse: callers treat all of them as "no session".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value (bad encoding or length)")]
    Malformed,
    #[error("no session key opens it (tampered, or sealed with a key no longer configured)")]
    Unauthentic,
}

impl Keyring {
    /// Builds the ring from the configured keys (each at least 32 bytes; the first 32 are used).
    pub fn new(keys: &[SessionKey]) -> Self {
        let ciphers = keys
            .iter()
            .filter_map(|k| k.0.get(..32))
            .filter_map(|k| Aes256Gcm::new_from_slice(k).ok())
            .collect();
        Keyring { ciphers }
    }

    /// Whether at least one key is configured.
    pub fn is_usable(&self) -> bool {
        !self.ciphers.is_empty()
    }

    /// Encrypts `plaintext` with the first key, binding `context` (the cookie name).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Option<String> {
        let cipher = self.ciphers.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts a value sealed by any key of the ring for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, OpenError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(OpenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| OpenError::Malformed)?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(OpenError::Malformed);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        self.ciphers
            .iter()
            .find_map(|c| {
                c.decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: context.as_bytes(),
                    },
                )
                .ok()
            })
            .ok_or(OpenError::Unauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SessionKey {
        SessionKey(vec![b; 32])
    }

    #[test]
    fn rotation_old_keys_open_new_key_seals() {
        let old = Keyring::new(&[key(1)]);
        let rotated = Keyring::new(&[key(2), key(1)]);
        let removed = Keyring::new(&[key(2)]);
        let sealed_old = old.seal("bbsso", b"hello").unwrap();
        assert_eq!(rotated.open("bbsso", &sealed_old).unwrap(), b"hello");
        assert_eq!(removed.open("bbsso", &sealed_old), Err(OpenError::Unauthentic));
        let sealed_new = rotated.seal("bbsso", b"hi").unwrap();
        assert_eq!(removed.open("bbsso", &sealed_new).unwrap(), b"hi");
        assert_eq!(old.open("bbsso", &sealed_new), Err(OpenError::Unauthentic));
    }

    #[test]
    fn context_tampering_and_garbage_are_refused() {
        let ring = Keyring::new(&[key(7)]);
        let sealed = ring.seal("bbsso", b"payload").unwrap();
        assert_eq!(ring.open("other", &sealed), Err(OpenError::Unauthentic));
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            ring.open("bbsso", &URL_SAFE_NO_PAD.encode(&bytes)),
            Err(OpenError::Unauthentic)
        );
        assert!(ring.open("bbsso", &sealed[..sealed.len() - 4]).is_err(), "truncated");
        for garbage in ["", "a", "!!!!", "AAAA", &"A".repeat(10_000)] {
            assert!(ring.open("bbsso", garbage).is_err());
        }
        assert_ne!(
            ring.seal("bbsso", b"payload").unwrap(),
            sealed,
            "a fresh nonce every time"
        );
    }
}
