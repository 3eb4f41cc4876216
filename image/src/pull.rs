//! TODO: pull
