//! Identity: who is calling. API keys (`keys`: the cache the request path
//! reads), JWT issuers (`jwt`: JWKS, verification, claim mapping) and client
//! certificates (`mtls`: SPIFFE ID, DNS name or common name). Turns
//! a presented credential into a `lattice_policy::Principal`; never decides
//! what that principal may do (that is policy) and never writes the state
//! store.
//!
//! Must never: decide what a principal may do.

pub mod jwt;
pub mod keys;
pub mod mtls;

pub use keys::KeyCache;
