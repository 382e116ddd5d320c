//! Identity: who is calling. API keys (`keys`: the cache the request path
//! reads) and JWT issuers (`jwt`: JWKS, verification, claim mapping). Turns
//! a presented credential into a `lattice_policy::Principal`; never decides
//! what that principal may do (that is policy) and never writes the state
//! store.
//!
//! Must never: decide what a principal may do.

pub mod jwt;
pub mod keys;

pub use keys::KeyCache;
