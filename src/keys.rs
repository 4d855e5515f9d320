//! The pyaiot key file and the gateway's Fernet token.
//!
//! A gateway proves itself to the broker with `Fernet(private).encrypt(secret)`; the broker
//! decrypts with the same `private` key and compares with `secret`. The file format (INI,
//! section `[keys]`) is pyaiot's, so keys move freely between pyaiot and aiot.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// pyaiot's secret: 32 ASCII letters and digits.
const SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// A token is version byte, 8-byte timestamp, 16-byte IV, ≥ 16 bytes of ciphertext, 32-byte HMAC.
const MIN_TOKEN_BYTES: usize = 1 + 8 + 16 + 16 + 32;
const FERNET_VERSION: u8 = 0x80;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} already exists (use --force to replace it)")]
    Exists(PathBuf),
    #[error("invalid key file {path}: {why}")]
    Invalid { path: PathBuf, why: &'static str },
}

/// The two keys of a pyaiot key file. `Debug` is written by hand so that no log line can ever
/// carry them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    secret: String,
    private: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

/// `$STATE_DIRECTORY/keys` under systemd's `StateDirectory=` (the first one if several),
/// otherwise `~/.pyaiot/keys`, pyaiot's default.
pub fn default_key_file() -> PathBuf {
    if let Some(state) = std::env::var_os("STATE_DIRECTORY") {
        if let Some(first) = std::env::split_paths(&state).find(|p| !p.as_os_str().is_empty()) {
            return first.join("keys");
        }
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    home.join(".pyaiot").join("keys")
}

impl Keys {
    /// Fresh random keys, from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut secret = String::with_capacity(SECRET_LEN);
        let mut buf = [0u8; 64];
        while secret.len() < SECRET_LEN {
            getrandom::fill(&mut buf).expect("the OS random source is available");
            // Rejection sampling keeps every character equally likely: 248 = 4 × 62.
            secret.extend(
                buf.iter()
                    .filter(|&&b| (b as usize) < 4 * SECRET_ALPHABET.len())
                    .map(|&b| SECRET_ALPHABET[b as usize % SECRET_ALPHABET.len()] as char)
                    .take(SECRET_LEN - secret.len()),
            );
        }
        Keys {
            secret,
            private: fernet::Fernet::generate_key(),
        }
    }

    /// Builds keys from their text, checking that `private` is a usable Fernet key.
    pub fn new(secret: String, private: String) -> Result<Self, &'static str> {
        if secret.is_empty() {
            return Err("empty secret");
        }
        if fernet::Fernet::new(&private).is_none() {
            return Err("'private' is not a Fernet key (urlsafe base64 of 32 bytes)");
        }
        Ok(Keys { secret, private })
    }

    /// Reads a key file written by pyaiot's `aiot-generate-keys` or by `aiot keys generate`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |why| KeyError::Invalid {
            path: path.to_owned(),
            why,
        };
        let (secret, private) = parse_ini(&text);
        let secret = secret.ok_or_else(|| invalid("no 'secret' in section [keys]"))?;
        let private = private.ok_or_else(|| invalid("no 'private' in section [keys]"))?;
        Keys::new(secret, private).map_err(invalid)
    }

    /// Writes the key file: its directory is created 0700, the file 0600. An existing file is
    /// only replaced with `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        let write_error = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(write_error)?;
            }
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).mode(0o600);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_owned())
            } else {
                write_error(e)
            }
        })?;
        // A replaced file keeps its old mode; make sure it ends up private either way.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
        file.write_all(self.file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(write_error)
    }

    /// The key file's text, as pyaiot writes it.
    pub fn file_text(&self) -> String {
        format!(
            "[keys]\nsecret = {}\nprivate = {}\n\n",
            self.secret, self.private
        )
    }

    /// The secret, for writing it into a gateways file.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The Fernet key, for writing it into a gateways file.
    pub fn private(&self) -> &str {
        &self.private
    }

    fn fernet(&self) -> fernet::Fernet {
        fernet::Fernet::new(&self.private).expect("checked to be a Fernet key when built")
    }

    /// The token a gateway sends as its second websocket subprotocol.
    pub fn token(&self) -> String {
        self.fernet().encrypt(self.secret.as_bytes())
    }

    /// Whether `token` is `secret` encrypted under `private`. Like pyaiot, the token's
    /// timestamp is not checked: a gateway may boot with its clock far behind or ahead. Like
    /// Python's `cryptography`, an unpadded token is refused.
    pub fn verify(&self, token: &str) -> bool {
        let Some(issued_at) = token_timestamp(token) else {
            return false;
        };
        // Decrypting "at" the token's own time turns off the crate's check for tokens from
        // the future, which Python does not make without a TTL.
        match self.fernet().decrypt_at_time(token, None, issued_at) {
            Ok(plain) => plain.ct_eq(self.secret.as_bytes()).into(),
            Err(_) => false,
        }
    }
}

fn token_timestamp(token: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(token.as_bytes())
        .ok()?;
    if bytes.len() < MIN_TOKEN_BYTES || bytes[0] != FERNET_VERSION {
        return None;
    }
    Some(u64::from_be_bytes(bytes[1..9].try_into().ok()?))
}

/// The `secret` and `private` options of section `[keys]`, read the way Python's
/// `configparser` reads them: option names are case-insensitive, `=` or `:` separates,
/// whitespace around names and values is dropped, `#`/`;` lines are comments.
fn parse_ini(text: &str) -> (Option<String>, Option<String>) {
    let (mut secret, mut private) = (None, None);
    let mut in_keys = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_keys = section.trim() == "keys";
            continue;
        }
        if !in_keys {
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            continue;
        };
        let value = line[split + 1..].trim().to_owned();
        match line[..split].trim().to_ascii_lowercase().as_str() {
            "secret" => secret = Some(value),
            "private" => private = Some(value),
            _ => {}
        }
    }
    (secret, private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_look_like_pyaiot_keys() {
        let keys = Keys::generate();
        assert_eq!(keys.secret.len(), SECRET_LEN);
        assert!(keys.secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(keys.secret, Keys::generate().secret);
        assert!(fernet::Fernet::new(&keys.private).is_some());
    }

    #[test]
    fn tokens_verify_under_the_same_keys_only() {
        let keys = Keys::generate();
        let token = keys.token();
        assert!(keys.verify(&token));
        assert!(!Keys::generate().verify(&token));
        let other_secret = Keys::new("x".repeat(32), keys.private.clone()).expect("valid");
        assert!(!other_secret.verify(&token), "same key, other secret");
        assert!(!keys.verify(""));
        assert!(!keys.verify("token"));
        assert!(!keys.verify(&token[..token.len() - 4]));
        let unpadded = token.trim_end_matches('=');
        if unpadded.len() != token.len() {
            assert!(!keys.verify(unpadded), "Python refuses unpadded tokens");
        }
    }

    #[test]
    fn tokens_from_the_far_future_or_past_are_accepted() {
        let keys = Keys::generate();
        let fernet = keys.fernet();
        for when in [0, 1_000_000_000, 4_000_000_000] {
            let token = fernet.encrypt_at_time(keys.secret.as_bytes(), when);
            assert!(keys.verify(&token), "issued at {when}");
        }
    }

    #[test]
    fn reads_files_the_way_configparser_does() {
        let private = fernet::Fernet::generate_key();
        let text = format!(
            "# pyaiot keys\n[other]\nsecret = nope\n\n[keys]\nSecret: s3cr3t  \n  private =   {private}\n"
        );
        assert_eq!(
            parse_ini(&text),
            (Some("s3cr3t".into()), Some(private.clone()))
        );
        assert_eq!(
            parse_ini("[other]\nsecret = a\nprivate = b\n"),
            (None, None)
        );
    }

    #[test]
    fn write_then_load_with_private_modes_and_no_silent_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub").join("keys");
        let keys = Keys::generate();
        keys.write(&path, false).expect("written");
        let mode = |p: &Path| fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("has a dir")), 0o700);
        let loaded = Keys::load(&path).expect("loads");
        assert_eq!(loaded.secret, keys.secret);
        assert_eq!(loaded.private, keys.private);

        assert!(matches!(
            Keys::generate().write(&path, false),
            Err(KeyError::Exists(_))
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        Keys::generate().write(&path, true).expect("forced");
        assert_eq!(mode(&path), 0o600);
        assert_ne!(Keys::load(&path).expect("loads").secret, keys.secret);
    }

    #[test]
    fn bad_key_files_name_the_problem() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys");
        fs::write(&path, "[keys]\nsecret = abc\nprivate = not-a-key\n").expect("write");
        let error = Keys::load(&path).expect_err("invalid").to_string();
        assert!(error.contains("Fernet"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
        let missing = Keys::load(&dir.path().join("absent")).expect_err("missing");
        assert!(matches!(missing, KeyError::Read { .. }));
    }
}
