use http::Method;

/// Least privilege per route: which scopes and roles a request needs, by path prefix (and
/// optionally method). The longest matching prefix wins; prefixes match whole path segments
/// (`/admin` matches `/admin` and `/admin/users`, not `/administrator`).
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

    /// Requests with `method` under `prefix` need every scope in `scopes`.
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
        self.routes
            .iter()
            .filter(|r| r.method.as_ref().is_none_or(|m| m == method))
            .filter(|r| {
                r.prefix.is_empty()
                    || path == r.prefix
                    || path
                        .strip_prefix(r.prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            // Longest prefix first; a method-specific route beats an any-method one.
            .max_by_key(|r| (r.prefix.len(), r.method.is_some()))
            .map(|r| (r.scopes.as_slice(), r.roles.as_slice()))
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
}
