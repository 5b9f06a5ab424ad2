//! Random keys for `gen-key`.

use base64::Engine;
use rand::RngCore;

/// A new random 32-byte key, standard base64: fit for `session.keys`, `identity.assertion_secret` and the backdoor key.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
