//! Which role each admin route needs: the one table the auth layer reads, keyed by method
//! and route. A route missing from it needs `admin`, so a route added without a line here
//! fails closed; a test checks that every route the router declares has its line.

use axum::http::Method;

use crate::api::token::Role;

/// What a route asks of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: liveness, metrics (scrapers), the dashboard page (it asks for a token and
    /// sends it on its API calls) and the API description. Served outside the auth layer.
    Public,
    /// A token with this role or a higher one.
    Role(Role),
}

use Access::{Public, Role as R};

/// Every admin route: (method, route as the router declares it, access).
pub const TABLE: &[(&str, &str, Access)] = &[
    ("GET", "/healthz", Public),
    ("GET", "/metrics", Public),
    ("GET", "/", Public),
    ("GET", "/openapi.json", Public),
    ("GET", "/v1/services", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}/history", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}/series", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}/logs", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}/releases", R(Role::Viewer)),
    ("GET", "/v1/services/{svc}/releases/{id}", R(Role::Viewer)),
    ("POST", "/v1/services/{svc}/switch", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/rollback", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/stop", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/shadow", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/releases", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/releases/{id}/approve", R(Role::Operator)),
    ("POST", "/v1/services/{svc}/releases/{id}/abort", R(Role::Operator)),
    ("POST", "/v1/reload", R(Role::Admin)),
    ("GET", "/v1/fleet", R(Role::Viewer)),
];

/// The role a call of `route` (as matched, e.g. `/v1/services/{svc}`) with `method` needs.
/// HEAD is answered by the GET handler, so it needs what GET needs.
pub fn needed(method: &Method, route: &str) -> Role {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    TABLE
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, a)| match a {
            R(role) => *role,
            // A public route behind the auth layer would be a wiring mistake: any token will do.
            Public => Role::Viewer,
        })
        .unwrap_or(Role::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_viewer_changes_operator_reload_admin_and_unknown_admin() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(needed(&get, "/v1/services"), Role::Viewer);
        assert_eq!(needed(&Method::HEAD, "/v1/services/{svc}/history"), Role::Viewer);
        assert_eq!(needed(&post, "/v1/services/{svc}/switch"), Role::Operator);
        assert_eq!(needed(&post, "/v1/services/{svc}/releases/{id}/abort"), Role::Operator);
        assert_eq!(needed(&post, "/v1/reload"), Role::Admin);
        // Not in the table: closed by default.
        assert_eq!(needed(&post, "/v1/services/{svc}/delete"), Role::Admin);
        assert_eq!(needed(&Method::DELETE, "/v1/services/{svc}"), Role::Admin);
        // Every GET of the API is a read, every POST a change: no exception slipped in.
        for (m, r, a) in TABLE {
            if let Access::Role(role) = a {
                let want = match (*m, *r) {
                    ("POST", "/v1/reload") => Role::Admin,
                    ("GET", _) => Role::Viewer,
                    _ => Role::Operator,
                };
                assert_eq!(*role, want, "{m} {r}");
            }
        }
    }

    #[test]
    fn roles_are_ordered_by_what_they_allow() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
