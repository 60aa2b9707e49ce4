//! SSH keys for talking to tethers: a fresh host key per container VM, and
//! the appliance's client key.

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Reading system randomness")]
    Random(#[source] getrandom::Error),
    #[error("Encoding key")]
    Encode(#[source] russh::keys::ssh_key::Error),
}

/// A new Ed25519 key from the OS's randomness.
pub fn generate() -> Result<PrivateKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(KeyError::Random)?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// OpenSSH private key text.
pub fn private_openssh(key: &PrivateKey) -> Result<String, KeyError> {
    key.to_openssh(LineEnding::LF)
        .map(|z| z.to_string())
        .map_err(KeyError::Encode)
}

/// OpenSSH public key line, "ssh-ed25519 AAAA...".
pub fn public_openssh(key: &PublicKey) -> Result<String, KeyError> {
    key.to_openssh().map_err(KeyError::Encode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_and_round_trip() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.public_key().key_data(), b.public_key().key_data());
        let text = private_openssh(&a).unwrap();
        let back = PrivateKey::from_openssh(text.as_bytes()).unwrap();
        assert_eq!(back.public_key().key_data(), a.public_key().key_data());
        let line = public_openssh(a.public_key()).unwrap();
        assert!(line.starts_with("ssh-ed25519 "));
        assert_eq!(
            PublicKey::from_openssh(&line).unwrap().key_data(),
            a.public_key().key_data()
        );
    }
}
