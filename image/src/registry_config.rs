//! TODO: registry_config
