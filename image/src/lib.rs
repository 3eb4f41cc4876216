//! Image references, the OCI distribution client, the content store and safe layer unpacking.
//!
//! This crate never spawns processes and never enters namespaces. Callers that want layers
//! unpacked with subordinate owners run it inside the engine's user namespace; the unpacker
//! reads `/proc/self/uid_map` to learn which owners it may set.

pub mod auth;
pub mod client;
pub mod digest;
pub mod layers;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry_config;
pub mod store;
pub mod unpack;
