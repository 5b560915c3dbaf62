//! The 8B REST API: OAuth2 password-grant tokens shared by the fleet, JSON bodies, unsigned
//! webhooks that only bring a status query forward.
//!
//! - [`wire`]: the request and answer bodies (the assumed ones listed in one table) and the
//!   status mapping.
//! - [`client`]: [`EightBRest`], the connector: token use, 401 refresh-and-repeat, and the
//!   classification of each answer.
//! - [`callback`]: the webhook URL's secret path segment, and the provider id it names.
//!
//! How an in-doubt submit is resolved: the status call needs the provider's disbursement id,
//! which only the submit answer carries. When that answer is lost, the payout is never sent
//! again; it waits for the provider's webhook, which names a disbursement id no payout carries,
//! asks `GET /api/v1/disbursements/{id}` about it and adopts it when the answer carries our
//! reference, amount and currency (see the engine's steps).

pub mod callback;
pub mod client;
pub mod wire;

pub use client::{ConfigError, EightBRest, EightBRestConfig};
