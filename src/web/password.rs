//! The web password: an Argon2id hash in a file (made by `aiot password hash`), or a password
//! given on the command line and hashed at start, so both are checked the same slow,
//! constant-time way.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2};

/// Shorter passwords are refused: the login is rate-limited, but a stolen hash is not.
pub const MIN_LENGTH: usize = 8;

/// Longest password taken (Argon2 takes any length; this bounds a login request's work).
pub const MAX_LENGTH: usize = 1024;

/// A password hash in PHC string format (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
#[derive(Clone)]
pub struct Verifier {
    phc: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(argon2)")
    }
}

impl Verifier {
    /// Hashes `password` with a fresh random salt and Argon2id's default (OWASP) parameters.
    pub fn hash(password: &str) -> anyhow::Result<Verifier> {
        check_length(password)?;
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| anyhow!("no randomness for a salt: {e}"))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("salt: {e}"))?;
        let phc = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow!("cannot hash the password: {e}"))?
            .to_string();
        Ok(Verifier { phc })
    }

    /// Takes a PHC string; only Argon2 hashes are accepted.
    pub fn from_phc(text: &str) -> anyhow::Result<Verifier> {
        let text = text.trim();
        let parsed = PasswordHash::new(text).map_err(|e| anyhow!("not a password hash ({e})"))?;
        let known = [Algorithm::Argon2id, Algorithm::Argon2i, Algorithm::Argon2d];
        if !known.iter().any(|a| a.ident() == parsed.algorithm) {
            bail!("not an Argon2 hash but {}", parsed.algorithm);
        }
        if parsed.hash.is_none() {
            bail!("the hash has no output part");
        }
        Ok(Verifier {
            phc: text.to_owned(),
        })
    }

    /// Reads a password file; says how to make one if it holds anything else.
    pub fn load(path: &Path) -> anyhow::Result<Verifier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the web password file {}", path.display()))?;
        let verifier = Verifier::from_phc(&text).with_context(|| {
            format!(
                "{} must hold a password hash made by `aiot password hash --file {}`",
                path.display(),
                path.display()
            )
        })?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "the web password file is readable by others: a stolen hash can be guessed offline; chmod 600 it"
                );
            }
        }
        Ok(verifier)
    }

    /// The PHC string, as written to a password file.
    pub fn phc(&self) -> &str {
        &self.phc
    }

    /// Slow by design (tens of milliseconds, 19 MiB): call it off the async threads. The
    /// hash comparison inside is constant-time.
    pub fn verify(&self, password: &str) -> bool {
        if password.len() > MAX_LENGTH {
            return false;
        }
        let Ok(hash) = PasswordHash::new(&self.phc) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    }
}

fn check_length(password: &str) -> anyhow::Result<()> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        bail!("the password must have at least {MIN_LENGTH} characters");
    }
    if password.len() > MAX_LENGTH {
        bail!("the password must have at most {MAX_LENGTH} bytes");
    }
    Ok(())
}

/// The password to hash: typed twice at a terminal with echo off, or the first line of stdin
/// (`aiot password hash < file`, or from a pipe), never a command-line argument.
pub fn read_new_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = prompt_hidden("New web password: ")?;
        check_length(&first)?;
        let second = prompt_hidden("Again: ")?;
        if first != second {
            bail!("the passwords differ");
        }
        Ok(first)
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        check_length(&password)?;
        Ok(password)
    }
}

fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let saved = tcgetattr(&stdin).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("cannot turn off echo")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // Echo comes back whatever happened to the read.
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// `aiot password hash`: prints the hash, or writes it to `file` (mode 0600).
pub fn hash_command(file: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let password = read_new_password()?;
    let verifier = Verifier::hash(&password)?;
    match file {
        None => println!("{}", verifier.phc()),
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).mode(0o600);
            if force {
                options.create(true).truncate(true);
            } else {
                options.create_new(true);
            }
            let mut out = options.open(path).with_context(|| {
                if path.exists() && !force {
                    format!("{} exists; --force replaces it", path.display())
                } else {
                    format!("cannot write {}", path.display())
                }
            })?;
            writeln!(out, "{}", verifier.phc())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {}; start the broker or gateway with --web-password-file {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let verifier = Verifier::hash("correct horse").expect("hashes");
        assert!(verifier.phc().starts_with("$argon2id$v=19$"));
        assert!(verifier.verify("correct horse"));
        assert!(!verifier.verify("correct horsE"));
        assert!(!verifier.verify(""));
        let again = Verifier::from_phc(verifier.phc()).expect("parses");
        assert!(again.verify("correct horse"));
    }

    #[test]
    fn short_passwords_and_foreign_hashes_are_refused() {
        assert!(Verifier::hash("short").is_err());
        assert!(Verifier::from_phc("hunter22").is_err());
        assert!(Verifier::from_phc("$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA").is_err());
    }
}
