//! # lattice-gpu-kernels — NOT BUILT YET
//!
//! Purpose: Lattice's own worker kernels (cudarc) with a CPU reference path; detects a missing GPU and says so.
//!
//! This crate holds only its purpose today. Nothing here works yet, and
//! nothing may depend on it until it does.
