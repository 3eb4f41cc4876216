//! Deciding how to answer one query: from the registry, or by forwarding.
//! No I/O happens here.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use super::registry::{DnsRegistry, Lookup};

/// Largest UDP answer this server offers in its EDNS record, the size that
/// avoids IP fragmentation on common paths (DNS flag day 2020).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// Records are answered with TTL 0: a name can move at any time.
const TTL: u32 = 0;

#[derive(Debug)]
pub(crate) enum Decision {
    Respond(Message),
    Forward,
}

impl Decision {
    /// Names the outcome for the query log.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Forward => "forwarded",
            Decision::Respond(message) => match message.response_code() {
                ResponseCode::NoError if message.answers().is_empty() => "no data",
                ResponseCode::NoError => "answered",
                ResponseCode::NXDomain => "nxdomain",
                _ => "error",
            },
        }
    }
}

/// Decides how to answer `query`, received from `client`.
pub(crate) fn decide(
    query: &Message,
    client: IpAddr,
    registry: &DnsRegistry,
    local_networks: &[IpNet],
) -> Decision {
    if query.message_type() != MessageType::Query {
        return Decision::Respond(reply(query, ResponseCode::FormErr));
    }
    if query.op_code() != OpCode::Query {
        return Decision::Respond(reply(query, ResponseCode::NotImp));
    }
    let [question] = query.queries() else {
        return Decision::Respond(reply(query, ResponseCode::FormErr));
    };
    if question.query_class() != DNSClass::IN {
        return Decision::Respond(reply(query, ResponseCode::NotImp));
    }

    let name = question.name().to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if name.ends_with(".in-addr.arpa") || name.ends_with(".ip6.arpa") {
        return decide_reverse(query, question.name(), client, registry, local_networks);
    }

    match registry.lookup(client, name) {
        Lookup::Foreign => Decision::Forward,
        Lookup::NotFound => {
            let mut response = reply(query, ResponseCode::NXDomain);
            add_soa(&mut response, registry);
            Decision::Respond(response)
        }
        Lookup::Found(addrs) => Decision::Respond(address_answer(query, registry, name, &addrs)),
    }
}

fn address_answer(
    query: &Message,
    registry: &DnsRegistry,
    name: &str,
    addrs: &[IpAddr],
) -> Message {
    let question = &query.queries()[0];
    let qtype = question.query_type();
    let owner = question.name().clone();
    let mut response = reply(query, ResponseCode::NoError);

    for addr in addrs {
        let rdata = match (addr, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
    }
    if name == registry.domain() && qtype == RecordType::SOA {
        response.add_answer(soa_record(registry));
    }
    if response.answers().is_empty() {
        add_soa(&mut response, registry);
    }
    response
}

fn decide_reverse(
    query: &Message,
    qname: &Name,
    client: IpAddr,
    registry: &DnsRegistry,
    local_networks: &[IpNet],
) -> Decision {
    let Ok(network) = qname.parse_arpa_name() else {
        return Decision::Forward;
    };
    let is_local = local_networks
        .iter()
        .any(|local| local.contains(&network) || network.contains(local));
    if network.prefix_len() != network.max_prefix_len() {
        // A partial reverse name such as 0.89.10.in-addr.arpa: it exists
        // (addresses lie below it) but has no records here.
        return if is_local {
            Decision::Respond(reply(query, ResponseCode::NoError))
        } else {
            Decision::Forward
        };
    }

    let addr = network.addr();
    match registry.reverse(client, addr) {
        Some(target) => {
            let mut response = reply(query, ResponseCode::NoError);
            let qtype = query.queries()[0].query_type();
            if matches!(qtype, RecordType::PTR | RecordType::ANY) {
                if let Ok(target) = Name::from_ascii(format!("{target}.")) {
                    response.add_answer(Record::from_rdata(
                        qname.clone(),
                        TTL,
                        RData::PTR(PTR(target)),
                    ));
                }
            }
            Decision::Respond(response)
        }
        None if is_local => Decision::Respond(reply(query, ResponseCode::NXDomain)),
        None => Decision::Forward,
    }
}

/// An empty response to `query` with code `code`, authoritative and
/// offering recursion (which forwarding provides).
pub(crate) fn reply(query: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new();
    response
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(code != ResponseCode::ServFail)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    response.add_queries(query.queries().to_vec());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
        response.set_edns(edns);
    }
    response
}

fn soa_record(registry: &DnsRegistry) -> Record {
    let apex = Name::from_ascii(format!("{}.", registry.domain())).unwrap_or_else(|_| Name::root());
    let hostmaster = Name::from_ascii(format!("hostmaster.{}.", registry.domain()))
        .unwrap_or_else(|_| Name::root());
    // The last field (minimum) is the negative-caching TTL: 0, so an
    // NXDOMAIN is not remembered after the name gets registered.
    let soa = SOA::new(apex.clone(), hostmaster, 1, 3600, 600, 86400, 0);
    Record::from_rdata(apex, TTL, RData::SOA(soa))
}

/// Adds the domain's SOA to the authority section of a negative answer.
fn add_soa(response: &mut Message, registry: &DnsRegistry) {
    response.add_name_server(soa_record(registry));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::str::FromStr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message
    }

    fn setup() -> (DnsRegistry, Vec<IpNet>) {
        let registry = DnsRegistry::new("mayfly.internal").unwrap();
        registry.register("web", ip("10.89.0.2")).unwrap();
        registry.register("web", ip("fd00:89::2")).unwrap();
        registry
            .register_alias(ip("10.89.0.3"), "db", ip("10.89.0.4"))
            .unwrap();
        (
            registry,
            vec![
                "10.89.0.0/24".parse().unwrap(),
                "fd00:89::/64".parse().unwrap(),
            ],
        )
    }

    fn respond(query: &Message, client: &str) -> Message {
        let (registry, local) = setup();
        match decide(query, ip(client), &registry, &local) {
            Decision::Respond(message) => message,
            Decision::Forward => panic!("query was forwarded"),
        }
    }

    fn answers(message: &Message) -> Vec<String> {
        message
            .answers()
            .iter()
            .map(|r| r.data().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_and_aaaa_answers() {
        let response = respond(&query("Web.mayfly.internal.", RecordType::A), "10.89.0.9");
        assert_eq!(response.id(), 4242);
        assert!(response.authoritative());
        assert_eq!(answers(&response), vec!["10.89.0.2"]);
        assert_eq!(response.answers()[0].ttl(), 0);
        assert_eq!(
            response.answers()[0].name().to_ascii(),
            "Web.mayfly.internal."
        );

        let response = respond(
            &query("web.mayfly.internal.", RecordType::AAAA),
            "10.89.0.9",
        );
        assert_eq!(answers(&response), vec!["fd00:89::2"]);
    }

    #[test]
    fn other_type_is_no_data_with_soa() {
        let response = respond(&query("web.mayfly.internal.", RecordType::MX), "10.89.0.9");
        assert_eq!(response.response_code(), ResponseCode::NoError);
        assert!(response.answers().is_empty());
        assert_eq!(response.name_servers()[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn unknown_name_is_nxdomain() {
        let response = respond(&query("nope.mayfly.internal.", RecordType::A), "10.89.0.9");
        assert_eq!(response.response_code(), ResponseCode::NXDomain);
        assert_eq!(response.name_servers().len(), 1);
    }

    #[test]
    fn alias_for_holder_only() {
        let response = respond(&query("db.", RecordType::A), "10.89.0.3");
        assert_eq!(answers(&response), vec!["10.89.0.4"]);
        let response = respond(&query("db.mayfly.internal.", RecordType::A), "10.89.0.3");
        assert_eq!(answers(&response), vec!["10.89.0.4"]);
        let response = respond(&query("db.mayfly.internal.", RecordType::A), "10.89.0.5");
        assert_eq!(response.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn foreign_names_forwarded() {
        let (registry, local) = setup();
        let decision = decide(
            &query("example.com.", RecordType::A),
            ip("10.89.0.3"),
            &registry,
            &local,
        );
        assert!(matches!(decision, Decision::Forward));
        // Another client's alias is just a foreign name.
        let decision = decide(
            &query("db.", RecordType::A),
            ip("10.89.0.5"),
            &registry,
            &local,
        );
        assert!(matches!(decision, Decision::Forward));
    }

    #[test]
    fn ptr_for_registered_address() {
        let response = respond(
            &query("2.0.89.10.in-addr.arpa.", RecordType::PTR),
            "10.89.0.9",
        );
        assert_eq!(answers(&response), vec!["web.mayfly.internal."]);
        let response = respond(
            &query("4.0.89.10.in-addr.arpa.", RecordType::PTR),
            "10.89.0.3",
        );
        assert_eq!(answers(&response), vec!["db.mayfly.internal."]);
    }

    #[test]
    fn ptr_unknown_local_is_nxdomain() {
        let response = respond(
            &query("77.0.89.10.in-addr.arpa.", RecordType::PTR),
            "10.89.0.9",
        );
        assert_eq!(response.response_code(), ResponseCode::NXDomain);
        let response = respond(
            &query("0.89.10.in-addr.arpa.", RecordType::PTR),
            "10.89.0.9",
        );
        assert_eq!(response.response_code(), ResponseCode::NoError);
        assert!(response.answers().is_empty());
    }

    #[test]
    fn ptr_v6_registered() {
        let name = Name::from(ip("fd00:89::2"));
        let response = respond(&query(&name.to_ascii(), RecordType::PTR), "10.89.0.9");
        assert_eq!(answers(&response), vec!["web.mayfly.internal."]);
    }

    #[test]
    fn ptr_outside_local_forwarded() {
        let (registry, local) = setup();
        let decision = decide(
            &query("1.1.168.192.in-addr.arpa.", RecordType::PTR),
            ip("10.89.0.9"),
            &registry,
            &local,
        );
        assert!(matches!(decision, Decision::Forward));
    }

    #[test]
    fn malformed_queries_rejected() {
        let mut two = query("web.mayfly.internal.", RecordType::A);
        two.add_query(Query::query(Name::from_str("x.").unwrap(), RecordType::A));
        assert_eq!(
            respond(&two, "10.89.0.9").response_code(),
            ResponseCode::FormErr
        );

        let mut notify = query("web.mayfly.internal.", RecordType::A);
        notify.set_op_code(OpCode::Notify);
        assert_eq!(
            respond(&notify, "10.89.0.9").response_code(),
            ResponseCode::NotImp
        );
    }

    #[test]
    fn soa_at_apex() {
        let response = respond(&query("mayfly.internal.", RecordType::SOA), "10.89.0.9");
        assert_eq!(response.answers()[0].record_type(), RecordType::SOA);
    }
}
