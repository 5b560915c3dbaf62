//! Provider connectors: how payoutd talks to each payment provider.
//!
//! - [`connector`]: the small [`Connector`] trait the engine drives, and the typed outcomes
//!   every connector maps its provider's answers into.
//! - [`eightb_partner`]: the 8B partner API (form-urlencoded requests, XML answers, MD5
//!   signatures): wire types, signing, HTTP client, callback verification.

pub mod connector;
pub mod eightb_partner;
pub mod http;
pub mod registry;

pub use connector::{
    BoxFuture, CallbackVerdict, CheckOutcome, Connector, FrozenRequest, PayoutForProvider, ProviderError,
    ProviderStatus, SubmitOutcome, VerifiedCallback,
};
pub use registry::Connectors;
