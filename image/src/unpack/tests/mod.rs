mod basic;
mod flatten;
mod hostile;
mod isolated;
mod overlay;
mod owners;
mod properties;
pub(crate) mod support;
mod whiteouts;
