//! The outbound HTTP client for webhooks. The URLs come from clients, so every request is
//! treated as a possible attack on payoutd's own network (SSRF):
//!
//! - Only http and https URLs without credentials ([`payoutd_core::net_policy::check_url`]).
//! - The address actually connected to is checked, not the name: a literal address is checked
//!   before the request; a host name is resolved by [`GuardedResolver`], which drops every
//!   address the [`AddressPolicy`] refuses (loopback, link-local, private, unspecified, ...
//!   unless allow-listed) and hands the connector only the addresses it kept, so a name that
//!   resolved to a public address at registration and to 127.0.0.1 now (DNS rebinding) is
//!   refused now. The address the response came from is checked once more.
//! - No proxy (the connection would go to the proxy, not to the checked address), no
//!   redirects, a connect timeout and a total timeout, and the answer is read only up to a
//!   small bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use payoutd_core::net_policy::{self, AddressPolicy, ForbiddenAddress};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    /// Connect, send, and read the answer (up to `max_response_bytes`).
    pub timeout: Duration,
    /// How much of an answer is read (and kept, as an excerpt, in the delivery log).
    pub max_response_bytes: usize,
    pub policy: AddressPolicy,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_response_bytes: 4096,
            policy: AddressPolicy::default(),
        }
    }
}

/// Why a request did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Refused by the address policy; nothing was sent.
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
    /// No connection could be made; nothing was sent.
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct BuildError(String);

/// An answer (any status).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub remote_addr: Option<SocketAddr>,
    /// The start of the body, at most the configured bound, as lossy UTF-8.
    pub excerpt: String,
}

#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    max_response_bytes: usize,
}

impl WebhookClient {
    pub fn new(settings: &ClientSettings) -> Result<Self, BuildError> {
        let policy = Arc::new(settings.policy.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .dns_resolver(Arc::new(GuardedResolver { policy: policy.clone() }))
            .user_agent(concat!("payoutd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError(e.to_string()))?;
        Ok(Self { client, policy, max_response_bytes: settings.max_response_bytes })
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// POSTs `body` with `headers` to `url`. Any status is an [`Answer`]; the caller decides
    /// what counts as delivered.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, SendError> {
        let url = net_policy::check_url(url, &self.policy).map_err(|e| match e {
            net_policy::UrlRefused::Forbidden(f) => SendError::Refused(f.to_string()),
            net_policy::UrlRefused::LocalName(n) => SendError::Refused(format!("{n:?} names this machine")),
            other => SendError::InvalidUrl(other.to_string()),
        })?;
        let mut request =
            self.client.post(url.as_str()).header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let mut response = request.body(body).send().await.map_err(classify)?;
        let remote_addr = response.remote_addr();
        // Defence in depth: the resolver only handed out allowed addresses, so this cannot fail
        // unless a connection was made some other way.
        if let Some(addr) = remote_addr
            && let Err(f) = self.policy.check(addr.ip())
        {
            return Err(SendError::Refused(format!("the answer came from a refused address: {f}")));
        }
        let status = response.status().as_u16();
        let mut read = Vec::new();
        while read.len() < self.max_response_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_response_bytes - read.len();
                    read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                // The status is what counts; a body cut short by the timeout is still logged.
                Ok(None) | Err(_) => break,
            }
        }
        drop(response);
        Ok(Answer { status, remote_addr, excerpt: String::from_utf8_lossy(&read).into_owned() })
    }
}

/// Turns a reqwest error into what the delivery log says. Error texts never carry the URL
/// (`without_url`): a client may have put a token in its query string.
fn classify(e: reqwest::Error) -> SendError {
    if let Some(refused) = find_refusal(&e) {
        return SendError::Refused(refused);
    }
    let e = e.without_url();
    if e.is_timeout() {
        SendError::Timeout
    } else if e.is_connect() {
        SendError::Connect(chain(&e))
    } else {
        SendError::Other(chain(&e))
    }
}

fn find_refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<AddressRefused>() {
            return Some(r.to_string());
        }
        source = s.source();
    }
    None
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Every address a host name resolved to was refused by the policy.
#[derive(Debug, thiserror::Error)]
#[error("{host:?} resolves only to refused addresses: {}", .refused.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("; "))]
pub struct AddressRefused {
    host: String,
    refused: Vec<ForbiddenAddress>,
}

/// Resolves with the system resolver and keeps only the addresses the policy allows: the
/// connector connects to exactly these.
struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_checked(&host, &policy).await?;
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Resolves `host` with the system resolver and keeps the addresses `policy` allows; an error
/// when there are none ([`AddressRefused`] when the policy refused them all).
pub async fn resolve_checked(
    host: &str,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let resolved = tokio::net::lookup_host((host, 0)).await?;
    let (mut allowed, mut refused) = (Vec::new(), Vec::new());
    for addr in resolved {
        match policy.check(addr.ip()) {
            Ok(()) => allowed.push(addr),
            Err(f) => refused.push(f),
        }
    }
    if allowed.is_empty() && refused.is_empty() {
        return Err(Box::new(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the host name has no address",
        )));
    }
    if allowed.is_empty() {
        return Err(Box::new(AddressRefused { host: host.to_owned(), refused }));
    }
    Ok(allowed)
}
