//! # lattice-workbench — NOT BUILT YET
//!
//! Purpose: The yew web console served by the gateway at /ui. See issue #5.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
