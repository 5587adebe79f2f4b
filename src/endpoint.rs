//! The two endpoints of a failover pair, the Dynamics `--s` rule, and the rewriting of a
//! request's URI and `Host` header onto the active endpoint.

use std::fmt;
use std::net::IpAddr;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, HeaderValue};

use crate::error::ConfigError;

/// One side of a failover pair: a scheme and an authority (`https://host[:port]`).
///
/// Hosts are kept in lower case, since DNS names compare without regard to case.
///
/// ```
/// use tower_failover::Endpoint;
///
/// let endpoint = Endpoint::parse("https://Contoso.API.crm.dynamics.com").unwrap();
/// assert_eq!(endpoint.to_string(), "https://contoso.api.crm.dynamics.com");
/// assert_eq!(endpoint.host(), "contoso.api.crm.dynamics.com");
/// assert_eq!(endpoint.port(), 443);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    // The host without a trailing dot, lower case; the port with the scheme's default filled
    // in. These are what "the same endpoint" means when a request names it.
    host: String,
    port: u16,
    host_header: HeaderValue,
}

impl Endpoint {
    /// Parses an absolute `http` or `https` URI naming a host, with an optional port.
    ///
    /// A path other than `/`, a query, user information, or any other scheme is refused with
    /// an error that says what to change. The error shows the URI with its user information
    /// and query replaced by `***`: they may hold credentials.
    ///
    /// ```
    /// use tower_failover::Endpoint;
    ///
    /// let endpoint = Endpoint::parse("https://dr.example.net:8443").unwrap();
    /// assert_eq!(endpoint.host(), "dr.example.net");
    /// assert_eq!(endpoint.port(), 8443);
    /// assert_eq!(Endpoint::parse("http://api.example.com/").unwrap().port(), 80);
    ///
    /// // Requests keep their own paths, so an endpoint has none.
    /// let err = Endpoint::parse("https://contoso.api.crm.dynamics.com/api/data/v9.2").unwrap_err();
    /// assert!(err.to_string().contains("scheme and a host only"));
    /// assert!(Endpoint::parse("ftp://files.example.com").is_err());
    /// ```
    pub fn parse(uri: &str) -> Result<Self, ConfigError> {
        let parsed: Uri = uri.parse().map_err(|e| {
            ConfigError::new(format!(
                "`{}` is not a valid URI ({e}); give it as `https://host[:port]`",
                shown(uri)
            ))
        })?;
        // A password may hold `/`, `?` or `#` unencoded: the parser then ends the authority
        // before its `@` (or drops it with a fragment), and the rest would pass for a host, a
        // port or a path. Any `@` after the scheme is refused as user information.
        if has_user_information(uri) {
            return Err(user_information_error(uri));
        }
        Self::from_uri(&parsed)
    }

    /// Builds an endpoint from an already parsed URI; see [`Endpoint::parse`].
    ///
    /// ```
    /// use http::Uri;
    /// use tower_failover::Endpoint;
    ///
    /// let uri: Uri = "https://API.example.com".parse().unwrap();
    /// let endpoint = Endpoint::from_uri(&uri).unwrap();
    /// assert_eq!(endpoint.authority().as_str(), "api.example.com");
    ///
    /// // A request URI is not an endpoint: it has a path.
    /// let request_uri: Uri = "https://api.example.com/v1/orders".parse().unwrap();
    /// assert!(Endpoint::from_uri(&request_uri).is_err());
    /// ```
    pub fn from_uri(uri: &Uri) -> Result<Self, ConfigError> {
        // Messages name the URI without its user information or query: either may hold a
        // credential, and configuration errors end up in logs.
        let text = uri.to_string();
        let named = shown(&text);
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            Some(s) => {
                return Err(ConfigError::new(format!(
                    "`{named}` uses the scheme `{s}`; an endpoint must be `http://` or `https://`"
                )))
            }
            None => {
                return Err(ConfigError::new(format!(
                    "`{named}` has no scheme or host; give the endpoint as an absolute URI such as `https://contoso.api.crm.dynamics.com`"
                )))
            }
        };
        let authority = uri.authority().ok_or_else(|| {
            ConfigError::new(format!(
                "`{named}` has no host; give the endpoint as an absolute URI such as `https://contoso.api.crm.dynamics.com`"
            ))
        })?;
        // From where the authority starts in the text as given, not the parsed authority alone:
        // a password holding `/`, `?` or `#` ends the parsed one early.
        if has_user_information(&text) {
            return Err(user_information_error(&text));
        }
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(ConfigError::new(format!(
                    "`{named}` has the path or query `{}`; an endpoint is a scheme and a host only (`{}`), requests keep their own paths",
                    shown(pq.as_str()),
                    shown(&format!("{scheme}://{authority}"))
                )));
            }
        }
        let host = normalize_host(authority.host());
        if host.is_empty() {
            return Err(ConfigError::new(format!(
                "`{named}` has an empty host; give the endpoint as an absolute URI such as `https://contoso.api.crm.dynamics.com`"
            )));
        }
        // `http` accepts any digits as a port, and reads one outside the range as none at all:
        // that would silently become the scheme's default (and be dropped from a derived
        // alternate). The host is a prefix of the authority (user information is refused above).
        let after_host = &authority.as_str()[authority.host().len()..];
        let port_text = after_host.strip_prefix(':').unwrap_or(after_host);
        let given_port = match port_text {
            "" => None,
            text => match text.parse::<u16>() {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    // Not digits: perhaps a password whose `@` the parser never reached.
                    let text = if text.bytes().all(|b| b.is_ascii_digit()) {
                        text
                    } else {
                        "***"
                    };
                    return Err(ConfigError::new(format!(
                        "`{named}` has the port `{text}`; a port is a number from 1 to 65535"
                    )));
                }
            },
        };
        let port = given_port.unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
        // Lower case, and the port as plain digits (`:08443` is `:8443`; an empty one, the
        // default, is not written). Lower-casing keeps the authority valid: it only changes
        // ASCII letters.
        let authority = match given_port {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_string(),
        };
        let authority: Authority = authority
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| ConfigError::new(format!("`{named}`: bad authority ({e})")))?;
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| ConfigError::new(format!("`{named}`: the host cannot be a header value ({e})")))?;
        Ok(Endpoint {
            scheme,
            authority,
            host,
            port,
            host_header,
        })
    }

    /// The scheme, `http` or `https`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The authority as configured (lower case), e.g. `contoso.api.crm.dynamics.com:8443`.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The host, lower case, without a trailing dot.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, with the scheme's default filled in.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True when `uri` names this endpoint's host and port (any case, trailing dot allowed,
    /// default port implied by the URI's scheme).
    ///
    /// A URI without a scheme (authority-form, `contoso.api.crm.dynamics.com`) names no
    /// endpoint: only `CONNECT` may use that form, and rewriting it would turn it into a
    /// request for `/`.
    ///
    /// ```
    /// use tower_failover::Endpoint;
    ///
    /// let endpoint = Endpoint::parse("https://contoso.api.crm.dynamics.com").unwrap();
    /// assert!(endpoint.matches(&"https://CONTOSO.api.crm.dynamics.com./api/data".parse().unwrap()));
    /// assert!(endpoint.matches(&"https://contoso.api.crm.dynamics.com:443/".parse().unwrap()));
    /// // Another port is another endpoint; so is plain http, on any port.
    /// assert!(!endpoint.matches(&"https://contoso.api.crm.dynamics.com:8443/".parse().unwrap()));
    /// assert!(!endpoint.matches(&"http://contoso.api.crm.dynamics.com/".parse().unwrap()));
    /// assert!(!endpoint.matches(&"http://contoso.api.crm.dynamics.com:443/".parse().unwrap()));
    /// // A relative URI names no endpoint.
    /// assert!(!endpoint.matches(&"/api/data".parse().unwrap()));
    /// ```
    pub fn matches(&self, uri: &Uri) -> bool {
        match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => Named::new(authority, Some(scheme)).is(self),
            _ => false,
        }
    }

    /// The `--s` rule of Dynamics 365 online: the alternate organization's host is the
    /// primary's with `--s` appended to its first DNS label. Scheme, port and a trailing dot are kept.
    fn dynamics_alternate(&self) -> Result<Endpoint, ConfigError> {
        if self.host.parse::<IpAddr>().is_ok() || self.host.starts_with('[') {
            return Err(ConfigError::new(format!(
                "`{self}` is an IP address; the `--s` rule needs an organization host name such as `contoso.api.crm.dynamics.com` (use `Endpoints::new` to name both endpoints yourself)"
            )));
        }
        let (first, rest) = match self.host.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (self.host.as_str(), None),
        };
        if first.is_empty() {
            return Err(ConfigError::new(format!(
                "`{self}` has an empty first DNS label; give the organization host name, such as `contoso.api.crm.dynamics.com`"
            )));
        }
        if let Some(base) = first.strip_suffix("--s") {
            // A label that is empty without its `--s`, or still ends in one, is derived from no
            // primary (the rule is never applied twice): there is none to suggest.
            if base.is_empty() || base.ends_with("--s") {
                return Err(ConfigError::new(format!(
                    "`{self}` ends its first DNS label in `--s`, as an alternate host does, but no primary host derives it; give the primary organization URL, such as `https://contoso.api.crm.dynamics.com`"
                )));
            }
            // The primary this alternate was derived from, spelled as given: its port and a
            // trailing dot are part of it.
            let authority = self.authority.as_str();
            return Err(ConfigError::new(format!(
                "`{self}` is already an alternate (`--s`) host; give the primary organization URL, e.g. `{}://{}{}`",
                self.scheme,
                base,
                &authority[first.len().min(authority.len())..]
            )));
        }
        if first.len() + 3 > 63 {
            return Err(ConfigError::new(format!(
                "`{self}`: appending `--s` to `{first}` would make a DNS label longer than 63 characters"
            )));
        }
        let mut authority = format!("{first}--s");
        if let Some(rest) = rest {
            authority.push('.');
            authority.push_str(rest);
        }
        // A trailing dot (a fully qualified name, kept from resolver search domains) is part
        // of the spelling, as scheme and port are: the alternate is spelled the same way.
        if self.authority.host().ends_with('.') {
            authority.push('.');
        }
        if let Some(port) = self.authority.port_u16() {
            authority.push_str(&format!(":{port}"));
        }
        Endpoint::parse(&format!("{}://{}", self.scheme, authority))
    }
}

/// A request's authority taken apart once (host, explicit port, the scheme's default port), so
/// that comparing it with both endpoints scans it once rather than once per endpoint.
struct Named<'a> {
    scheme: Option<&'a Scheme>,
    host: &'a str,
    port: Option<u16>,
    default_port: Option<u16>,
}

impl<'a> Named<'a> {
    fn new(authority: &'a Authority, scheme: Option<&'a Scheme>) -> Self {
        let (host, port) = host_and_port(authority.as_str());
        Named {
            scheme,
            host,
            port,
            default_port: match scheme {
                Some(s) if *s == Scheme::HTTP => Some(80),
                Some(s) if *s == Scheme::HTTPS => Some(443),
                _ => None,
            },
        }
    }

    /// True when this names `endpoint`'s scheme, host and port (with no port and no known
    /// scheme, the endpoint's own port is implied). The scheme must agree even when the port
    /// is explicit: `https://host:80` is not `http://host`, and routing it there would send
    /// in clear text a request the caller asked to send over TLS.
    fn is(&self, endpoint: &Endpoint) -> bool {
        let port = self.port.or(self.default_port).unwrap_or(endpoint.port);
        port == endpoint.port
            && self.scheme.is_none_or(|scheme| *scheme == endpoint.scheme)
            && host_eq(self.host, &endpoint.host)
    }
}

/// What `Authority::host` and `Authority::port_u16` return, found in one backward pass over
/// the authority. Every request pays for this (routed or not), and `http`'s versions scan
/// the string three times through its general-purpose searchers.
fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    const NONE: usize = usize::MAX;
    let bytes = authority.as_bytes();
    // After the last '@' (the user information ends there): the first and the last ':'.
    let (mut first_colon, mut last_colon, mut start) = (NONE, NONE, 0);
    let mut i = bytes.len();
    while i > 0 {
        i -= 1;
        // Host names are mostly letters, all above both delimiters.
        if bytes[i] > b'@' {
            continue;
        }
        if bytes[i] == b':' {
            first_colon = i;
            if last_colon == NONE {
                last_colon = i;
            }
        } else if bytes[i] == b'@' {
            start = i + 1;
            break;
        }
    }
    let host_port = &authority[start..];
    let host = if host_port.starts_with('[') {
        // An IP-literal: up to and including its `]` (which `http` has checked is there).
        host_port.find(']').map_or(host_port, |i| &host_port[..=i])
    } else if first_colon != NONE {
        &authority[start..first_colon]
    } else {
        host_port
    };
    // A ':' only in the user information is followed by an '@' and is no port: no port.
    let port = match last_colon {
        NONE => None,
        i => authority[i + 1..].parse::<u16>().ok(),
    };
    (host, port)
}

/// Where the authority of `text` starts: after `scheme://` (a scheme holds none of `/?#@`),
/// or at the start.
fn authority_start(text: &str) -> usize {
    match text.find("://") {
        Some(i) if !text[..i].contains(['/', '?', '#', '@']) => i + 3,
        _ => 0,
    }
}

/// Whether `text` has an `@` after its scheme: user information, perhaps with a password
/// holding `/`, `?` or `#` that a parser takes for the end of the authority.
fn has_user_information(text: &str) -> bool {
    text[authority_start(text)..].contains('@')
}

fn user_information_error(text: &str) -> ConfigError {
    ConfigError::new(format!(
        "`{}` carries user information; put credentials in headers, not in the endpoint",
        shown(text)
    ))
}

/// `text` (a URI as given, parsed or not) as an error message may show it: user information
/// (up to the last `@`, wherever a parser would end the authority), a port that is not a
/// number, and the query replaced by `***`, since any may hold a credential.
fn shown(text: &str) -> String {
    let start = authority_start(text);
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..start]);
    let start = match text[start..].rfind('@') {
        Some(at) => {
            out.push_str("***");
            start + at
        }
        None => start,
    };
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    let authority = &text[start..end];
    // The port: after the last `:` that is not inside an IPv6 literal.
    let port = authority
        .rfind(':')
        .filter(|&colon| !authority[colon..].contains(']'));
    match port {
        Some(colon) if !authority[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            out.push_str(&authority[..=colon]);
            out.push_str("***");
        }
        _ => out.push_str(authority),
    }
    let rest = &text[end..];
    match rest.find('?') {
        Some(query) => {
            out.push_str(&rest[..=query]);
            out.push_str("***");
        }
        None => out.push_str(rest),
    }
    out
}

/// Lower case, without a trailing dot; an IPv6 literal in its canonical spelling (`[::1]` for
/// `[0:0:0:0:0:0:0:1]`), so one address has one name.
fn normalize_host(host: &str) -> String {
    if let Some(ip) = ipv6_literal(host) {
        return format!("[{ip}]");
    }
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn ipv6_literal(host: &str) -> Option<std::net::Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

fn host_eq(given: &str, normalized: &str) -> bool {
    if given.starts_with('[') {
        return normalize_host(given) == normalized;
    }
    let given = given.strip_suffix('.').unwrap_or(given);
    given.eq_ignore_ascii_case(normalized)
}

impl Endpoint {
    /// True when a request spells this endpoint exactly as it was configured.
    fn spelled_by(&self, scheme: &Scheme, authority: &Authority) -> bool {
        // `Authority`'s own `==` ignores case, which costs more than the common case needs;
        // any other spelling is left to the full comparison.
        authority.as_str() == self.authority.as_str() && *scheme == self.scheme
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// Which side of the pair a request goes to.
///
/// ```
/// use tower_failover::{Endpoints, FailoverLayer, Side};
///
/// let layer = FailoverLayer::new(Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap());
/// let handle = layer.handle();
/// assert_eq!(handle.active(), Side::Primary);
///
/// handle.switch_to(Side::Primary.other());
/// assert_eq!(handle.active(), Side::Alternate);
/// assert_eq!(handle.endpoints().get(Side::Alternate), Some(handle.active_endpoint()));
/// assert_eq!(Side::Alternate.to_string(), "alternate");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The primary endpoint, where calls go while it is healthy.
    Primary,
    /// The alternate (disaster-recovery) endpoint.
    Alternate,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Alternate,
            Side::Alternate => Side::Primary,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Alternate => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Primary => "primary",
            Side::Alternate => "alternate",
        })
    }
}

/// A primary endpoint and, optionally, its alternate.
///
/// ```
/// use tower_failover::Endpoints;
///
/// // Dynamics 365 online: the alternate is derived by the `--s` rule.
/// let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
/// assert_eq!(pair.alternate().unwrap().to_string(), "https://contoso--s.api.crm.dynamics.com");
///
/// // Any other API: name both.
/// let pair = Endpoints::new("https://api.example.com", "https://dr.example.net:8443").unwrap();
/// assert_eq!(pair.primary().port(), 443);
///
/// // Mistakes are refused with a message that says what to fix.
/// let err = Endpoints::dynamics("https://contoso--s.api.crm.dynamics.com").unwrap_err();
/// assert!(err.to_string().contains("already an alternate"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    primary: Endpoint,
    alternate: Option<Endpoint>,
}

impl Endpoints {
    /// A primary and an alternate, each an absolute `http(s)://host[:port]` URI.
    ///
    /// ```
    /// use tower_failover::Endpoints;
    ///
    /// let pair = Endpoints::new("https://api.example.com", "https://dr.example.net:8443").unwrap();
    /// assert_eq!(pair.primary().to_string(), "https://api.example.com");
    /// assert_eq!(pair.alternate().unwrap().port(), 8443);
    ///
    /// // Each URI is checked, and the error says which one is wrong.
    /// let err = Endpoints::new("https://api.example.com", "dr.example.net").unwrap_err();
    /// assert!(err.to_string().starts_with("alternate endpoint:"));
    /// ```
    pub fn new(primary: &str, alternate: &str) -> Result<Self, ConfigError> {
        let primary = Endpoint::parse(primary).map_err(|e| e.context("primary endpoint"))?;
        let alternate = Endpoint::parse(alternate).map_err(|e| e.context("alternate endpoint"))?;
        Self::from_parts(primary, Some(alternate))
    }

    /// A primary with the alternate derived by the Dynamics 365 `--s` rule:
    /// `https://contoso.api.crm.dynamics.com` has the alternate
    /// `https://contoso--s.api.crm.dynamics.com`. Scheme, port and a trailing dot carry over.
    ///
    /// ```
    /// use tower_failover::Endpoints;
    ///
    /// let pair = Endpoints::dynamics("https://contoso.crm4.dynamics.com:8443").unwrap();
    /// assert_eq!(pair.alternate().unwrap().to_string(), "https://contoso--s.crm4.dynamics.com:8443");
    ///
    /// // The rule needs an organization host name.
    /// assert!(Endpoints::dynamics("https://10.0.0.1").unwrap_err().to_string().contains("IP address"));
    /// ```
    pub fn dynamics(primary: &str) -> Result<Self, ConfigError> {
        let primary = Endpoint::parse(primary).map_err(|e| e.context("primary endpoint"))?;
        let alternate = primary.dynamics_alternate()?;
        Self::from_parts(primary, Some(alternate))
    }

    /// A primary alone: calls are classified and failures typed, but nothing can switch
    /// (the Dynamics 365 SDK's "organization not enabled for failover"). No event is raised:
    /// as the SDK's step 4, a call that finds the primary down fails with its error.
    ///
    /// ```
    /// use tower_failover::{Endpoints, FailoverLayer, Side};
    ///
    /// let pair = Endpoints::primary_only("https://api.example.com").unwrap();
    /// assert!(pair.alternate().is_none());
    ///
    /// let handle = FailoverLayer::new(pair).handle();
    /// assert!(!handle.auto_switch_enabled());
    /// assert_eq!(handle.switch_endpoint(), Side::Primary); // nowhere to go
    /// ```
    pub fn primary_only(primary: &str) -> Result<Self, ConfigError> {
        let primary = Endpoint::parse(primary).map_err(|e| e.context("primary endpoint"))?;
        Self::from_parts(primary, None)
    }

    /// Pairs two parsed endpoints. The alternate must differ from the primary in host or port.
    ///
    /// ```
    /// use tower_failover::{Endpoint, Endpoints};
    ///
    /// let primary = Endpoint::parse("https://api.example.com").unwrap();
    /// let alternate = Endpoint::parse("https://api.example.com:8443").unwrap();
    /// let pair = Endpoints::from_parts(primary.clone(), Some(alternate)).unwrap();
    /// assert_eq!(pair.primary(), &primary);
    ///
    /// let err = Endpoints::from_parts(primary.clone(), Some(primary)).unwrap_err();
    /// assert!(err.to_string().contains("same endpoint"));
    /// ```
    pub fn from_parts(primary: Endpoint, alternate: Option<Endpoint>) -> Result<Self, ConfigError> {
        if let Some(alt) = &alternate {
            if alt.host == primary.host && alt.port == primary.port {
                return Err(ConfigError::new(format!(
                    "the primary and the alternate are the same endpoint (`{primary}`); the alternate must be a different host or port"
                )));
            }
        }
        Ok(Endpoints { primary, alternate })
    }

    /// The primary endpoint.
    pub fn primary(&self) -> &Endpoint {
        &self.primary
    }

    /// The alternate endpoint, if one is configured.
    pub fn alternate(&self) -> Option<&Endpoint> {
        self.alternate.as_ref()
    }

    /// The endpoint for one side; `None` for the alternate when there is none.
    pub fn get(&self, side: Side) -> Option<&Endpoint> {
        match side {
            Side::Primary => Some(&self.primary),
            Side::Alternate => self.alternate.as_ref(),
        }
    }

    /// Which side `uri` names, if either. Requests naming neither pass through the layer
    /// untouched.
    ///
    /// ```
    /// use tower_failover::{Endpoints, Side};
    ///
    /// let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
    /// let side = |uri: &str| pair.side_of(&uri.parse().unwrap());
    /// assert_eq!(side("https://contoso.api.crm.dynamics.com/api/data/v9.2/WhoAmI"), Some(Side::Primary));
    /// assert_eq!(side("https://contoso--s.api.crm.dynamics.com/"), Some(Side::Alternate));
    /// assert_eq!(side("https://login.microsoftonline.com/token"), None);
    /// ```
    pub fn side_of(&self, uri: &Uri) -> Option<Side> {
        self.locate(uri).map(|(side, _)| side)
    }

    /// Which side `uri` names, and whether it spells that endpoint's scheme and authority
    /// exactly as configured (then pointing it at that side changes nothing).
    ///
    /// Every request through the layer pays for this, routed or not, so the common cases are
    /// settled before the full parse: a URI built from the configured URL is one string
    /// comparison, and a plain authority (no user information, no IP literal) that does not
    /// start with an endpoint's host is refused at its first differing byte.
    pub(crate) fn locate(&self, uri: &Uri) -> Option<(Side, bool)> {
        // A URI without a scheme (authority-form) names no endpoint; see `Endpoint::matches`.
        let (scheme, authority) = (uri.scheme()?, uri.authority()?);
        if self.primary.spelled_by(scheme, authority) {
            return Some((Side::Primary, true));
        }
        let alternate = self.alternate.as_ref();
        if alternate.is_some_and(|a| a.spelled_by(scheme, authority)) {
            return Some((Side::Alternate, true));
        }
        // Without user information and an IP literal, the host is the authority up to its
        // first ':' (what `host_and_port` finds), so any other spelling of an endpoint starts
        // with its host (in any letter case), then ends or goes on with '.' or ':'. Other
        // authorities are left to the full parse.
        let text = authority.as_str().as_bytes();
        // No early exit, so the compiler checks 16 bytes at a time.
        let has_user_info = text.iter().fold(false, |seen, &b| seen | (b == b'@'));
        let plain = !has_user_info && text.first() != Some(&b'[');
        let may_name = |endpoint: &Endpoint| {
            let host = endpoint.host.as_bytes();
            !plain
                || text
                    .get(..host.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(host))
                    && matches!(text.get(host.len()), None | Some(b':' | b'.'))
        };
        let primary_may = may_name(&self.primary);
        let alternate = alternate.filter(|a| may_name(a));
        if !primary_may && alternate.is_none() {
            return None;
        }
        let named = Named::new(authority, Some(scheme));
        if primary_may && named.is(&self.primary) {
            Some((Side::Primary, false))
        } else if alternate.is_some_and(|a| named.is(a)) {
            Some((Side::Alternate, false))
        } else {
            None
        }
    }

    /// True when a `Host` value names either endpoint. A `Host` carries no scheme: each
    /// endpoint's own scheme gives the default port it is compared with.
    fn names_either(&self, value: &HeaderValue) -> bool {
        let Ok(text) = value.to_str() else { return false };
        let Ok(authority) = text.parse::<Authority>() else {
            return false;
        };
        let names = |endpoint: &Endpoint| Named::new(&authority, Some(&endpoint.scheme)).is(endpoint);
        names(&self.primary) || self.alternate.as_ref().is_some_and(names)
    }
}

/// A URI for `target` with this path and query: what a re-send is pointed at.
pub(crate) fn uri_at(target: &Endpoint, path_and_query: Option<PathAndQuery>) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = path_and_query;
    rewrite_uri(Uri::from_parts(parts).unwrap_or_default(), target)
}

/// Points `uri` at `target`, keeping its path and query. Only called for URIs that name one
/// of the pair, so the result always names a configured endpoint.
pub(crate) fn rewrite_uri(uri: Uri, target: &Endpoint) -> Uri {
    let mut parts = uri.into_parts();
    parts.scheme = Some(target.scheme.clone());
    parts.authority = Some(target.authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all present and valid, so this cannot fail; fall back
    // to the bare endpoint rather than panic if `http` ever tightens its rules.
    Uri::from_parts(parts).unwrap_or_else(|_| {
        Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme, authority and `/` always form a URI")
    })
}

/// hyper-util adds `Host` only when it is missing, so a `Host` that names either endpoint
/// of the pair must follow the swap or the alternate would see the primary's name.
/// A `Host` naming some third party is left alone: the caller set it on purpose.
pub(crate) fn rewrite_host_header(headers: &mut HeaderMap, endpoints: &Endpoints, target: &Endpoint) {
    // A lookup hashes the name even in an empty map; most requests here have no headers at
    // all or no `Host` (the client adds it).
    if headers.is_empty() {
        return;
    }
    if let Some(value) = headers.get(HOST) {
        if value != target.host_header && endpoints.names_either(value) {
            headers.insert(HOST, target.host_header.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamics_rule_appends_to_first_label_only() {
        let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
        assert_eq!(
            pair.alternate().unwrap().to_string(),
            "https://contoso--s.api.crm.dynamics.com"
        );
        let pair = Endpoints::dynamics("https://CONTOSO.crm4.dynamics.com:8443").unwrap();
        assert_eq!(
            pair.alternate().unwrap().to_string(),
            "https://contoso--s.crm4.dynamics.com:8443"
        );
        let pair = Endpoints::dynamics("http://contoso.api.crm.dynamics.com/").unwrap();
        assert_eq!(pair.alternate().unwrap().scheme(), &Scheme::HTTP);
    }

    #[test]
    fn configuration_errors_say_what_to_fix() {
        let cases = [
            ("https://contoso--S.api.crm.dynamics.com", "already an alternate"),
            ("https://10.0.0.1", "IP address"),
            ("https://[::1]:8443", "IP address"),
            ("ftp://contoso.api.crm.dynamics.com", "`http://` or `https://`"),
            ("contoso.api.crm.dynamics.com", "absolute URI"),
            ("/api/data", "absolute URI"),
            (
                "https://contoso.api.crm.dynamics.com/api/data/v9.2",
                "scheme and a host only",
            ),
            ("https://user:pw@contoso.api.crm.dynamics.com", "user information"),
            ("https://", "not a valid URI"),
        ];
        for (input, expected) in cases {
            let err = Endpoints::dynamics(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
        let err = Endpoints::new("https://a.example.com", "https://A.example.com:443").unwrap_err();
        assert!(err.to_string().contains("same endpoint"), "{err}");
    }

    #[test]
    fn matching_ignores_case_trailing_dot_and_default_port() {
        let pair = Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap();
        for uri in [
            "https://contoso.api.crm.dynamics.com/x",
            "https://CONTOSO.api.crm.dynamics.com./x",
            "https://contoso.api.crm.dynamics.com:443/x",
        ] {
            assert_eq!(pair.side_of(&uri.parse().unwrap()), Some(Side::Primary), "{uri}");
        }
        assert_eq!(
            pair.side_of(&"https://contoso--s.api.crm.dynamics.com/".parse().unwrap()),
            Some(Side::Alternate)
        );
        for uri in [
            "https://contoso.api.crm.dynamics.com:8443/x",
            "http://contoso.api.crm.dynamics.com/x",
            // The other scheme on this scheme's port: still not this endpoint.
            "http://contoso.api.crm.dynamics.com:443/x",
            "https://other.api.crm.dynamics.com/x",
            "/relative",
        ] {
            assert_eq!(pair.side_of(&uri.parse().unwrap()), None, "{uri}");
        }
    }

    /// The full comparison `locate`'s shortcuts must agree with.
    fn side_by_full_parse(pair: &Endpoints, uri: &Uri) -> Option<Side> {
        let named = Named::new(uri.authority()?, Some(uri.scheme()?));
        if named.is(&pair.primary) {
            Some(Side::Primary)
        } else if pair.alternate.as_ref().is_some_and(|a| named.is(a)) {
            Some(Side::Alternate)
        } else {
            None
        }
    }

    #[test]
    fn locate_shortcuts_agree_with_the_full_parse() {
        let pairs = [
            Endpoints::dynamics("https://contoso.api.crm.dynamics.com").unwrap(),
            Endpoints::dynamics("https://Contoso.crm4.dynamics.com:8443").unwrap(),
            Endpoints::new("http://[::1]:8080", "http://127.0.0.1:8080").unwrap(),
        ];
        let uris = [
            "https://contoso.api.crm.dynamics.com/x",
            "https://contoso--s.api.crm.dynamics.com/x",
            "https://CONTOSO.api.crm.dynamics.com./x",
            "https://contoso.api.crm.dynamics.com:443/x",
            "http://contoso.api.crm.dynamics.com/x",
            "https://user:pw@contoso.api.crm.dynamics.com/x",
            "https://contoso.api.crm.dynamics.com.evil.example/x",
            "https://xcontoso.api.crm.dynamics.com/x",
            "https://x.contoso.api.crm.dynamics.com/x",
            "https://contoso.api.crm.dynamics.com:/x",
            "https://contoso.api.crm.dynamics.com.:443/x",
            "https://a@b@contoso.api.crm.dynamics.com:443/x",
            "https://evil.example@contoso.api.crm.dynamics.com/x",
            "https://contoso.api.crm.dynamics.com@evil.example/x",
            "https://contoso.api.crm.dynamics.com:99999/x",
            "https://contoso.api.crm.dynamics.com:+443/x",
            "http://contoso.api.crm.dynamics.com:443/x",
            "https://contoso--s.api.crm.dynamics.com:80/x",
            "http://[::1]:8080/",
            "https://[::1]:8080/",
            "https://127.0.0.1:8080/",
            "https://contoso.api.crm.dynamics.com:abc/x",
            "https://contoso.api.crm.dynamics.com:-1/x",
            "https://CONTOSO--S.api.crm.dynamics.com.:+443/x",
            "https://contoso.api.crm.dynamics.comx/x",
            "http://[::1]/",
            "http://[::1]x/",
            "http://[::1]5/",
            "http://[::1]:+80/",
            "http://[::1]:+8080/",
            "http://127.0.0.1:+8080/",
            "https://contoso.api.crm.dynamics.co/x",
            "https://fabrikam.api.crm.dynamics.com/x",
            "https://Contoso.crm4.dynamics.com:8443/",
            "https://contoso.crm4.dynamics.com:8443/",
            "https://contoso--s.crm4.dynamics.com:8443/",
            "https://contoso.crm4.dynamics.com/",
            "http://[::1]:8080/",
            "http://[0:0:0:0:0:0:0:1]:8080/",
            "http://u@[::1]:8080/",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:80/",
            "/relative",
        ];
        for pair in &pairs {
            for uri in uris {
                let uri: Uri = uri.parse().unwrap();
                let located = pair.locate(&uri);
                assert_eq!(
                    located.map(|(side, _)| side),
                    side_by_full_parse(pair, &uri),
                    "{uri}"
                );
                // "Exactly as configured" means the rewrite would change nothing.
                if let Some((side, true)) = located {
                    let target = pair.get(side).unwrap();
                    assert_eq!(rewrite_uri(uri.clone(), target), uri, "{uri}");
                }
            }
        }
    }

    #[test]
    fn host_and_port_agree_with_http() {
        for text in [
            "contoso.api.crm.dynamics.com",
            "Contoso.API.crm.dynamics.com.",
            "contoso.api.crm.dynamics.com:8443",
            "contoso.api.crm.dynamics.com:",
            "contoso.api.crm.dynamics.com:99999",
            "user@contoso.api.crm.dynamics.com",
            "user:pw@contoso.api.crm.dynamics.com",
            "user:pw@contoso.api.crm.dynamics.com:443",
            "a@b@contoso.example:80",
            "[::1]",
            "[::1]:8443",
            "u:p@[2001:db8::1]:443",
            "127.0.0.1:80",
            "localhost",
        ] {
            let authority: Authority = text.parse().unwrap();
            assert_eq!(
                host_and_port(authority.as_str()),
                (authority.host(), authority.port_u16()),
                "{text}"
            );
        }
    }

    #[test]
    fn rewriting_keeps_path_and_query_and_fixes_host() {
        let pair = Endpoints::dynamics("http://contoso.api.crm.dynamics.com").unwrap();
        let alt = pair.alternate().unwrap();
        let uri = rewrite_uri(
            "http://contoso.api.crm.dynamics.com/api/data/v9.2/accounts?$top=1"
                .parse()
                .unwrap(),
            alt,
        );
        assert_eq!(
            uri.to_string(),
            "http://contoso--s.api.crm.dynamics.com/api/data/v9.2/accounts?$top=1"
        );

        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("Contoso.api.crm.dynamics.com"));
        rewrite_host_header(&mut headers, &pair, alt);
        assert_eq!(headers[HOST], "contoso--s.api.crm.dynamics.com");

        headers.insert(HOST, HeaderValue::from_static("elsewhere.example.com"));
        rewrite_host_header(&mut headers, &pair, alt);
        assert_eq!(headers[HOST], "elsewhere.example.com");
    }
}
