//! The records the DNS responder answers from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::names::{normalize, relative_to};
use super::DnsError;

/// Names and per-client aliases, shared between the caller that registers
/// them and the server that answers from them.
#[derive(Debug)]
pub struct DnsRegistry {
    domain: String,
    records: RwLock<Records>,
}

#[derive(Debug, Default)]
struct Records {
    /// Fully qualified name (normalised, no trailing dot) to addresses, in
    /// registration order.
    names: HashMap<String, Vec<IpAddr>>,
    /// Client address to its aliases (relative to the domain) and their
    /// addresses.
    aliases: HashMap<IpAddr, HashMap<String, Vec<IpAddr>>>,
}

/// Result of looking a name up for one client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The name exists; these are its addresses (possibly none of the
    /// asked type).
    Found(Vec<IpAddr>),
    /// The name is under the domain but not registered.
    NotFound,
    /// The name is not ours to answer.
    Foreign,
}

impl DnsRegistry {
    /// A registry for `domain` (for example `mayfly.internal`).
    pub fn new(domain: &str) -> Result<Self, DnsError> {
        Ok(Self {
            domain: normalize(domain)?,
            records: RwLock::default(),
        })
    }

    /// The domain, normalised (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Answers `name` with `addr` to every client. `name` is relative to
    /// the domain unless it already ends in it (`db` and
    /// `db.mayfly.internal` are the same name). Registering a second
    /// address adds to the first, so a name can have an A and an AAAA
    /// record.
    pub fn register(&self, name: &str, addr: IpAddr) -> Result<(), DnsError> {
        let name = self.qualify(name)?;
        let mut records = self.write();
        let addrs = records.names.entry(name).or_default();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        Ok(())
    }

    /// Stops answering `name` (all its addresses).
    pub fn unregister(&self, name: &str) -> Result<(), DnsError> {
        let name = self.qualify(name)?;
        self.write().names.remove(&name);
        Ok(())
    }

    /// Answers `alias` with `addr`, but only to queries from `client`. The
    /// alias answers both as given and under the domain (`db` and
    /// `db.mayfly.internal`), and hides a registered name of the same
    /// spelling from that client.
    pub fn register_alias(
        &self,
        client: IpAddr,
        alias: &str,
        addr: IpAddr,
    ) -> Result<(), DnsError> {
        let alias = self.relative(alias)?;
        let mut records = self.write();
        let addrs = records
            .aliases
            .entry(client)
            .or_default()
            .entry(alias)
            .or_default();
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
        Ok(())
    }

    /// Removes one alias of `client`.
    pub fn unregister_alias(&self, client: IpAddr, alias: &str) -> Result<(), DnsError> {
        let alias = self.relative(alias)?;
        let mut records = self.write();
        if let Some(aliases) = records.aliases.get_mut(&client) {
            aliases.remove(&alias);
            if aliases.is_empty() {
                records.aliases.remove(&client);
            }
        }
        Ok(())
    }

    /// Removes every alias of `client`, as when its container goes away.
    pub fn remove_client(&self, client: IpAddr) {
        self.write().aliases.remove(&client);
    }

    /// Looks up the normalised `name` for `client`.
    pub(crate) fn lookup(&self, client: IpAddr, name: &str) -> Lookup {
        let records = self.read();
        let relative = relative_to(name, &self.domain);

        if let Some(aliases) = records.aliases.get(&client) {
            let alias = aliases
                .get(name)
                .or_else(|| relative.and_then(|rel| aliases.get(rel)));
            if let Some(addrs) = alias {
                return Lookup::Found(addrs.clone());
            }
        }

        if name == self.domain {
            return Lookup::Found(Vec::new());
        }
        if relative.is_none() {
            return Lookup::Foreign;
        }
        if let Some(addrs) = records.names.get(name) {
            return Lookup::Found(addrs.clone());
        }

        // A name with registered names below it exists, with no records.
        let suffix = format!(".{name}");
        if records
            .names
            .keys()
            .any(|registered| registered.ends_with(&suffix))
        {
            return Lookup::Found(Vec::new());
        }
        Lookup::NotFound
    }

    /// The fully qualified name to return for a PTR query about `addr` from
    /// `client`: one of the client's aliases first, then a registered name.
    /// Among several, the alphabetically first, so answers are stable.
    pub(crate) fn reverse(&self, client: IpAddr, addr: IpAddr) -> Option<String> {
        let records = self.read();
        let alias = records.aliases.get(&client).and_then(|aliases| {
            aliases
                .iter()
                .filter(|(_, addrs)| addrs.contains(&addr))
                .map(|(alias, _)| alias)
                .min()
        });
        if let Some(alias) = alias {
            return Some(format!("{alias}.{}", self.domain));
        }
        records
            .names
            .iter()
            .filter(|(_, addrs)| addrs.contains(&addr))
            .map(|(name, _)| name)
            .min()
            .cloned()
    }

    fn qualify(&self, name: &str) -> Result<String, DnsError> {
        let name = normalize(name)?;
        if name == self.domain || relative_to(&name, &self.domain).is_some() {
            Ok(name)
        } else {
            Ok(format!("{name}.{}", self.domain))
        }
    }

    fn relative(&self, alias: &str) -> Result<String, DnsError> {
        let alias = normalize(alias)?;
        match relative_to(&alias, &self.domain) {
            Some(relative) => Ok(relative.to_owned()),
            None if alias == self.domain => Err(DnsError::InvalidName {
                name: alias,
                reason: "an alias cannot be the domain itself",
            }),
            None => Ok(alias),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Records> {
        // Every write leaves the maps consistent, so a poisoned lock is safe.
        self.records.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Records> {
        self.records.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn registry() -> DnsRegistry {
        DnsRegistry::new("mayfly.internal").unwrap()
    }

    #[test]
    fn register_qualifies_names() {
        let registry = registry();
        registry.register("Web", ip("10.89.0.2")).unwrap();
        registry
            .register("web.mayfly.internal.", ip("fd00::2"))
            .unwrap();
        let found = registry.lookup(ip("10.89.0.9"), "web.mayfly.internal");
        assert_eq!(found, Lookup::Found(vec![ip("10.89.0.2"), ip("fd00::2")]));
    }

    #[test]
    fn unknown_name_under_domain_not_found() {
        let registry = registry();
        assert_eq!(
            registry.lookup(ip("10.89.0.9"), "nope.mayfly.internal"),
            Lookup::NotFound
        );
        assert_eq!(
            registry.lookup(ip("10.89.0.9"), "example.com"),
            Lookup::Foreign
        );
        assert_eq!(
            registry.lookup(ip("10.89.0.9"), "mayfly.internal"),
            Lookup::Found(vec![])
        );
    }

    #[test]
    fn parent_of_registered_name_exists() {
        let registry = registry();
        registry.register("a.b", ip("10.89.0.2")).unwrap();
        assert_eq!(
            registry.lookup(ip("10.89.0.9"), "b.mayfly.internal"),
            Lookup::Found(vec![])
        );
    }

    #[test]
    fn alias_only_for_its_client() {
        let registry = registry();
        let holder = ip("10.89.0.3");
        registry
            .register_alias(holder, "db", ip("10.89.0.4"))
            .unwrap();
        let found = Lookup::Found(vec![ip("10.89.0.4")]);
        assert_eq!(registry.lookup(holder, "db"), found);
        assert_eq!(registry.lookup(holder, "db.mayfly.internal"), found);
        assert_eq!(
            registry.lookup(ip("10.89.0.5"), "db.mayfly.internal"),
            Lookup::NotFound
        );
        assert_eq!(registry.lookup(ip("10.89.0.5"), "db"), Lookup::Foreign);
    }

    #[test]
    fn alias_hides_global_name() {
        let registry = registry();
        let holder = ip("10.89.0.3");
        registry.register("db", ip("10.89.0.7")).unwrap();
        registry
            .register_alias(holder, "db.mayfly.internal", ip("10.89.0.4"))
            .unwrap();
        assert_eq!(
            registry.lookup(holder, "db.mayfly.internal"),
            Lookup::Found(vec![ip("10.89.0.4")])
        );
        assert_eq!(
            registry.lookup(ip("10.89.0.5"), "db.mayfly.internal"),
            Lookup::Found(vec![ip("10.89.0.7")])
        );
    }

    #[test]
    fn dotted_alias_answers_bare_form() {
        let registry = registry();
        let holder = ip("10.89.0.3");
        registry
            .register_alias(holder, "cache.local", ip("10.89.0.4"))
            .unwrap();
        assert_eq!(
            registry.lookup(holder, "cache.local"),
            Lookup::Found(vec![ip("10.89.0.4")])
        );
        assert_eq!(
            registry.lookup(holder, "cache.local.mayfly.internal"),
            Lookup::Found(vec![ip("10.89.0.4")])
        );
    }

    #[test]
    fn remove_client_drops_aliases() {
        let registry = registry();
        let holder = ip("10.89.0.3");
        registry
            .register_alias(holder, "db", ip("10.89.0.4"))
            .unwrap();
        registry.remove_client(holder);
        assert_eq!(
            registry.lookup(holder, "db.mayfly.internal"),
            Lookup::NotFound
        );
    }

    #[test]
    fn reverse_prefers_alias_of_client() {
        let registry = registry();
        let holder = ip("10.89.0.3");
        registry.register("zz-service", ip("10.89.0.4")).unwrap();
        registry.register("aa-service", ip("10.89.0.4")).unwrap();
        registry
            .register_alias(holder, "db", ip("10.89.0.4"))
            .unwrap();
        assert_eq!(
            registry.reverse(holder, ip("10.89.0.4")).as_deref(),
            Some("db.mayfly.internal")
        );
        assert_eq!(
            registry
                .reverse(ip("10.89.0.5"), ip("10.89.0.4"))
                .as_deref(),
            Some("aa-service.mayfly.internal")
        );
        assert_eq!(registry.reverse(holder, ip("10.89.0.99")), None);
    }

    #[test]
    fn alias_cannot_be_domain() {
        let registry = registry();
        assert!(registry
            .register_alias(ip("10.89.0.3"), "mayfly.internal", ip("10.89.0.4"))
            .is_err());
    }
}
