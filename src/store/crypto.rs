//! Secrets mailroom must read back (DKIM private keys, SMTP passwords) are sealed with
//! XChaCha20-Poly1305 under one master key.

use std::fmt;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::config::Settings;

const VERSION: &str = "v1";

#[derive(Clone)]
pub struct MasterKey(XChaCha20Poly1305);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// `MAILROOM_SECRET_KEY` when set, else `{data_dir}/secret.key`, made (mode 0600) on
    /// first use. Instances sharing a PostgreSQL database must share the key.
    pub fn load(settings: &Settings) -> anyhow::Result<MasterKey> {
        if let Some(hex_key) = &settings.secret_key {
            return Self::from_hex(hex_key.expose()).context("MAILROOM_SECRET_KEY");
        }
        let path = settings.data_dir.join("secret.key");
        if !path.exists() {
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            write_private(&path, hex::encode(bytes).as_bytes())?;
            tracing::info!(path = %path.display(), "generated a new master key");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_hex(text.trim()).with_context(|| format!("the key in {}", path.display()))
    }

    pub fn from_hex(text: &str) -> anyhow::Result<MasterKey> {
        let bytes = hex::decode(text.trim()).context("must be 64 hex digits")?;
        if bytes.len() != 32 {
            bail!(
                "must be 64 hex digits (32 bytes), not {} bytes",
                bytes.len()
            );
        }
        Ok(MasterKey(XChaCha20Poly1305::new(bytes.as_slice().into())))
    }

    /// Encrypts `plaintext`, bound to `context` (what the secret is for, such as the row it
    /// belongs to) so that a sealed value copied elsewhere does not open.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("encryption with a valid key does not fail");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{VERSION}:{}", STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, context: &str) -> anyhow::Result<Vec<u8>> {
        let Some(encoded) = sealed.strip_prefix(&format!("{VERSION}:")) else {
            bail!("unknown sealed format");
        };
        let bytes = STANDARD
            .decode(encoded)
            .context("sealed value is not base64")?;
        if bytes.len() < 24 {
            bail!("sealed value too short");
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("cannot decrypt: wrong master key or altered value"))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let key = MasterKey::from_hex(&"11".repeat(32)).unwrap();
        let sealed = key.seal(b"hunter2", "smtp:dom_1");
        assert!(!sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            key.seal(b"hunter2", "smtp:dom_1"),
            "a fresh nonce each time"
        );
        assert_eq!(key.open(&sealed, "smtp:dom_1").unwrap(), b"hunter2");
        assert!(key.open(&sealed, "smtp:dom_2").is_err());
        let other = MasterKey::from_hex(&"22".repeat(32)).unwrap();
        assert!(other.open(&sealed, "smtp:dom_1").is_err());
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        let first = MasterKey::load(&settings).unwrap();
        let sealed = first.seal(b"x", "c");
        let again = MasterKey::load(&settings).unwrap();
        assert_eq!(again.open(&sealed, "c").unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("secret.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_malformed_key_is_refused() {
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"11".repeat(16)).is_err());
    }
}
