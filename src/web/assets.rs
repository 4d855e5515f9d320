//! The dashboard's files (`web/`), embedded in release builds and read from disk in debug
//! builds (edit and reload). Served with their MIME type, an `ETag` for cheap revalidation,
//! gzip when the browser takes it (compressed once, then kept), and the security headers the
//! page is written to satisfy. Gzip only: brotli's encoder and its tables cost the board's
//! binary ~0.9 MB (docs/benchmarks.md) to save a few KiB on a dashboard of ~120 KiB.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Files;

/// The policy the page satisfies: no inline script or style, websockets to any broker (the
/// standalone dashboard talks to another host), images from anywhere (a camera URL).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data: http: https:; style-src 'self'; script-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Files smaller than this are not worth compressing.
const COMPRESS_MIN_BYTES: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Encoding {
    Gzip,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
        }
    }

    /// The encoding the request accepts, if any; `q=0` refuses one.
    fn negotiate(headers: &HeaderMap) -> Option<Encoding> {
        let accepted = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
        let accepts = |token: &str| {
            accepted.split(',').any(|item| {
                let mut parts = item.split(';').map(str::trim);
                parts.next() == Some(token)
                    && !parts.any(|p| p.replace(' ', "").starts_with("q=0") && !p.contains("q=0."))
            })
        };
        accepts("gzip").then_some(Encoding::Gzip)
    }

    fn compress(self, data: &[u8]) -> Bytes {
        match self {
            Encoding::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                encoder
                    .write_all(data)
                    .expect("compressing into memory cannot fail");
                Bytes::from(
                    encoder
                        .finish()
                        .expect("compressing into memory cannot fail"),
                )
            }
        }
    }
}

/// A compressed file: its path, its content's hash (a file edited on disk in a debug build is
/// compressed anew), and the encoding.
type CompressedKey = (String, [u8; 32], Encoding);

/// Compressed files, made on first request and kept: there are a dozen of them.
#[derive(Clone, Default)]
pub struct Compressed {
    cache: Arc<Mutex<HashMap<CompressedKey, Bytes>>>,
}

/// `/` is the page; its files are served at the root and under `/static/` (pyaiot's paths).
pub fn routes() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/static/{*path}", get(file))
        .route("/{*path}", get(file))
        .with_state(Compressed::default())
}

async fn index(State(cache): State<Compressed>, headers: HeaderMap) -> Response {
    serve("index.html", &headers, &cache)
}

async fn file(
    Path(path): Path<String>,
    State(cache): State<Compressed>,
    headers: HeaderMap,
) -> Response {
    serve(&path, &headers, &cache)
}

fn compressible(mime: &str) -> bool {
    mime.starts_with("text/")
        || mime.contains("javascript")
        || mime.contains("json")
        || mime.contains("svg")
}

/// Headers every response of ours carries, whatever its type.
pub fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn serve(path: &str, request: &HeaderMap, cache: &Compressed) -> Response {
    let Some(file) = Files::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}\"",
        hash[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mime = file.metadata.mimetype().to_owned();
    let mut response = if request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let encoding = Encoding::negotiate(request)
            .filter(|_| compressible(&mime) && file.data.len() >= COMPRESS_MIN_BYTES);
        let mut response = match encoding {
            Some(encoding) => {
                let key = (path.to_owned(), hash, encoding);
                let mut cache = cache.cache.lock().expect("no panics while compressing");
                let body = cache
                    .entry(key)
                    .or_insert_with(|| encoding.compress(&file.data))
                    .clone();
                let mut response = Response::new(Body::from(body));
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    HeaderValue::from_static(encoding.token()),
                );
                response
            }
            None => Response::new(Body::from(Bytes::from(file.data.into_owned()))),
        };
        if let Ok(value) = HeaderValue::from_str(&mime) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    // File names carry no version, so browsers must ask again; the ETag makes that a 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    security_headers(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("ascii"),
        );
        headers
    }

    #[test]
    fn negotiates_the_best_accepted_encoding() {
        assert_eq!(
            Encoding::negotiate(&accept("gzip, deflate, br")),
            Some(Encoding::Gzip)
        );
        assert_eq!(Encoding::negotiate(&accept("gzip")), Some(Encoding::Gzip));
        assert_eq!(
            Encoding::negotiate(&accept("br, gzip;q=0.5")),
            Some(Encoding::Gzip)
        );
        assert_eq!(Encoding::negotiate(&accept("br, gzip;q=0")), None);
        assert_eq!(Encoding::negotiate(&accept("br")), None);
        assert_eq!(Encoding::negotiate(&accept("identity")), None);
        assert_eq!(Encoding::negotiate(&HeaderMap::new()), None);
    }

    #[test]
    fn compressed_bodies_decompress_to_the_original() {
        use std::io::Read as _;
        let data = "aiot dashboard ".repeat(200).into_bytes();
        let gzip = Encoding::Gzip.compress(&data);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .read_to_end(&mut plain)
            .expect("gunzip");
        assert_eq!(plain, data);
        assert!(gzip.len() < data.len() / 5);
    }
}
