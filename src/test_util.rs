//! Beside the flow: helpers for unit tests.
//!
//! Helpers for unit tests.

use http::request::Parts;

/// A request head with this target and these headers.
pub(crate) fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}
