//! The text payloads nodes post to the gateway (protocol.md §2): `alive:<uid>` and
//! `reset:<uid>` on `/alive`, `<endpoint>:<value>` on `/server`.

/// Longest uid accepted. RIOT's is 16 hex digits (15 in 2019.07's quirk), pyaiot's test node
/// `1234`; anything much longer is not a node id.
pub const MAX_UID: usize = 64;
/// Longest endpoint name accepted from `/server`.
pub const MAX_ENDPOINT: usize = 64;

/// Resources the gateway sets itself; a node may not overwrite them.
pub const RESERVED_ENDPOINTS: [&str; 2] = ["ip", "protocol"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload has no ':'")]
    NoColon,
    #[error("empty uid")]
    EmptyUid,
    #[error("uid longer than {MAX_UID} characters or with spaces or control characters")]
    BadUid,
    #[error("empty endpoint")]
    EmptyEndpoint,
    #[error("endpoint longer than {MAX_ENDPOINT} bytes or with control characters")]
    BadEndpoint,
    #[error("endpoint '{0}' is set by the gateway")]
    ReservedEndpoint(String),
}

/// A node's `/alive` post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive<'a> {
    pub uid: &'a str,
    /// The node just booted: forget its resources and discover them again.
    pub reset: bool,
}

/// `alive:<uid>` or `reset:<uid>`: the uid is what follows the last `:`; only a `reset`
/// prefix means reset (pyaiot's own test node sends `Alive:1234`).
pub fn alive(payload: &[u8]) -> Result<Alive<'_>, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let (_, uid) = text.rsplit_once(':').ok_or(PayloadError::NoColon)?;
    let uid = uid.trim_end_matches(['\0', '\n', '\r']);
    if uid.is_empty() {
        return Err(PayloadError::EmptyUid);
    }
    if uid.chars().count() > MAX_UID || uid.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(PayloadError::BadUid);
    }
    Ok(Alive {
        uid,
        reset: text.starts_with("reset"),
    })
}

/// `<endpoint>:<value>`, split at the first `:`; the value may be empty or hold more `:`.
pub fn server(payload: &[u8]) -> Result<(&str, &str), PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let (endpoint, value) = text.split_once(':').ok_or(PayloadError::NoColon)?;
    if endpoint.is_empty() {
        return Err(PayloadError::EmptyEndpoint);
    }
    if endpoint.len() > MAX_ENDPOINT || endpoint.chars().any(char::is_control) {
        return Err(PayloadError::BadEndpoint);
    }
    if RESERVED_ENDPOINTS.contains(&endpoint) {
        return Err(PayloadError::ReservedEndpoint(endpoint.to_owned()));
    }
    Ok((endpoint, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_takes_the_uid_after_the_last_colon() {
        for (payload, uid, reset) in [
            ("alive:232323232323232", "232323232323232", false),
            ("reset:232323232323232", "232323232323232", true),
            ("Alive:1234", "1234", false),
            ("alive:fe80::1:abcd", "abcd", false),
            ("resetting:x", "x", true),
            ("alive:1234\n", "1234", false),
        ] {
            assert_eq!(
                alive(payload.as_bytes()),
                Ok(Alive { uid, reset }),
                "{payload}"
            );
        }
    }

    #[test]
    fn alive_refuses_what_is_not_a_uid() {
        assert_eq!(alive(b"alive"), Err(PayloadError::NoColon));
        assert_eq!(alive(b"alive:"), Err(PayloadError::EmptyUid));
        assert_eq!(alive(b"alive:a b"), Err(PayloadError::BadUid));
        assert_eq!(alive(&[b'a', b':', 0xff]), Err(PayloadError::NotUtf8));
        let long = format!("alive:{}", "x".repeat(MAX_UID + 1));
        assert_eq!(alive(long.as_bytes()), Err(PayloadError::BadUid));
    }

    #[test]
    fn server_splits_at_the_first_colon() {
        assert_eq!(
            server("temperature:23°C".as_bytes()),
            Ok(("temperature", "23°C"))
        );
        assert_eq!(server(b"time:12:30:00"), Ok(("time", "12:30:00")));
        assert_eq!(server(b"led:"), Ok(("led", "")));
        assert_eq!(server(b"led"), Err(PayloadError::NoColon));
        assert_eq!(server(b":1"), Err(PayloadError::EmptyEndpoint));
        assert_eq!(server(b"a\nb:1"), Err(PayloadError::BadEndpoint));
        assert_eq!(
            server(b"ip:1.2.3.4"),
            Err(PayloadError::ReservedEndpoint("ip".into()))
        );
        assert_eq!(server(&[b'x', b':', 0xc3]), Err(PayloadError::NotUtf8));
    }
}
