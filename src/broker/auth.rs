//! The `/gw` handshake check: pyaiot's token in the `Sec-WebSocket-Protocol` header.

use axum::http::HeaderMap;
use axum::http::header::SEC_WEBSOCKET_PROTOCOL;

/// The first subprotocol entry a gateway sends; the second is the token.
pub const TOKEN_PROTOCOL: &str = "token";

/// Why a gateway was turned away (logged; the gateway only sees 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid subprotocols: expected exactly 'token, <token>'")]
    Subprotocols,
    #[error("invalid token")]
    Token,
}

/// Accepts only exactly two subprotocol entries, `token` then a token that `verify` admits (it
/// says who made it). Entries are split on commas across every header line, as browsers and
/// tornado do.
pub fn check<T>(headers: &HeaderMap, verify: impl Fn(&str) -> Option<T>) -> Result<T, AuthError> {
    let mut entries = Vec::with_capacity(2);
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let text = value.to_str().map_err(|_| AuthError::Subprotocols)?;
        entries.extend(text.split(',').map(str::trim));
        if entries.len() > 2 {
            return Err(AuthError::Subprotocols);
        }
    }
    match entries.as_slice() {
        [TOKEN_PROTOCOL, token] => verify(token).ok_or(AuthError::Token),
        _ => Err(AuthError::Subprotocols),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;
    use axum::http::HeaderValue;

    fn with(keys: &Keys) -> impl Fn(&str) -> Option<()> + '_ {
        |token| keys.verify(token).then_some(())
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(line).expect("ascii"),
            );
        }
        map
    }

    #[test]
    fn accepts_token_in_one_or_two_header_lines() {
        let keys = Keys::generate();
        let token = keys.token();
        assert_eq!(
            check(&headers(&[&format!("token, {token}")]), with(&keys)),
            Ok(())
        );
        assert_eq!(check(&headers(&["token", &token]), with(&keys)), Ok(()));
    }

    #[test]
    fn refuses_everything_else() {
        let keys = Keys::generate();
        let token = keys.token();
        let wrong = Keys::generate().token();
        for (lines, expected) in [
            (vec![], AuthError::Subprotocols),
            (vec!["token"], AuthError::Subprotocols),
            (vec![token.as_str()], AuthError::Subprotocols),
            (vec!["bearer", token.as_str()], AuthError::Subprotocols),
            (vec!["token", token.as_str(), "x"], AuthError::Subprotocols),
            (vec!["token", wrong.as_str()], AuthError::Token),
            (vec!["token", "garbage"], AuthError::Token),
            (vec!["token", ""], AuthError::Token),
        ] {
            assert_eq!(
                check(&headers(&lines), with(&keys)),
                Err(expected),
                "{lines:?}"
            );
        }
    }
}
