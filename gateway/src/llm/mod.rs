//! The LLM door, the OpenAI API under `/v1` (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/models`): the request checked
//! before the model is resolved, policy evaluated per backend of the route
//! (the allowed backends are the only candidates), limits and token
//! budgets, a retry on another allowed backend only while no byte has
//! reached the agent, and usage and time to first token on the outcome.
//! Backends, selection and the upstream body are `lattice-inference-router`'s.
//!
//! Must never: import `proxy` or another door, retry after the first byte,
//! or send a backend the agent's credentials.

mod endpoint;

pub use endpoint::{serve, total};
