//! Bearer-token checks for mutating calls (`authorization: Bearer <token>` metadata).

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

/// The metadata key tokens travel in.
pub const AUTHORIZATION: &str = "authorization";

/// Checks that `metadata` carries `Bearer <expected>`. With `expected == None` auth is off.
/// Returns `UNAUTHENTICATED` naming what was missing or wrong (never echoing the token).
pub fn check_bearer(metadata: &MetadataMap, expected: Option<&str>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing `authorization: Bearer <token>` metadata on a mutating call",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("`authorization` metadata is not `Bearer <token>`")
        })?;
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated("bearer token does not match"))
    }
}

/// Adds `authorization: Bearer <token>` to a request (no-op without a token).
pub fn with_bearer<T>(mut request: Request<T>, token: Option<&str>) -> Result<Request<T>, Status> {
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Status::invalid_argument("token holds characters not allowed in metadata")
        })?;
        request.metadata_mut().insert(AUTHORIZATION, value);
    }
    Ok(request)
}

/// Compares without an early exit so timing does not reveal the matching prefix length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_checks() {
        let ok = with_bearer(Request::new(()), Some("s3cret")).unwrap();
        assert!(check_bearer(ok.metadata(), Some("s3cret")).is_ok());
        assert!(check_bearer(ok.metadata(), None).is_ok());
        let wrong = check_bearer(ok.metadata(), Some("other")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = check_bearer(Request::new(()).metadata(), Some("s3cret")).unwrap_err();
        assert!(none.message().contains("missing"), "{}", none.message());
        let mut basic = Request::new(());
        basic
            .metadata_mut()
            .insert(AUTHORIZATION, MetadataValue::from_static("Basic abc"));
        assert!(check_bearer(basic.metadata(), Some("abc")).is_err());
    }
}
