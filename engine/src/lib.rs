//! Container definitions, the rootless process runtime and ephemeral services.
pub mod bootstrap;
pub mod compose;
pub mod config;
pub mod container;
pub mod definition;
pub mod health_check;
pub mod images;
pub mod network;
pub mod runtime;
pub mod service;
pub mod session;
pub mod state;
mod sys;

pub use container::Container;
pub use session::Engine;
