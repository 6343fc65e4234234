//! Who is calling, and what they may touch.
//!
//! Callers are identified by a bearer token (`authorization: Bearer …`) or,
//! with mutual TLS, by a name in their client certificate. Each identity has
//! scopes: path prefixes with permissions. With no identities configured the
//! server is open (every caller may do everything), as on a loopback-only dev
//! box; configure one and every `ferry.v1.Ferry` call must authenticate.
//!
//! Tokens are stored only as SHA-256 digests and compared in constant time.
//! A token is a random secret (`ferry token new` makes 32 bytes), so a plain
//! digest is as good as a password hash here and costs nothing per call.

use std::fmt;
use std::sync::Arc;

use ferry_store::StorePath;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::rate::{RateLimiter, Throttle};
use crate::status::ServiceError;

/// What a scope allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Download and stat files.
    Read,
    /// Upload files (including resumable sessions).
    Write,
    /// Delete files and empty directories.
    Delete,
    /// List directories (and stat what the listing shows).
    List,
}

impl Permission {
    pub const ALL: [Permission; 4] = [Permission::Read, Permission::Write, Permission::Delete, Permission::List];

    fn bit(self) -> u8 {
        match self {
            Permission::Read => 1,
            Permission::Write => 2,
            Permission::Delete => 4,
            Permission::List => 8,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "read" => Permission::Read,
            "write" => Permission::Write,
            "delete" => Permission::Delete,
            "list" => Permission::List,
            _ => return None,
        })
    }

    fn verb(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Delete => "delete",
            Permission::List => "list",
        }
    }
}

/// A path prefix and what may be done under it. The prefix is matched by
/// whole segments: `builds` covers `builds` and `builds/x`, not `buildsx`.
#[derive(Clone, PartialEq, Eq)]
pub struct Scope {
    /// `None` is the whole tree.
    prefix: Option<StorePath>,
    allow: u8,
}

impl Scope {
    /// `prefix` is a store path (a trailing `/` is allowed; `""` or `"/"`
    /// means everything).
    pub fn new(prefix: &str, allow: impl IntoIterator<Item = Permission>) -> Result<Self, String> {
        let trimmed = prefix.trim_end_matches('/');
        let prefix = match trimmed {
            "" => None,
            raw => Some(StorePath::parse(raw).map_err(|e| format!("scope prefix {prefix:?}: {e}"))?),
        };
        Ok(Self { prefix, allow: allow.into_iter().fold(0, |bits, p| bits | p.bit()) })
    }

    /// Everything, everywhere.
    pub fn everything() -> Self {
        Self { prefix: None, allow: Permission::ALL.iter().fold(0, |bits, p| bits | p.bit()) }
    }

    fn allows(&self, permission: Permission) -> bool {
        self.allow & permission.bit() != 0
    }

    /// `path` is the prefix or lies under it (`None` is the root).
    fn covers(&self, path: Option<&StorePath>) -> bool {
        match (&self.prefix, path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(prefix), Some(path)) => is_within(path, prefix),
        }
    }

    /// `dir` is a directory on the way to the prefix (`None` is the root).
    fn leads_to(&self, dir: Option<&StorePath>) -> bool {
        match (&self.prefix, dir) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(prefix), Some(dir)) => prefix != dir && is_within(prefix, dir),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verbs: Vec<_> = Permission::ALL.iter().filter(|p| self.allows(**p)).map(|p| p.verb()).collect();
        write!(f, "{}:{}", self.prefix.as_ref().map_or("/", StorePath::as_str), verbs.join(","))
    }
}

fn is_within(path: &StorePath, prefix: &StorePath) -> bool {
    let (path, prefix) = (path.as_str(), prefix.as_str());
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// One configured identity: its name (for logs), scopes and optional limits.
#[derive(Debug, Clone)]
pub struct Grant {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Calls per second (bursts up to one second's worth); RESOURCE_EXHAUSTED beyond.
    pub requests_per_second: Option<f64>,
    /// Payload bytes per second, up and down together; transfers are slowed to it.
    pub bytes_per_second: Option<u64>,
}

/// How identities are recognised.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// Bearer tokens, by the SHA-256 of the secret.
    pub tokens: Vec<([u8; 32], Grant)>,
    /// mTLS clients, by a DNS or URI subject alternative name of their
    /// certificate (which the TLS layer has verified against the client CA).
    pub clients: Vec<(String, Grant)>,
}

impl AuthOptions {
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && self.clients.is_empty()
    }
}

/// SHA-256 of a token, as stored in the configuration.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Principal {
    name: String,
    scopes: Vec<Scope>,
    rate: Option<RateLimiter>,
    throttle: Option<Throttle>,
}

impl Principal {
    fn new(grant: &Grant) -> Self {
        Self {
            name: grant.name.clone(),
            scopes: grant.scopes.clone(),
            rate: grant.requests_per_second.map(RateLimiter::per_second),
            throttle: grant.bytes_per_second.map(Throttle::per_second),
        }
    }

    fn anonymous() -> Self {
        Self { name: "anonymous".into(), scopes: vec![Scope::everything()], rate: None, throttle: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Refuses `permission` on `path` unless a scope grants it.
    pub fn check(&self, permission: Permission, path: &StorePath) -> Result<(), ServiceError> {
        if self.scopes.iter().any(|s| s.allows(permission) && s.covers(Some(path))) {
            return Ok(());
        }
        Err(self.denied(permission.verb(), path.as_str()))
    }

    /// Stat: allowed on what the caller may read or list, and on the
    /// directories leading there (so a client can find its way in).
    pub fn check_stat(&self, path: &StorePath) -> Result<(), ServiceError> {
        let sees = |s: &Scope| {
            (s.allows(Permission::Read) || s.allows(Permission::List))
                && (s.covers(Some(path)) || s.leads_to(Some(path)))
        };
        match self.scopes.iter().any(sees) {
            true => Ok(()),
            false => Err(self.denied("stat", path.as_str())),
        }
    }

    /// List: allowed in directories under a list scope, and in the
    /// directories leading to one, where [`Principal::shows`] filters.
    pub fn check_list(&self, dir: Option<&StorePath>) -> Result<(), ServiceError> {
        let ok = self.scopes.iter().any(|s| s.allows(Permission::List) && (s.covers(dir) || s.leads_to(dir)));
        match ok {
            true => Ok(()),
            false => Err(self.denied("list", dir.map_or("/", StorePath::as_str))),
        }
    }

    /// Whether a listing shows `entry`: it is under a list scope, or a
    /// directory on the way to one.
    pub fn shows(&self, entry: &StorePath) -> bool {
        self.scopes.iter().any(|s| s.allows(Permission::List) && (s.covers(Some(entry)) || s.leads_to(Some(entry))))
    }

    /// Whether listings need filtering at all (the common case needs none).
    pub fn sees_everything(&self) -> bool {
        self.scopes.iter().any(|s| s.allows(Permission::List) && s.prefix.is_none())
    }

    /// Counts one call against the caller's request rate.
    pub fn admit_call(&self) -> Result<(), ServiceError> {
        match &self.rate {
            Some(rate) => rate.acquire().map_err(|retry_after| ServiceError::Busy {
                message: format!(
                    "'{}' is over its limit of {} requests per second",
                    self.name,
                    rate.per_second_limit()
                ),
                retry_after,
            }),
            None => Ok(()),
        }
    }

    /// Waits until the caller's bandwidth allows `bytes` more.
    pub async fn pace(&self, bytes: usize) {
        if let Some(throttle) = &self.throttle {
            throttle.consume(bytes as u64).await;
        }
    }

    fn denied(&self, verb: &str, path: &str) -> ServiceError {
        ServiceError::PermissionDenied(format!("'{}' may not {verb} '{path}'", self.name))
    }
}

/// Turns request credentials into a [`Principal`].
#[derive(Debug)]
pub struct Authenticator {
    open: Arc<Principal>,
    tokens: Vec<([u8; 32], Arc<Principal>)>,
    clients: Vec<(String, Arc<Principal>)>,
    /// With mTLS but no client rules, a verified certificate is enough.
    trust_client_certificates: bool,
}

impl Authenticator {
    pub fn new(options: &AuthOptions, mtls: bool) -> Self {
        Self {
            open: Arc::new(Principal::anonymous()),
            tokens: options.tokens.iter().map(|(digest, g)| (*digest, Arc::new(Principal::new(g)))).collect(),
            clients: options.clients.iter().map(|(name, g)| (name.clone(), Arc::new(Principal::new(g)))).collect(),
            trust_client_certificates: mtls && options.is_open(),
        }
    }

    /// The caller behind `metadata` and, with mTLS, `client_names` (the
    /// verified certificate's subject alternative names).
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        client_names: &[String],
    ) -> Result<Arc<Principal>, ServiceError> {
        if let Some(value) = metadata.get("authorization") {
            // The scheme name is case-insensitive (RFC 9110 §11.1).
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
                .map(|(_, token)| token.trim())
                .ok_or_else(|| {
                    ServiceError::Unauthenticated("the authorization header must be 'Bearer TOKEN'".into())
                })?;
            return self.by_token(token);
        }
        if let Some(principal) =
            self.clients.iter().find(|(name, _)| client_names.iter().any(|n| same_name(n, name))).map(|(_, p)| p)
        {
            return Ok(principal.clone());
        }
        if self.tokens.is_empty() && self.clients.is_empty() {
            // Open server, or mTLS alone: the TLS layer already refused
            // clients without a certificate from the configured CA.
            return Ok(self.open.clone());
        }
        if self.trust_client_certificates && !client_names.is_empty() {
            return Ok(self.open.clone());
        }
        Err(ServiceError::Unauthenticated("this server needs a token (authorization: Bearer TOKEN)".into()))
    }

    fn by_token(&self, token: &str) -> Result<Arc<Principal>, ServiceError> {
        let presented = token_digest(token);
        // Every configured digest is compared, in constant time, whatever matches.
        let mut found = None;
        for (digest, principal) in &self.tokens {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(principal);
            }
        }
        found.cloned().ok_or_else(|| ServiceError::Unauthenticated("the token is not valid".into()))
    }
}

/// DNS names compare without regard to case; URIs (SPIFFE IDs) exactly.
fn same_name(presented: &str, configured: &str) -> bool {
    match configured.contains("://") {
        true => presented == configured,
        false => presented.eq_ignore_ascii_case(configured),
    }
}

/// The DNS and URI subject alternative names of a client certificate that
/// the TLS layer has verified. Unparseable certificates yield none.
pub fn certificate_names(der: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert.valid_dns_names().chain(cert.valid_uri_names()).map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> StorePath {
        StorePath::parse(raw).unwrap()
    }

    fn principal(scopes: Vec<Scope>) -> Principal {
        Principal::new(&Grant { name: "t".into(), scopes, requests_per_second: None, bytes_per_second: None })
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = principal(vec![Scope::new("builds/", [Permission::Read]).unwrap()]);
        assert!(p.check(Permission::Read, &path("builds")).is_ok());
        assert!(p.check(Permission::Read, &path("builds/a/b")).is_ok());
        assert!(p.check(Permission::Read, &path("buildsx")).is_err());
        assert!(p.check(Permission::Write, &path("builds/a")).is_err());
    }

    #[test]
    fn listings_show_the_way_to_a_scope_and_nothing_beside_it() {
        let p = principal(vec![Scope::new("a/b", [Permission::List]).unwrap()]);
        assert!(p.check_list(None).is_ok());
        assert!(p.check_list(Some(&path("a"))).is_ok());
        assert!(p.check_list(Some(&path("a/b/c"))).is_ok());
        assert!(p.check_list(Some(&path("c"))).is_err());
        assert!(p.shows(&path("a")));
        assert!(p.shows(&path("a/b")));
        assert!(p.shows(&path("a/b/x")));
        assert!(!p.shows(&path("a/c")));
        assert!(!p.shows(&path("z")));
        assert!(!p.sees_everything());
    }

    #[test]
    fn tokens_are_matched_by_digest() {
        let grant = Grant { name: "ci".into(), scopes: vec![], requests_per_second: None, bytes_per_second: None };
        let auth =
            Authenticator::new(&AuthOptions { tokens: vec![(token_digest("s3cret"), grant)], clients: vec![] }, false);
        let mut md = MetadataMap::new();
        assert!(matches!(auth.authenticate(&md, &[]), Err(ServiceError::Unauthenticated(_))));
        md.insert("authorization", "Bearer s3cret".parse().unwrap());
        assert_eq!(auth.authenticate(&md, &[]).unwrap().name(), "ci");
        md.insert("authorization", "Bearer s3cre".parse().unwrap());
        assert!(matches!(auth.authenticate(&md, &[]), Err(ServiceError::Unauthenticated(_))));
    }
}
