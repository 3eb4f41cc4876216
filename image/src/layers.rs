//! TODO: layers
