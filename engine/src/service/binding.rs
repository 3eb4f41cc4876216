//! Bindings: a client names a service under an alias. The client holds a reference to the
//! service while it runs, and the DNS responder answers the alias to that client only.

use std::net::IpAddr;

use mayfly_netns::DnsRegistry;

use super::error::{OutputTail, ServiceError};
use super::registry::ServiceRef;
use super::Service;

/// A service under the alias one client knows it by.
#[derive(Debug, Clone)]
pub struct ServiceBinding {
    pub alias: String,
    pub service: Service,
}

impl ServiceBinding {
    /// Checks that `alias` can be a DNS label: 1 to 63 letters, digits and hyphens, not
    /// starting or ending with a hyphen.
    pub fn new(alias: &str, service: Service) -> Result<Self, ServiceError> {
        check_alias(alias)?;
        Ok(Self {
            alias: alias.to_owned(),
            service,
        })
    }
}

pub(crate) fn check_alias(alias: &str) -> Result<(), ServiceError> {
    let invalid = |reason| ServiceError::InvalidAlias {
        alias: alias.to_owned(),
        reason,
    };
    if alias.is_empty() || alias.len() > 63 {
        return Err(invalid("an alias has 1 to 63 characters"));
    }
    if !alias
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(invalid(
            "an alias may hold only letters, digits, '-' and '_'",
        ));
    }
    if alias.starts_with('-') || alias.ends_with('-') {
        return Err(invalid("an alias may not start or end with '-'"));
    }
    Ok(())
}

/// The running services one client is bound to, each held until this is dropped.
#[derive(Debug, Default)]
pub struct BoundServices {
    bound: Vec<(String, ServiceRef)>,
}

impl BoundServices {
    /// Starts (or joins) every service of `bindings` at once and waits until all are healthy.
    pub async fn acquire(bindings: &[ServiceBinding]) -> Result<Self, ServiceError> {
        let starts = bindings.iter().map(|binding| async move {
            let reference = binding.service.acquire().await?;
            Ok::<_, ServiceError>((binding.alias.clone(), reference))
        });
        let bound = futures::future::try_join_all(starts).await?;
        Ok(Self { bound })
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// Returns the aliases and the references, in binding order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ServiceRef)> {
        self.bound
            .iter()
            .map(|(alias, reference)| (alias.as_str(), reference))
    }

    /// Makes each alias answer, for `client` only, with its service's address.
    pub fn register_aliases(&self, dns: &DnsRegistry, client: IpAddr) -> Result<(), ServiceError> {
        for (alias, reference) in &self.bound {
            let instance = reference.instance();
            dns.register_alias(client, alias, instance.address)
                .map_err(|source| ServiceError::Dns {
                    service: instance.name.clone(),
                    source,
                })?;
            tracing::debug!(%client, %alias, hostname = %instance.hostname, "bound service alias");
        }
        Ok(())
    }

    /// Resolves when any bound service stops, with an error that names it; never resolves
    /// when nothing is bound.
    pub async fn first_exit(&self) -> ServiceError {
        if self.bound.is_empty() {
            return std::future::pending().await;
        }
        let exits = self.bound.iter().map(|(alias, reference)| {
            Box::pin(async move {
                let instance = reference.instance();
                let status = instance.exited().await;
                ServiceError::BoundServiceExited {
                    service: instance.name.clone(),
                    alias: alias.clone(),
                    status,
                    output: OutputTail(instance.output.tail()),
                    cause: instance.cause(),
                }
            })
        });
        futures::future::select_all(exits).await.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_dns_labels() {
        for good in ["db", "redis-1", "my_db", "A9"] {
            assert!(check_alias(good).is_ok(), "{good}");
        }
        for bad in ["", "-db", "db-", "d.b", "d b", &"x".repeat(64)] {
            let error = check_alias(bad).unwrap_err();
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }
}
