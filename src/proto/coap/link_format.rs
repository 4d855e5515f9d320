//! CoRE link format (RFC 6690), as `/.well-known/core` answers it: which resources a node has.
//!
//! `</board>,</led>;rt="light";title="a, b"` is a list of links, each a target in angle
//! brackets and parameters after `;`, possibly quoted (quotes may hold `,` and `;`). The parser
//! is strict about structure (an unterminated quote or a stray character is an error, not a
//! guess) and lenient about whitespace, as nodes put spaces and newlines between links.

/// One link: its target as written, and its parameters (name, value if any), unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<'a> {
    pub target: &'a str,
    pub params: Vec<(&'a str, Option<String>)>,
}

/// Why a document is not link format; `at` is the byte offset where reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid link format at byte {at}: {reason}")]
pub struct LinkFormatError {
    pub at: usize,
    pub reason: &'static str,
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn fail<T>(&self, reason: &'static str) -> Result<T, LinkFormatError> {
        Err(LinkFormatError {
            at: self.at,
            reason,
        })
    }

    /// Up to (not including) the first byte in `stops`, or the end.
    fn until(&mut self, stops: &[u8]) -> &'a str {
        let start = self.at;
        while self.peek().is_some_and(|b| !stops.contains(&b)) {
            self.at += 1;
        }
        // Every stop is ASCII, so both ends are on character boundaries.
        &self.text[start..self.at]
    }

    fn quoted(&mut self) -> Result<String, LinkFormatError> {
        self.at += 1; // the opening quote
        let mut value = String::new();
        let rest = &self.text[self.at..];
        let mut chars = rest.char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += offset + 1;
                    return Ok(value);
                }
                '\\' => match chars.next() {
                    Some((_, escaped)) => value.push(escaped),
                    None => break,
                },
                c => value.push(c),
            }
        }
        self.at = self.text.len();
        self.fail("unterminated quoted string")
    }
}

/// Parses a whole link-format document. An empty document is an empty list.
pub fn parse(text: &str) -> Result<Vec<Link<'_>>, LinkFormatError> {
    let mut s = Scanner { text, at: 0 };
    let mut links = Vec::new();
    s.skip_space();
    if s.peek().is_none() {
        return Ok(links);
    }
    loop {
        s.skip_space();
        if s.peek() != Some(b'<') {
            return s.fail("expected '<'");
        }
        s.at += 1;
        let target = s.until(b">");
        if s.peek() != Some(b'>') {
            return s.fail("unterminated target");
        }
        if target.contains('<') {
            return s.fail("'<' inside a target");
        }
        s.at += 1;
        let mut params = Vec::new();
        loop {
            s.skip_space();
            match s.peek() {
                Some(b';') => {
                    s.at += 1;
                    s.skip_space();
                    let name = s.until(b"=;,").trim_end();
                    if name.is_empty() {
                        return s.fail("empty parameter name");
                    }
                    let value = if s.peek() == Some(b'=') {
                        s.at += 1;
                        s.skip_space();
                        if s.peek() == Some(b'"') {
                            Some(s.quoted()?)
                        } else {
                            Some(s.until(b";,").trim_end().to_owned())
                        }
                    } else {
                        None
                    };
                    params.push((name, value));
                }
                Some(b',') => {
                    s.at += 1;
                    links.push(Link { target, params });
                    break;
                }
                None => {
                    links.push(Link { target, params });
                    return Ok(links);
                }
                Some(_) => return s.fail("expected ';' or ','"),
            }
        }
    }
}

/// The discovery document itself, never read as a resource.
pub const WELL_KNOWN_CORE: &str = "/.well-known/core";

/// The resource paths worth reading from a node's links, in order and without repeats:
/// local paths (`/led`, or `led` relative to the root), not the discovery document, not the
/// root itself, nothing with a query or another host's URI.
pub fn resource_paths(links: &[Link<'_>]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for link in links {
        let target = link.target.trim();
        if target.contains("://") || target.starts_with("//") || target.contains(['?', '#']) {
            continue;
        }
        let path = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("/{target}")
        };
        let path = path.trim_end_matches('/');
        if path.is_empty() || path == WELL_KNOWN_CORE || path.contains("//") {
            continue;
        }
        if !paths.iter().any(|p| p == path) {
            paths.push(path.to_owned());
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Vec<String> {
        resource_paths(&parse(text).expect(text))
    }

    #[test]
    fn reads_what_riot_answers() {
        assert_eq!(
            targets("</board>,</led>,</mcu>,</name>,</os>"),
            ["/board", "/led", "/mcu", "/name", "/os"]
        );
    }

    #[test]
    fn reads_parameters_quotes_and_whitespace() {
        let text = "</.well-known/core>;ct=40, \n </>;title=\"General Info\";ct=0,\
                    </time>;if=\"clock\";rt=\"ticks\";title=\"Internal, Clock; \\\"x\\\"\";ct=0;obs,\
                    <sensors/temp>;rt=temperature , </async>;ct=0";
        let links = parse(text).expect("parses");
        assert_eq!(links.len(), 5);
        assert_eq!(links[2].target, "/time");
        assert_eq!(
            links[2].params,
            [
                ("if", Some("clock".to_owned())),
                ("rt", Some("ticks".to_owned())),
                ("title", Some("Internal, Clock; \"x\"".to_owned())),
                ("ct", Some("0".to_owned())),
                ("obs", None),
            ]
        );
        assert_eq!(
            resource_paths(&links),
            ["/time", "/sensors/temp", "/async"],
            "not the discovery document, not the root"
        );
    }

    #[test]
    fn skips_foreign_targets_and_repeats() {
        assert_eq!(
            targets("<coap://other/x>,</a?q=1>,</b>,</b>,</c/>,<//host/d>"),
            ["/b", "/c"]
        );
        assert_eq!(targets(""), Vec::<String>::new());
        assert_eq!(targets("  \n"), Vec::<String>::new());
    }

    #[test]
    fn refuses_broken_documents() {
        for (text, reason) in [
            ("/led", "expected '<'"),
            ("</led", "unterminated target"),
            ("</led>;title=\"x", "unterminated quoted string"),
            ("</led> </name>", "expected ';' or ','"),
            ("</led>;=1", "empty parameter name"),
            ("</a>,", "expected '<'"),
            ("<<x>", "'<' inside a target"),
        ] {
            assert_eq!(parse(text).expect_err(text).reason, reason, "{text}");
        }
    }
}
