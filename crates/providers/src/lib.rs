//! Provider connectors: how payoutd talks to each payment provider.
//!
//! - [`connector`]: the small [`Connector`] trait the engine drives, and the typed outcomes
//!   every connector maps its provider's answers into.
//! - [`eightb_partner`]: the 8B partner API (form-urlencoded requests, XML answers, MD5
//!   signatures): wire types, signing, HTTP client, callback verification.
//! - [`http`]: the HTTP plumbing every connector shares (failure classes, Retry-After).
//! - [`telemetry`]: the provider-call span, duration histogram and error counter, and the
//!   outgoing `traceparent`.

pub mod connector;
pub mod eightb_partner;
pub mod eightb_rest;
pub mod eightyeight_pay;
pub mod http;
pub mod json_amount;
pub mod registry;
pub mod telemetry;
pub mod token_keeper;

pub use connector::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, FrozenRequest, IncomingCallback, PayoutForProvider,
    ProviderError, ProviderRecord, ProviderStatus, StatusLookup, SubmitOutcome, VerifiedCallback,
};
pub use registry::Connectors;
