//! TODO: platform
