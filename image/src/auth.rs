//! TODO: auth
