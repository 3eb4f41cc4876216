//! The start order of services: `depends_on` and `links` both make a service start after
//! the services it names.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::ComposeError;
use super::model::ComposeService;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    Unvisited,
    InProgress,
    Done,
}

/// Returns the services that `service` starts after, in file order, without repeats.
fn dependencies(service: &ComposeService) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    let named = service
        .depends_on
        .iter()
        .map(|dependency| dependency.service.as_str())
        .chain(service.links.iter().map(|(linked, _)| linked.as_str()));
    for name in named {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Returns `roots` and everything they depend on, dependencies first. Every name must be a
/// service of `services`; a cycle is an error that names it.
pub(super) fn start_order(
    file: &Path,
    services: &BTreeMap<String, ComposeService>,
    roots: &[&str],
) -> Result<Vec<String>, ComposeError> {
    let mut marks: BTreeMap<&str, Mark> = services
        .keys()
        .map(|name| (name.as_str(), Mark::Unvisited))
        .collect();
    let mut order = Vec::new();
    let mut path = Vec::new();
    for root in roots {
        if !services.contains_key(*root) {
            return Err(ComposeError::UnknownRootService {
                file: file.to_owned(),
                service: (*root).to_owned(),
                known: services.keys().cloned().collect(),
            });
        }
        visit(file, services, root, &mut marks, &mut path, &mut order)?;
    }
    Ok(order)
}

/// Depth-first visit that appends `name` after its dependencies. `path` contains the services
/// being visited, so a service met again while in progress closes a cycle.
fn visit<'a>(
    file: &Path,
    services: &'a BTreeMap<String, ComposeService>,
    name: &'a str,
    marks: &mut BTreeMap<&'a str, Mark>,
    path: &mut Vec<&'a str>,
    order: &mut Vec<String>,
) -> Result<(), ComposeError> {
    match marks.get(name).copied() {
        Some(Mark::Done) => return Ok(()),
        Some(Mark::InProgress) => {
            let start = path.iter().position(|entry| *entry == name).unwrap_or(0);
            let mut cycle: Vec<String> = path[start..]
                .iter()
                .map(|entry| entry.to_string())
                .collect();
            cycle.push(name.to_owned());
            return Err(ComposeError::DependencyCycle {
                file: file.to_owned(),
                cycle,
            });
        }
        Some(Mark::Unvisited) => {}
        // Loading checks every reference, so only a hand-built project can get here.
        None => {
            return Err(ComposeError::UnknownRootService {
                file: file.to_owned(),
                service: name.to_owned(),
                known: services.keys().cloned().collect(),
            })
        }
    }

    marks.insert(name, Mark::InProgress);
    path.push(name);
    if let Some(service) = services.get(name) {
        for dependency in dependencies(service) {
            visit(file, services, dependency, marks, path, order)?;
        }
    }
    path.pop();
    marks.insert(name, Mark::Done);
    order.push(name.to_owned());
    Ok(())
}
