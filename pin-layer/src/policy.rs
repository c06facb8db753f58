//! Pin policies: which hosts are pinned to which keys, how strictly, and until when.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::pin::{Pin, PinParseError};

/// What a failed pin check does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse the connection (the default).
    #[default]
    Enforce,
    /// Let the connection through, and report the violation.
    ReportOnly,
}

impl Mode {
    /// `enforce` or `report_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::ReportOnly => "report_only",
        }
    }
}

/// Where on the verified chain a pin may match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Anywhere on the verified chain (the default).
    #[default]
    Any,
    /// The end-entity (leaf) certificate.
    Leaf,
    /// An intermediate certificate.
    Intermediate,
    /// The trust anchor (root), whether or not the server sent it.
    Root,
}

impl Position {
    /// `any`, `leaf`, `intermediate` or `root`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Leaf => "leaf",
            Self::Intermediate => "intermediate",
            Self::Root => "root",
        }
    }

    pub(crate) fn allows(self, at: Position) -> bool {
        self == Self::Any || self == at
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A canonical host pattern: an exact host or IP address, `*.base` (exactly one more label) or
/// `**.base` (zero or more labels).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPattern {
    kind: PatternKind,
    base: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PatternKind {
    Exact,
    OneLabel,
    AnyDepth,
}

impl HostPattern {
    /// Parses and canonicalises a pattern (lower case, no trailing dot, IDNA to ASCII).
    ///
    /// # Errors
    /// A wildcard anywhere but as the whole leftmost label, a wildcard over a single-label base
    /// (`*.com`), a wildcard over an IP address, or a name that is not a valid host.
    pub fn parse(pattern: &str) -> Result<Self, PolicyError> {
        let err = |reason: &'static str| PolicyError::InvalidPattern {
            pattern: pattern.chars().take(120).collect(),
            reason,
        };
        let p = pattern.trim();
        let (kind, rest) = if let Some(rest) = p.strip_prefix("**.") {
            (PatternKind::AnyDepth, rest)
        } else if let Some(rest) = p.strip_prefix("*.") {
            (PatternKind::OneLabel, rest)
        } else {
            (PatternKind::Exact, p)
        };
        if rest.contains('*') {
            return Err(err(
                "a wildcard may only be the whole leftmost label (`*.example.com` or `**.example.com`)",
            ));
        }
        let ip = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(rest);
        if let Ok(ip) = ip.parse::<IpAddr>() {
            if kind != PatternKind::Exact {
                return Err(err("an IP address cannot carry a wildcard"));
            }
            return Ok(Self {
                kind,
                base: ip.to_string(),
            });
        }
        let base = canonical_host(rest).ok_or_else(|| err("not a valid host name"))?;
        if kind != PatternKind::Exact && !base.contains('.') {
            return Err(err(
                "a wildcard needs a base of at least two labels (`*.example.com`, not `*.com`)",
            ));
        }
        Ok(Self { kind, base })
    }

    /// Whether `host` (already canonical) matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = match canonical_host_or_ip(host) {
            Some(h) => h,
            None => return false,
        };
        self.matches_canonical(&host)
    }

    fn matches_canonical(&self, host: &str) -> bool {
        match self.kind {
            PatternKind::Exact => host == self.base,
            PatternKind::OneLabel => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == self.base),
            PatternKind::AnyDepth => {
                host == self.base
                    || (host.len() > self.base.len() + 1
                        && host.ends_with(&self.base)
                        && host.as_bytes()[host.len() - self.base.len() - 1] == b'.')
            }
        }
    }

    /// Whether this pattern covers subdomains (`*.` or `**.`).
    pub fn is_wildcard(&self) -> bool {
        self.kind != PatternKind::Exact
    }

    /// Whether this pattern covers any depth of subdomain (`**.`), the HPKP `includeSubDomains`.
    pub fn includes_subdomains(&self) -> bool {
        self.kind == PatternKind::AnyDepth
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PatternKind::Exact => f.write_str(&self.base),
            PatternKind::OneLabel => write!(f, "*.{}", self.base),
            PatternKind::AnyDepth => write!(f, "**.{}", self.base),
        }
    }
}

impl FromStr for HostPattern {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The one canonical form of a DNS name, used for policy patterns and for the server name of
/// every handshake: lower case, no trailing dot, UTS-46 mapped to ASCII (punycode), then checked
/// against the DNS-name syntax rustls itself accepts for a server name. `None` if the name has
/// no canonical form.
///
/// The mapping is UTS-46 *without* STD3 rules and hyphen checks, the way the TLS stack matches
/// names: `a_b.example.com`, `ab--cd.example.com` and `r3---sn-4g5e.example.com` (CDN node
/// names) are valid server names that webpki matches, so they must find their pins too. Strict
/// IDNA rejects them; canonicalising with it made such hosts look unpinned (fail open).
pub(crate) fn canonical_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let ascii = idna::uts46::Uts46::new()
        .to_ascii(
            host.as_bytes(),
            idna::AsciiDenyList::EMPTY,
            idna::uts46::Hyphens::Allow,
            idna::uts46::DnsLength::Ignore,
        )
        .ok()?;
    // The result must be a name rustls would accept as a server name (letters, digits, `-`
    // and `_`; no empty, over-long or hyphen-edged label; not an IP address in disguise), and
    // carry no trailing dot of its own (`a..` is not `a`).
    if ascii.ends_with('.') || rustls_pki_types::DnsName::try_from(ascii.as_ref()).is_err() {
        return None;
    }
    Some(ascii.into_owned())
}

/// The canonical form of a server name as a handshake presents it to the verifier: an ASCII
/// DNS name rustls already validated. Canonicalising it may only lower its case and drop a
/// trailing dot; any other change (an `xn--` label UTS-46 rejects or re-encodes) returns `None`,
/// so that the pins looked up are always those of the very name webpki matched the
/// certificate against.
pub(crate) fn canonical_server_name(name: &str) -> Option<String> {
    let canonical = canonical_host(name)?;
    let plain = name.strip_suffix('.').unwrap_or(name);
    canonical.eq_ignore_ascii_case(plain).then_some(canonical)
}

pub(crate) fn canonical_host_or_ip(host: &str) -> Option<String> {
    let h = host
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    canonical_host(host)
}

/// One host pattern and its pins.
#[derive(Clone, Debug)]
pub struct PinEntry {
    pattern: HostPattern,
    pins: Vec<Pin>,
    mode: Mode,
    expires: Option<OffsetDateTime>,
    position: Position,
    allow_single_pin: bool,
    report_uri: Option<String>,
    warned: Arc<AtomicBool>,
}

impl PinEntry {
    /// A new enforcing entry for `pattern` with `pins`, matching anywhere on the chain.
    ///
    /// # Errors
    /// An invalid pattern.
    pub fn new(pattern: &str, pins: impl IntoIterator<Item = Pin>) -> Result<Self, PolicyError> {
        Ok(Self {
            pattern: HostPattern::parse(pattern)?,
            pins: pins.into_iter().collect(),
            mode: Mode::Enforce,
            expires: None,
            position: Position::Any,
            allow_single_pin: false,
            report_uri: None,
            warned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Report violations without refusing the connection.
    pub fn report_only(mut self) -> Self {
        self.mode = Mode::ReportOnly;
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Stop enforcing after `at` (the entry then only reports).
    pub fn expires(mut self, at: OffsetDateTime) -> Self {
        self.expires = Some(at);
        self
    }

    /// Only match pins at `position` on the verified chain.
    pub fn position(mut self, position: Position) -> Self {
        self.position = position;
        self
    }

    /// Accept an enforcing entry with a single pin (no backup pin). Without a backup pin, a key
    /// rotation locks every client out until it is updated.
    pub fn allow_single_pin(mut self) -> Self {
        self.allow_single_pin = true;
        self
    }

    /// Where reports for this entry should be sent (carried in [`PinReport`](crate::PinReport)).
    pub fn report_uri(mut self, uri: impl Into<String>) -> Self {
        self.report_uri = Some(uri.into());
        self
    }

    /// The host pattern.
    pub fn pattern(&self) -> &HostPattern {
        &self.pattern
    }

    /// The pins.
    pub fn pins(&self) -> &[Pin] {
        &self.pins
    }

    /// The configured mode (see [`PinEntry::enforcing_at`] for the effective one).
    pub fn configured_mode(&self) -> Mode {
        self.mode
    }

    /// The expiration date, if any.
    pub fn expiration(&self) -> Option<OffsetDateTime> {
        self.expires
    }

    /// The position constraint.
    pub fn position_constraint(&self) -> Position {
        self.position
    }

    /// The report URI, if any.
    pub fn report_uri_value(&self) -> Option<&str> {
        self.report_uri.as_deref()
    }

    /// Whether the entry's expiration date has passed at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Whether a failed check refuses the connection at `now` (enforcing and not expired).
    pub fn enforcing_at(&self, now: OffsetDateTime) -> bool {
        self.mode == Mode::Enforce && !self.is_expired_at(now)
    }

    /// The effective mode at `now`: an expired entry only reports.
    pub fn effective_mode(&self, now: OffsetDateTime) -> Mode {
        if self.enforcing_at(now) {
            Mode::Enforce
        } else {
            Mode::ReportOnly
        }
    }

    /// Returns `true` once per entry when it is within `window` of expiring at `now`.
    pub(crate) fn take_expiry_warning(&self, now: OffsetDateTime, window: Duration) -> bool {
        match self.expires {
            Some(e) if now < e && e - now <= window => !self.warned.swap(true, Ordering::Relaxed),
            _ => false,
        }
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.pins.is_empty() {
            return Err(PolicyError::NoPins {
                pattern: self.pattern.to_string(),
            });
        }
        let distinct: std::collections::HashSet<_> = self.pins.iter().collect();
        if self.mode == Mode::Enforce && distinct.len() < 2 && !self.allow_single_pin {
            return Err(PolicyError::BackupPinRequired {
                pattern: self.pattern.to_string(),
            });
        }
        Ok(())
    }
}

/// A validated set of [`PinEntry`]s, looked up by host.
#[derive(Clone, Debug)]
pub struct PinPolicy {
    entries: Vec<PinEntry>,
    exact: HashMap<String, usize>,
    one_label: HashMap<String, usize>,
    any_depth: HashMap<String, usize>,
    expiry_warning: Duration,
}

/// The default window before an entry's expiration in which a warning event is emitted.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::days(30);

impl PinPolicy {
    /// Starts a policy.
    pub fn builder() -> PinPolicyBuilder {
        PinPolicyBuilder {
            entries: Vec::new(),
            expiry_warning: DEFAULT_EXPIRY_WARNING,
        }
    }

    /// A policy with no entry: standard validation only, nothing pinned.
    pub fn empty() -> Self {
        Self::builder().build().expect("an empty policy is valid")
    }

    /// The entry for `host` (a DNS name or IP address), the most specific first: an exact entry,
    /// then `*.parent`, then the closest `**.` ancestor.
    pub fn entry_for(&self, host: &str) -> Option<&PinEntry> {
        let host = canonical_host_or_ip(host)?;
        self.entry_for_canonical(&host)
    }

    pub(crate) fn entry_for_canonical(&self, host: &str) -> Option<&PinEntry> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.entries[i]);
        }
        if let Some((label, parent)) = host.split_once('.')
            && !label.is_empty()
            && let Some(&i) = self.one_label.get(parent)
        {
            return Some(&self.entries[i]);
        }
        let mut suffix = host;
        loop {
            if let Some(&i) = self.any_depth.get(suffix) {
                return Some(&self.entries[i]);
            }
            match suffix.split_once('.') {
                Some((_, rest)) => suffix = rest,
                None => return None,
            }
        }
    }

    /// All entries.
    pub fn entries(&self) -> &[PinEntry] {
        &self.entries
    }

    /// The expiry warning window.
    pub fn expiry_warning(&self) -> Duration {
        self.expiry_warning
    }

    /// Parses a policy from TOML.
    ///
    /// ```toml
    /// expiry_warning_days = 30
    ///
    /// [[host]]
    /// pattern = "**.example.com"
    /// pins = ["sha256/…", "sha256/…"]
    /// mode = "enforce"          # or "report_only"
    /// expires = "2027-06-30"    # or an RFC 3339 date-time
    /// position = "any"          # leaf | intermediate | root | any
    /// allow_single_pin = false
    /// report_uri = "https://reports.example.com/pins"
    /// ```
    ///
    /// # Errors
    /// Syntax errors (with line and column), unknown fields, invalid patterns, pins or dates,
    /// duplicate patterns, and the backup-pin rule.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            format: "TOML",
            message: e.to_string(),
        })?;
        file.into_policy()
    }

    /// Parses a policy from JSON (same fields as [`PinPolicy::from_toml`]).
    ///
    /// # Errors
    /// As [`PinPolicy::from_toml`].
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_json::from_str(text).map_err(|e| PolicyError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        file.into_policy()
    }

    /// Reads a policy file: JSON when the name ends in `.json`, TOML otherwise.
    ///
    /// # Errors
    /// An unreadable file, or any error of [`PinPolicy::from_toml`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        }
    }
}

/// Builds a [`PinPolicy`].
#[derive(Debug)]
pub struct PinPolicyBuilder {
    entries: Vec<PinEntry>,
    expiry_warning: Duration,
}

impl PinPolicyBuilder {
    /// Adds an entry.
    pub fn entry(mut self, entry: PinEntry) -> Self {
        self.entries.push(entry);
        self
    }

    /// Adds an enforcing entry for `pattern` with `pins` given as strings.
    ///
    /// # Errors
    /// An invalid pattern or pin.
    pub fn pin(self, pattern: &str, pins: &[&str]) -> Result<Self, PolicyError> {
        let parsed = parse_pins(pattern, pins.iter().copied())?;
        Ok(self.entry(PinEntry::new(pattern, parsed)?))
    }

    /// Sets how long before an entry's expiration a warning event is emitted (default 30 days).
    pub fn expiry_warning(mut self, window: Duration) -> Self {
        self.expiry_warning = window;
        self
    }

    /// Validates the entries and builds the policy.
    ///
    /// # Errors
    /// An entry without pins, an enforcing entry with fewer than two distinct pins and no
    /// [`PinEntry::allow_single_pin`], or two entries for the same pattern.
    pub fn build(self) -> Result<PinPolicy, PolicyError> {
        let mut policy = PinPolicy {
            entries: Vec::with_capacity(self.entries.len()),
            exact: HashMap::new(),
            one_label: HashMap::new(),
            any_depth: HashMap::new(),
            expiry_warning: self.expiry_warning,
        };
        for entry in self.entries {
            entry.validate()?;
            let index = policy.entries.len();
            let map = match entry.pattern.kind {
                PatternKind::Exact => &mut policy.exact,
                PatternKind::OneLabel => &mut policy.one_label,
                PatternKind::AnyDepth => &mut policy.any_depth,
            };
            if map.insert(entry.pattern.base.clone(), index).is_some() {
                return Err(PolicyError::DuplicatePattern {
                    pattern: entry.pattern.to_string(),
                });
            }
            policy.entries.push(entry);
        }
        Ok(policy)
    }
}

fn parse_pins<'a>(
    pattern: &str,
    pins: impl Iterator<Item = &'a str>,
) -> Result<Vec<Pin>, PolicyError> {
    pins.enumerate()
        .map(|(index, p)| {
            p.parse().map_err(|source| PolicyError::InvalidPin {
                pattern: pattern.chars().take(120).collect(),
                index,
                source,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    expiry_warning_days: Option<u32>,
    #[serde(default, alias = "hosts")]
    host: Vec<EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    pattern: String,
    pins: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    position: Position,
    #[serde(default)]
    allow_single_pin: bool,
    #[serde(default)]
    report_uri: Option<String>,
}

impl PolicyFile {
    fn into_policy(self) -> Result<PinPolicy, PolicyError> {
        let mut builder = PinPolicy::builder();
        if let Some(days) = self.expiry_warning_days {
            builder = builder.expiry_warning(Duration::days(i64::from(days)));
        }
        for e in self.host {
            let pins = parse_pins(&e.pattern, e.pins.iter().map(String::as_str))?;
            let mut entry = PinEntry::new(&e.pattern, pins)?
                .mode(e.mode)
                .position(e.position);
            if e.allow_single_pin {
                entry = entry.allow_single_pin();
            }
            if let Some(uri) = e.report_uri {
                entry = entry.report_uri(uri);
            }
            if let Some(exp) = e.expires {
                entry = entry.expires(parse_date(&e.pattern, &exp)?);
            }
            builder = builder.entry(entry);
        }
        builder.build()
    }
}

fn parse_date(pattern: &str, value: &str) -> Result<OffsetDateTime, PolicyError> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(value, &fmt)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| PolicyError::InvalidExpiry {
            pattern: pattern.chars().take(120).collect(),
            value: value.chars().take(64).collect(),
        })
}

/// A pin policy that could not be built or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A host pattern is malformed.
    #[error("invalid host pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pin of an entry is malformed.
    #[error("entry {pattern:?}, pin #{index}: {source}")]
    InvalidPin {
        /// The entry's pattern.
        pattern: String,
        /// The pin's index in the entry (from 0).
        index: usize,
        /// Why the pin was refused.
        source: PinParseError,
    },
    /// An entry has no pins.
    #[error("entry {pattern:?} has no pins; give at least two (a current and a backup pin)")]
    NoPins {
        /// The entry's pattern.
        pattern: String,
    },
    /// An enforcing entry has fewer than two distinct pins.
    #[error(
        "entry {pattern:?} enforces a single pin; add a backup pin (a key kept offline for \
         rotation), or opt out explicitly with `allow_single_pin = true`"
    )]
    BackupPinRequired {
        /// The entry's pattern.
        pattern: String,
    },
    /// Two entries have the same pattern.
    #[error("pattern {pattern:?} appears twice; merge the entries")]
    DuplicatePattern {
        /// The repeated pattern.
        pattern: String,
    },
    /// An expiration date is malformed.
    #[error(
        "entry {pattern:?}: invalid expires {value:?}; expected YYYY-MM-DD or an RFC 3339 date-time"
    )]
    InvalidExpiry {
        /// The entry's pattern.
        pattern: String,
        /// The value as written.
        value: String,
    },
    /// The file is not valid TOML or JSON, or has unknown or missing fields.
    #[error("invalid {format} policy: {message}")]
    Syntax {
        /// `TOML` or `JSON`.
        format: &'static str,
        /// The parser's message, with the position.
        message: String,
    },
    /// The file cannot be read.
    #[error("cannot read policy file {path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256/r/mIkG3eEpVdm+u/ko/cwxzOMo1bk4TyHIlByibiA5E=";
    const B: &str = "sha256/YLh1dUR9y6Kja30RrAn7JKnbQG/uEtLMkBgFF2Fuihg=";

    fn one(pattern: &str) -> PinPolicy {
        PinPolicy::builder()
            .pin(pattern, &[A, B])
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn wildcard_semantics() {
        let single = one("*.example.com");
        assert!(single.entry_for("api.example.com").is_some());
        assert!(
            single.entry_for("example.com").is_none(),
            "`*.` needs one extra label"
        );
        assert!(
            single.entry_for("a.b.example.com").is_none(),
            "`*.` is exactly one label"
        );

        let any = one("**.example.com");
        assert!(
            any.entry_for("example.com").is_some(),
            "`**.` matches zero labels"
        );
        assert!(any.entry_for("api.example.com").is_some());
        assert!(any.entry_for("a.b.example.com").is_some());
        for evil in [
            "a.b.example.com.evil.com",
            "example.com.evil.com",
            "evilexample.com",
            "example.co",
        ] {
            assert!(any.entry_for(evil).is_none(), "{evil}");
            assert!(single.entry_for(evil).is_none(), "{evil}");
        }
    }

    #[test]
    fn most_specific_entry_wins() {
        let p = PinPolicy::builder()
            .pin("**.example.com", &[A, B])
            .unwrap()
            .pin("*.example.com", &[A, B])
            .unwrap()
            .pin("api.example.com", &[A, B])
            .unwrap()
            .pin("**.deep.example.com", &[A, B])
            .unwrap()
            .build()
            .unwrap();
        let pat = |h: &str| p.entry_for(h).unwrap().pattern().to_string();
        assert_eq!(pat("api.example.com"), "api.example.com");
        assert_eq!(pat("www.example.com"), "*.example.com");
        assert_eq!(pat("a.b.example.com"), "**.example.com");
        assert_eq!(pat("x.y.deep.example.com"), "**.deep.example.com");
        assert_eq!(pat("example.com"), "**.example.com");
    }

    #[test]
    fn patterns_and_hosts_are_canonicalised() {
        let p = one("API.Example.COM.");
        assert_eq!(p.entries()[0].pattern().to_string(), "api.example.com");
        assert!(p.entry_for("api.example.com.").is_some());
        assert!(p.entry_for("API.EXAMPLE.COM").is_some());

        let idn = one("*.bücher.example");
        assert_eq!(
            idn.entries()[0].pattern().to_string(),
            "*.xn--bcher-kva.example"
        );
        assert!(idn.entry_for("shop.BÜCHER.example").is_some());
        assert!(idn.entry_for("shop.xn--bcher-kva.example").is_some());

        let ip = PinPolicy::builder()
            .pin("127.0.0.1", &[A, B])
            .unwrap()
            .pin("[::1]", &[A, B])
            .unwrap()
            .build()
            .unwrap();
        assert!(ip.entry_for("127.0.0.1").is_some());
        assert!(ip.entry_for("::1").is_some());
        assert!(ip.entry_for("[0:0:0:0:0:0:0:1]").is_some());
        assert!(ip.entry_for("127.0.0.2").is_none());
    }

    #[test]
    fn names_strict_idna_rejects_but_tls_accepts_are_canonical_and_pinned() {
        // Underscores and `--` in positions 3-4 (CDN node names): rustls accepts them as
        // server names and webpki matches them, so the pins must apply.
        let any = one("**.example.test");
        for host in [
            "a_b.example.test",
            "ab--cd.example.test",
            "r3---sn-4g5e.example.test",
            "_dmarc.x.example.test",
            "A_B.Example.Test.",
        ] {
            assert!(
                rustls_pki_types::DnsName::try_from(host).is_ok(),
                "{host}: a valid server name"
            );
            assert!(any.entry_for(host).is_some(), "{host}");
            assert_eq!(
                canonical_server_name(host).as_deref(),
                Some(host.trim_end_matches('.').to_ascii_lowercase().as_str())
            );
        }
        // Patterns with such labels parse and match, in code and in policy files.
        let p = PinPolicy::from_toml(&format!(
            "[[host]]\npattern = \"*.R3---SN-4G5E.example.test\"\npins = [\"{A}\", \"{B}\"]\n\
             [[host]]\npattern = \"a_b.example.test\"\npins = [\"{A}\", \"{B}\"]\n"
        ))
        .unwrap();
        assert_eq!(
            p.entries()[0].pattern().to_string(),
            "*.r3---sn-4g5e.example.test"
        );
        assert!(p.entry_for("x_y.r3---sn-4g5e.example.test").is_some());
        assert!(p.entry_for("A_b.example.test").is_some());
        assert!(p.entry_for("ab.example.test").is_none());
        assert!(HostPattern::parse("**.ab--cd.example.test").is_ok());
    }

    #[test]
    fn names_without_a_canonical_form() {
        // Valid server names for rustls whose `xn--` label is not valid punycode: no
        // canonical form, so the handshake must refuse them (see verify.rs).
        for host in [
            "xn--a.example.test",
            "xn--.example.test",
            "a.xn--zz-.example.test",
        ] {
            if rustls_pki_types::DnsName::try_from(host).is_ok() {
                assert_eq!(canonical_server_name(host), None, "{host}");
            }
            assert_eq!(canonical_host(host), None, "{host}");
            assert!(HostPattern::parse(host).is_err(), "{host}");
        }
        assert!(rustls_pki_types::DnsName::try_from("xn--a.example.test").is_ok());
        // A valid punycode label is its own canonical form (any case).
        assert_eq!(
            canonical_server_name("Shop.XN--BCHER-KVA.example").as_deref(),
            Some("shop.xn--bcher-kva.example")
        );
        // A handshake name is never mapped to another name: only case and a trailing dot.
        for (host, canonical) in [("a.example.test.", Some("a.example.test")), ("a..", None)] {
            assert_eq!(canonical_server_name(host).as_deref(), canonical, "{host}");
        }
        // Non-DNS characters are still refused, now by the TLS stack's own name rules.
        for host in [
            "a b.example.test",
            "a/b.example.test",
            "a*.example.test",
            "-a.example",
        ] {
            assert_eq!(canonical_host(host), None, "{host}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused_with_their_reason() {
        for (pattern, reason) in [
            ("a.*.example.com", "leftmost label"),
            ("*example.com", "leftmost label"),
            ("***.example.com", "leftmost label"),
            ("*", "leftmost label"),
            ("*.com", "at least two labels"),
            ("**.com", "at least two labels"),
            ("*.127.0.0.1", "IP address"),
            ("", "not a valid host name"),
            ("bad..example.com", "not a valid host name"),
            ("-bad.example.com", "not a valid host name"),
            ("exa mple.com", "not a valid host name"),
        ] {
            let err = HostPattern::parse(pattern).unwrap_err();
            assert!(err.to_string().contains(reason), "{pattern:?}: {err}");
        }
        assert!(matches!(
            HostPattern::parse("*.[::1]"),
            Err(PolicyError::InvalidPattern { .. })
        ));
    }

    #[test]
    fn backup_pin_rule() {
        let err = PinPolicy::builder()
            .pin("api.example.com", &[A])
            .unwrap()
            .build()
            .unwrap_err();
        assert!(matches!(err, PolicyError::BackupPinRequired { .. }));
        assert!(err.to_string().contains("allow_single_pin"), "{err}");
        // The same pin twice is still one pin.
        let err = PinPolicy::builder()
            .pin("api.example.com", &[A, A])
            .unwrap()
            .build()
            .unwrap_err();
        assert!(matches!(err, PolicyError::BackupPinRequired { .. }));
        // Named opt-out, and report-only entries, may have one pin.
        let pin: Pin = A.parse().unwrap();
        PinPolicy::builder()
            .entry(
                PinEntry::new("a.example.com", [pin])
                    .unwrap()
                    .allow_single_pin(),
            )
            .entry(PinEntry::new("b.example.com", [pin]).unwrap().report_only())
            .build()
            .unwrap();
        let err = PinPolicy::builder()
            .entry(
                PinEntry::new("a.example.com", [])
                    .unwrap()
                    .allow_single_pin(),
            )
            .build()
            .unwrap_err();
        assert!(matches!(err, PolicyError::NoPins { .. }), "{err}");
    }

    #[test]
    fn policy_files_in_toml_and_json() {
        let toml = format!(
            r#"
            expiry_warning_days = 14
            [[host]]
            pattern = "**.example.com"
            pins = ["{A}", "{B}"]
            mode = "report_only"
            expires = "2031-01-02"
            position = "root"
            report_uri = "https://r.example.com/"

            [[host]]
            pattern = "api.example.net"
            pins = ["{A}"]
            allow_single_pin = true
            expires = "2030-05-06T07:08:09Z"
            "#
        );
        let p = PinPolicy::from_toml(&toml).unwrap();
        assert_eq!(p.expiry_warning(), Duration::days(14));
        let e = p.entry_for("x.example.com").unwrap();
        assert_eq!(e.configured_mode(), Mode::ReportOnly);
        assert_eq!(e.position_constraint(), Position::Root);
        assert_eq!(e.expiration().unwrap().year(), 2031);
        assert_eq!(e.report_uri_value(), Some("https://r.example.com/"));
        let e = p.entry_for("api.example.net").unwrap();
        assert_eq!(e.configured_mode(), Mode::Enforce);
        assert_eq!(e.expiration().unwrap().hour(), 7);

        let json =
            format!(r#"{{"host": [{{"pattern": "api.example.com", "pins": ["{A}", "{B}"]}}]}}"#);
        let p = PinPolicy::from_json(&json).unwrap();
        assert!(
            p.entry_for("api.example.com")
                .unwrap()
                .enforcing_at(OffsetDateTime::now_utc())
        );
    }

    #[test]
    fn malformed_policy_files_are_refused_with_their_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("[[host]\n".into(), "invalid TOML policy"),
            (
                "[[host]]\npattern = \"a.example.com\"\n".into(),
                "missing field `pins`",
            ),
            (
                format!(
                    "[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\", \"{B}\"]\nmod = \"enforce\"\n"
                ),
                "unknown field `mod`",
            ),
            (
                format!(
                    "[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\", \"{B}\"]\nmode = \"strict\"\n"
                ),
                "unknown variant `strict`",
            ),
            (
                format!(
                    "[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\", \"sha256/nope\"]\n"
                ),
                "pin #1",
            ),
            (
                format!("[[host]]\npattern = \"a.*.com\"\npins = [\"{A}\", \"{B}\"]\n"),
                "leftmost label",
            ),
            (
                format!(
                    "[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\", \"{B}\"]\nexpires = \"tomorrow\"\n"
                ),
                "expected YYYY-MM-DD",
            ),
            (
                format!("[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\"]\n"),
                "single pin",
            ),
            (
                format!(
                    "[[host]]\npattern = \"A.example.com\"\npins = [\"{A}\", \"{B}\"]\n[[host]]\npattern = \"a.example.com.\"\npins = [\"{A}\", \"{B}\"]\n"
                ),
                "appears twice",
            ),
            (
                format!(
                    "[[host]]\npattern = \"a.example.com\"\npins = [\"{A}\", \"{B}\"]\nposition = \"middle\"\n"
                ),
                "unknown variant `middle`",
            ),
        ];
        for (text, reason) in cases {
            let err = PinPolicy::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(reason), "{text}\n=> {err}");
        }
        let err = PinPolicy::from_json("{\"host\": 3}").unwrap_err();
        assert!(err.to_string().contains("invalid JSON policy"), "{err}");
        let err = PinPolicy::from_path("/nonexistent/policy.toml").unwrap_err();
        assert!(err.to_string().contains("cannot read policy file"), "{err}");
    }

    #[test]
    fn expiry_makes_an_entry_report_only() {
        let pin: Pin = A.parse().unwrap();
        let now = OffsetDateTime::now_utc();
        let e = PinEntry::new("a.example.com", [pin, B.parse().unwrap()])
            .unwrap()
            .expires(now + Duration::days(10));
        assert_eq!(e.effective_mode(now), Mode::Enforce);
        assert_eq!(e.effective_mode(now + Duration::days(11)), Mode::ReportOnly);
        assert!(e.take_expiry_warning(now, Duration::days(30)));
        assert!(
            !e.take_expiry_warning(now, Duration::days(30)),
            "warned once"
        );
        let far = PinEntry::new("b.example.com", [pin])
            .unwrap()
            .expires(now + Duration::days(90));
        assert!(!far.take_expiry_warning(now, Duration::days(30)));
    }
}
