//! TODO: unpack
