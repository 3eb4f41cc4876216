mod basic;
mod flatten;
mod hostile;
mod isolated;
mod owners;
mod properties;
mod support;
mod whiteouts;
