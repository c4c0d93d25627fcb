//! The console's static files, compiled into the binary (`include_bytes!`): the NHS.UK
//! frontend stylesheet (vendored by `scripts/refresh-nhsuk-frontend.sh`, MIT, see
//! `assets/LICENSE`) and the icons it uses.
//!
//! Invariants: a file's name carries its version (`nhsuk-frontend-10.6.1.min.css`), so
//! it is served `immutable` for a year and a new version is a new URL; the stylesheet
//! goes gzip-compressed (precompressed at refresh) to browsers that accept it, which is
//! what keeps a page under its weight budget; nothing else is served from here.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The vendored `nhsuk-frontend` version (also in the file names).
pub const NHSUK_VERSION: &str = "10.6.1";

/// Where pages link the stylesheet.
pub const CSS_PATH: &str = "/console/style/nhsuk-frontend-10.6.1.min.css";

/// Where pages link the console's own stylesheet (after the NHS.UK one).
pub const CONSOLE_CSS_PATH: &str = "/console/style/sprig-console-1.css";

/// Where pages link the favicon.
pub const FAVICON_PATH: &str = "/console/assets/images/favicon.svg";

const CSS_NAME: &str = "nhsuk-frontend-10.6.1.min.css";
const CSS: &[u8] = include_bytes!("assets/nhsuk-frontend-10.6.1.min.css");
const CSS_GZ: &[u8] = include_bytes!("assets/nhsuk-frontend-10.6.1.min.css.gz");
/// The console's own few rules (tiny: sent as is).
const CONSOLE_CSS_NAME: &str = "sprig-console-1.css";
const CONSOLE_CSS: &[u8] = include_bytes!("assets/sprig-console-1.css");

/// The icons, by file name.
const IMAGES: &[(&str, &[u8])] = &[
    ("favicon.svg", include_bytes!("assets/images/favicon.svg")),
    (
        "nhsuk-icon-arrow-down.svg",
        include_bytes!("assets/images/nhsuk-icon-arrow-down.svg"),
    ),
    (
        "nhsuk-icon-arrow-up-down.svg",
        include_bytes!("assets/images/nhsuk-icon-arrow-up-down.svg"),
    ),
    (
        "nhsuk-icon-arrow-up.svg",
        include_bytes!("assets/images/nhsuk-icon-arrow-up.svg"),
    ),
    (
        "nhsuk-icon-cross.svg",
        include_bytes!("assets/images/nhsuk-icon-cross.svg"),
    ),
];

const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "There is no such file").into_response()
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// `GET /console/style/{file}`: the stylesheet (open: the sign-in page uses it).
pub async fn style(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let css = HeaderValue::from_static("text/css; charset=utf-8");
    if file == CONSOLE_CSS_NAME {
        return (
            [
                (header::CONTENT_TYPE, css),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            CONSOLE_CSS,
        )
            .into_response();
    }
    if file != CSS_NAME {
        return not_found();
    }
    let vary = HeaderValue::from_static("Accept-Encoding");
    if accepts_gzip(&headers) {
        (
            [
                (header::CONTENT_TYPE, css),
                (header::CONTENT_ENCODING, HeaderValue::from_static("gzip")),
                (header::CACHE_CONTROL, IMMUTABLE),
                (header::VARY, vary),
            ],
            CSS_GZ,
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, css),
                (header::CACHE_CONTROL, IMMUTABLE),
                (header::VARY, vary),
            ],
            CSS,
        )
            .into_response()
    }
}

/// `GET /console/assets/images/{file}`: an icon (for signed-in people only).
pub async fn image(Path(file): Path<String>) -> Response {
    match IMAGES.iter().find(|(name, _)| *name == file) {
        Some((_, bytes)) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("image/svg+xml"),
                ),
                (header::CACHE_CONTROL, IMMUTABLE),
            ],
            *bytes,
        )
            .into_response(),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_is_the_vendored_version_and_its_icons_are_served() {
        assert!(CSS_PATH.ends_with(CSS_NAME));
        assert!(CSS_NAME.contains(NHSUK_VERSION));
        assert!(CONSOLE_CSS_PATH.ends_with(CONSOLE_CSS_NAME));
        let css = std::str::from_utf8(CSS).expect("utf-8");
        for url in css.split("url(/console/assets/images/").skip(1) {
            let name = url.split(')').next().expect("a name");
            assert!(
                IMAGES.iter().any(|(n, _)| *n == name),
                "{name} is used by the CSS but not served"
            );
        }
        // The gzip copy is of this CSS (its trailer holds the length mod 2^32).
        let n = CSS_GZ.len();
        let size = u32::from_le_bytes([CSS_GZ[n - 4], CSS_GZ[n - 3], CSS_GZ[n - 2], CSS_GZ[n - 1]]);
        assert_eq!(size as usize, CSS.len());
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
        assert!(accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, br"),
        );
        assert!(!accepts_gzip(&headers));
    }
}
