//! Container definitions, the rootless process runtime and ephemeral services.
pub mod config;
pub mod definition;
