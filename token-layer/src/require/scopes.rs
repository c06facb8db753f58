use http::Method;

/// Least privilege per route: which scopes and roles a request needs, by path prefix (and
/// optionally method). The longest matching prefix wins; prefixes match whole path segments
/// (`/admin` matches `/admin` and `/admin/users`, not `/administrator`).
///
/// A rule for `GET` also covers `HEAD`: routers (axum, hyper services) answer `HEAD` with the
/// `GET` handler, so a `HEAD` request must need what the `GET` would. A rule written for `HEAD`
/// itself takes precedence over it.
#[derive(Debug, Clone, Default)]
pub struct ScopeTable {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    method: Option<Method>,
    prefix: String,
    scopes: Vec<String>,
    roles: Vec<String>,
}

impl ScopeTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests under `prefix` (any method) need every scope in `scopes`.
    pub fn route<I: IntoIterator<Item = S>, S: Into<String>>(
        self,
        prefix: &str,
        scopes: I,
    ) -> Self {
        self.push(None, prefix, scopes, Vec::<String>::new())
    }

    /// Requests with `method` under `prefix` need every scope in `scopes`. A `GET` rule also
    /// applies to `HEAD` requests (unless a `HEAD` rule exists for the same prefix).
    pub fn route_method<I: IntoIterator<Item = S>, S: Into<String>>(
        self,
        method: Method,
        prefix: &str,
        scopes: I,
    ) -> Self {
        self.push(Some(method), prefix, scopes, Vec::<String>::new())
    }

    /// Requests under `prefix` need every role in `roles` (the `roles` claim).
    pub fn route_roles<I: IntoIterator<Item = S>, S: Into<String>>(
        self,
        prefix: &str,
        roles: I,
    ) -> Self {
        self.push(None, prefix, Vec::<String>::new(), roles)
    }

    fn push<I, S, J, T>(mut self, method: Option<Method>, prefix: &str, scopes: I, roles: J) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        J: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.routes.push(Route {
            method,
            prefix: prefix.trim_end_matches('/').to_owned(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            roles: roles.into_iter().map(Into::into).collect(),
        });
        self
    }

    pub(crate) fn lookup(&self, method: &Method, path: &str) -> Option<(&[String], &[String])> {
        // How closely a route's method fits: 2 for the same method, 1 for a GET rule applied to
        // HEAD (the GET handler answers it), 0 for an any-method rule.
        let fit = |r: &Route| match &r.method {
            None => Some(0u8),
            Some(m) if m == method => Some(2),
            Some(m) if *m == Method::GET && *method == Method::HEAD => Some(1),
            Some(_) => None,
        };
        self.routes
            .iter()
            .filter_map(|r| fit(r).map(|f| (r, f)))
            .filter(|(r, _)| {
                r.prefix.is_empty()
                    || path == r.prefix
                    || path
                        .strip_prefix(r.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            // Longest prefix first; then the closest method fit.
            .max_by_key(|(r, f)| (r.prefix.len(), *f))
            .map(|(r, _)| (r.scopes.as_slice(), r.roles.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries_and_method_specific_first() {
        let t = ScopeTable::new()
            .route("/", ["base"])
            .route("/orders", ["read"])
            .route_method(Method::POST, "/orders", ["write"])
            .route("/orders/admin/", ["admin"]);
        let scopes = |m: Method, p: &str| t.lookup(&m, p).map(|r| r.0.to_vec());
        assert_eq!(
            scopes(Method::GET, "/orders/1"),
            Some(vec!["read".to_owned()])
        );
        assert_eq!(
            scopes(Method::POST, "/orders"),
            Some(vec!["write".to_owned()])
        );
        assert_eq!(
            scopes(Method::GET, "/orders/admin/x"),
            Some(vec!["admin".to_owned()])
        );
        assert_eq!(
            scopes(Method::GET, "/ordersx"),
            Some(vec!["base".to_owned()])
        );
        assert_eq!(ScopeTable::new().lookup(&Method::GET, "/"), None);
    }

    #[test]
    fn a_get_rule_covers_head_and_a_head_rule_wins_over_it() {
        let t = ScopeTable::new().route("/", ["base"]).route_method(
            Method::GET,
            "/reports",
            ["reports:read"],
        );
        let scopes = |m: Method, p: &str| t.lookup(&m, p).map(|r| r.0.to_vec());
        assert_eq!(
            scopes(Method::HEAD, "/reports/7"),
            Some(vec!["reports:read".to_owned()])
        );
        // A GET rule does not leak onto other methods.
        assert_eq!(
            scopes(Method::POST, "/reports/7"),
            Some(vec!["base".to_owned()])
        );
        let t = t.route_method(Method::HEAD, "/reports", ["reports:head"]);
        assert_eq!(
            t.lookup(&Method::HEAD, "/reports").map(|r| r.0.to_vec()),
            Some(vec!["reports:head".to_owned()])
        );
    }
}
