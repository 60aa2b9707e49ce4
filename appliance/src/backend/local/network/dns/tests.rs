//! The scope name server against real sockets on 127.0.0.0/8 and a free high
//! port, with fake upstream servers in the test.

use std::time::Instant;

use hickory_proto::op::Query;
use tokio::task::JoinHandle;

use super::*;

/// How long a test client waits for any answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

const WEB: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const DB1: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
const DB2: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 4);
/// What the fake upstream answers for every name.
const FAR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 53, last)
}

/// A port free for UDP and TCP on every one of `ips`.
fn free_port(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..100 {
        let probe = std::net::UdpSocket::bind((ips[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let free = ips.iter().all(|ip| {
            std::net::UdpSocket::bind((*ip, port)).is_ok()
                && std::net::TcpListener::bind((*ip, port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no free port on {ips:?}");
}

fn scope(listen: Ipv4Addr, names: &[(&str, &[Ipv4Addr])]) -> ScopeDns {
    ScopeDns {
        listen,
        names: names
            .iter()
            .map(|(name, addrs)| (name.to_string(), addrs.to_vec()))
            .collect(),
    }
}

fn scopes(list: &[(&str, ScopeDns)]) -> BTreeMap<String, ScopeDns> {
    list.iter()
        .map(|(name, s)| (name.to_string(), s.clone()))
        .collect()
}

fn query(id: u16, name: &str, rtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message
}

async fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let sent = query(random_id(), name, rtype);
    socket
        .send_to(&sent.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (len, from) = tokio::time::timeout(CLIENT_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(from, server);
    let answer = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(answer.metadata.id, sent.metadata.id);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    answer
}

/// A TCP connection to a server, for several queries in a row.
struct TcpClient(TcpStream);

impl TcpClient {
    async fn connect(server: SocketAddr) -> Self {
        Self(TcpStream::connect(server).await.unwrap())
    }

    async fn ask(&mut self, name: &str, rtype: RecordType) -> Message {
        let sent = query(random_id(), name, rtype).to_vec().unwrap();
        let len = u16::try_from(sent.len()).unwrap();
        self.0.write_all(&len.to_be_bytes()).await.unwrap();
        self.0.write_all(&sent).await.unwrap();
        let answer = tokio::time::timeout(CLIENT_TIMEOUT, async {
            let mut len = [0u8; 2];
            self.0.read_exact(&mut len).await?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            self.0.read_exact(&mut buf).await?;
            io::Result::Ok(buf)
        })
        .await
        .expect("no answer in time")
        .unwrap();
        Message::from_vec(&answer).unwrap()
    }
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .map(|record| match record.data {
            RData::A(A(addr)) => addr,
            ref other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

/// A fake upstream on `listen`: answers every UDP query with `FAR`, or
/// never answers when `silent`.
async fn upstream(listen: Ipv4Addr, silent: bool) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind((listen, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = socket.recv_from(&mut buf).await.unwrap();
            if silent {
                continue;
            }
            let asked = Message::from_vec(&buf[..len]).unwrap();
            let mut answer = Message::response(asked.metadata.id, OpCode::Query);
            answer.metadata.recursion_available = true;
            answer.add_queries(asked.queries.clone());
            let owner = asked.queries[0].name().clone();
            answer.add_answer(Record::from_rdata(owner, 60, RData::A(A(FAR))));
            socket
                .send_to(&answer.to_vec().unwrap(), from)
                .await
                .unwrap();
        }
    });
    (addr, task)
}

/// A fake upstream answering every query over TCP with `FAR`.
async fn tcp_upstream(listen: Ipv4Addr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind((listen, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.unwrap();
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut buf).await.unwrap();
            let asked = Message::from_vec(&buf).unwrap();
            let mut answer = Message::response(asked.metadata.id, OpCode::Query);
            answer.add_queries(asked.queries.clone());
            let owner = asked.queries[0].name().clone();
            answer.add_answer(Record::from_rdata(owner, 60, RData::A(A(FAR))));
            let bytes = answer.to_vec().unwrap();
            let len = u16::try_from(bytes.len()).unwrap();
            stream.write_all(&len.to_be_bytes()).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
        }
    });
    (addr, task)
}

/// An address with a port nobody listens on (UDP there is refused at once).
fn closed(listen: Ipv4Addr) -> SocketAddr {
    let socket = std::net::UdpSocket::bind((listen, 0)).unwrap();
    socket.local_addr().unwrap()
}

/// A `Dns` serving one scope "s" on `ip(last)` with `names`.
async fn serving(
    last: u8,
    upstream: Vec<SocketAddr>,
    names: &[(&str, &[Ipv4Addr])],
) -> (Dns, SocketAddr) {
    let port = free_port(&[ip(last)]);
    let mut dns = Dns::with_port(upstream, port);
    let failed = dns.apply(scopes(&[("s", scope(ip(last), names))])).await;
    assert!(failed.is_empty(), "{failed:?}");
    let listen = SocketAddr::from((ip(last), port));
    assert_eq!(dns.served(), BTreeMap::from([("s".to_string(), listen)]));
    (dns, listen)
}

#[tokio::test]
async fn known_name_answers_authoritatively() {
    let (mut dns, server) = serving(1, vec![], &[("web", &[WEB])]).await;
    let answer = ask_udp(server, "web", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(a_records(&answer), vec![WEB]);
    assert_eq!(answer.answers[0].ttl, TTL);
    assert_eq!(answer.answers[0].name, Name::from_ascii("web.").unwrap());
    dns.shutdown().await;
    assert!(dns.served().is_empty());
}

#[tokio::test]
async fn names_are_case_insensitive_with_or_without_dot() {
    let (_dns, server) = serving(2, vec![], &[("web", &[WEB]), ("Db.", &[DB1])]).await;
    for name in ["WEB", "Web.", "web."] {
        let answer = ask_udp(server, name, RecordType::A).await;
        assert_eq!(a_records(&answer), vec![WEB], "{name}");
        // The owner name is the one asked, case and all.
        assert_eq!(
            answer.answers[0].name.to_ascii().trim_end_matches('.'),
            name.trim_end_matches('.')
        );
    }
    // Names handed over in another case are found too.
    assert_eq!(
        a_records(&ask_udp(server, "db", RecordType::A).await),
        vec![DB1]
    );
}

#[tokio::test]
async fn alias_with_several_addresses() {
    let (_dns, server) = serving(3, vec![], &[("web", &[WEB]), ("db", &[DB1, DB2])]).await;
    let answer = ask_udp(server, "db", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&answer), vec![DB1, DB2]);
}

#[tokio::test]
async fn other_types_of_a_known_name_answer_empty() {
    let (_dns, server) = serving(4, vec![], &[("web", &[WEB])]).await;
    for rtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let answer = ask_udp(server, "web", rtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{rtype}"
        );
        assert!(answer.metadata.authoritative, "{rtype}");
        assert!(answer.answers.is_empty(), "{rtype}");
    }
}

#[tokio::test]
async fn unknown_name_is_forwarded_in_order() {
    let (fake, _task) = upstream(ip(5), false).await;
    let refused = closed(ip(5));
    let (_dns, server) = serving(6, vec![refused, fake], &[("web", &[WEB])]).await;
    let started = Instant::now();
    let answer = ask_udp(server, "example.org", RecordType::A).await;
    // The first upstream refused at once; the second answered.
    assert!(
        started.elapsed() < FORWARD_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.authoritative);
    assert!(answer.metadata.recursion_available);
    assert_eq!(a_records(&answer), vec![FAR]);
    assert_eq!(answer.answers[0].ttl, 60);
    // Known names are still answered here, not upstream.
    assert_eq!(
        a_records(&ask_udp(server, "web", RecordType::A).await),
        vec![WEB]
    );
}

#[tokio::test]
async fn silent_upstream_is_skipped_after_the_timeout() {
    let (silent, _silent_task) = upstream(ip(7), true).await;
    let (fake, _task) = upstream(ip(7), false).await;
    let (_dns, server) = serving(8, vec![silent, fake], &[]).await;
    let started = Instant::now();
    let answer = ask_udp(server, "example.org", RecordType::A).await;
    let took = started.elapsed();
    assert!(took >= FORWARD_TIMEOUT, "{took:?}");
    assert!(took < FORWARD_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(a_records(&answer), vec![FAR]);
}

#[tokio::test]
async fn upstream_that_does_not_answer_gives_servfail() {
    let (silent, _task) = upstream(ip(9), true).await;
    let (_dns, server) = serving(10, vec![silent], &[("web", &[WEB])]).await;
    let started = Instant::now();
    let answer = ask_udp(server, "example.org", RecordType::A).await;
    let took = started.elapsed();
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.answers.is_empty());
    assert!(took < FORWARD_TIMEOUT + Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn no_upstream_gives_servfail_at_once() {
    let (_dns, server) = serving(11, vec![], &[("web", &[WEB])]).await;
    let started = Instant::now();
    let answer = ask_udp(server, "example.org", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tcp_query_is_answered() {
    let (_dns, server) = serving(12, vec![], &[("web", &[WEB]), ("db", &[DB1, DB2])]).await;
    let mut client = TcpClient::connect(server).await;
    let answer = client.ask("web", RecordType::A).await;
    assert!(answer.metadata.authoritative);
    assert_eq!(a_records(&answer), vec![WEB]);
    assert_eq!(
        a_records(&client.ask("DB", RecordType::A).await),
        vec![DB1, DB2]
    );
    let empty = client.ask("db", RecordType::AAAA).await;
    assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
    assert!(empty.answers.is_empty());
}

#[tokio::test]
async fn tcp_query_for_unknown_name_is_forwarded_over_tcp() {
    let (fake, _task) = tcp_upstream(ip(20)).await;
    let (_dns, server) = serving(21, vec![fake], &[("web", &[WEB])]).await;
    let answer = TcpClient::connect(server)
        .await
        .ask("example.org", RecordType::A)
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&answer), vec![FAR]);
}

#[tokio::test]
async fn binds_an_address_no_interface_has_yet() {
    // A documentation address: bound (IP_FREEBIND), never sent to.
    let listen = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 53), free_port(&[ip(22)])));
    let (udp, tcp) = bind(listen).unwrap();
    assert_eq!(udp.local_addr().unwrap(), listen);
    assert_eq!(tcp.local_addr().unwrap(), listen);
}

#[tokio::test]
async fn apply_swaps_names_without_rebinding() {
    let (mut dns, server) = serving(13, vec![], &[("web", &[WEB])]).await;
    // A TCP connection survives only if the server is not restarted.
    let mut client = TcpClient::connect(server).await;
    assert_eq!(
        a_records(&client.ask("web", RecordType::A).await),
        vec![WEB]
    );

    let failed = dns
        .apply(scopes(&[("s", scope(ip(13), &[("db", &[DB1])]))]))
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(dns.served(), BTreeMap::from([("s".to_string(), server)]));

    assert_eq!(a_records(&client.ask("db", RecordType::A).await), vec![DB1]);
    assert_eq!(
        a_records(&ask_udp(server, "db", RecordType::A).await),
        vec![DB1]
    );
    let old = ask_udp(server, "web", RecordType::A).await;
    assert_eq!(old.metadata.response_code, ResponseCode::ServFail);
    assert!(old.answers.is_empty());
}

#[tokio::test]
async fn apply_removing_a_scope_frees_its_address() {
    let (mut dns, server) = serving(14, vec![], &[("web", &[WEB])]).await;
    // While served, nobody else gets the address.
    assert!(std::net::UdpSocket::bind(server).is_err());
    assert!(std::net::TcpListener::bind(server).is_err());

    let failed = dns.apply(BTreeMap::new()).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert!(dns.served().is_empty());
    let udp = std::net::UdpSocket::bind(server).expect("UDP address still taken");
    let tcp = std::net::TcpListener::bind(server).expect("TCP address still taken");
    drop((udp, tcp));

    // And a later apply binds it again at once.
    let failed = dns
        .apply(scopes(&[("s", scope(ip(14), &[("web", &[WEB])]))]))
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        a_records(&ask_udp(server, "web", RecordType::A).await),
        vec![WEB]
    );
}

#[tokio::test]
async fn bind_failure_is_reported_per_scope() {
    let port = free_port(&[ip(15), ip(16)]);
    let blocked = SocketAddr::from((ip(15), port));
    let squatter = std::net::UdpSocket::bind(blocked).unwrap();
    let mut dns = Dns::with_port(vec![], port);
    let want = scopes(&[
        ("blocked", scope(ip(15), &[("web", &[WEB])])),
        ("ok", scope(ip(16), &[("web", &[DB1])])),
    ]);

    let failed = dns.apply(want.clone()).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (failed_scope, error) = &failed[0];
    assert_eq!(failed_scope, "blocked");
    assert!(
        matches!(error, DnsError::Bind { listen, .. } if *listen == blocked),
        "{error:?}"
    );
    assert!(error.to_string().contains(&blocked.to_string()), "{error}");
    let ok = SocketAddr::from((ip(16), port));
    assert_eq!(dns.served(), BTreeMap::from([("ok".to_string(), ok)]));
    assert_eq!(
        a_records(&ask_udp(ok, "web", RecordType::A).await),
        vec![DB1]
    );

    // Once the address is free, the next apply starts the failed scope.
    drop(squatter);
    let failed = dns.apply(want).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(dns.served().len(), 2);
    assert_eq!(
        a_records(&ask_udp(blocked, "web", RecordType::A).await),
        vec![WEB]
    );
}

#[tokio::test]
async fn two_scopes_on_one_address_are_refused() {
    let port = free_port(&[ip(17)]);
    let mut dns = Dns::with_port(vec![], port);
    let failed = dns
        .apply(scopes(&[
            ("a", scope(ip(17), &[("web", &[WEB])])),
            ("b", scope(ip(17), &[("web", &[DB1])])),
        ]))
        .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "b");
    assert!(
        matches!(&failed[0].1, DnsError::Taken { scope, .. } if scope == "a"),
        "{:?}",
        failed[0].1
    );
    let listen = SocketAddr::from((ip(17), port));
    assert_eq!(dns.served(), BTreeMap::from([("a".to_string(), listen)]));
    assert_eq!(
        a_records(&ask_udp(listen, "web", RecordType::A).await),
        vec![WEB]
    );
}

#[tokio::test]
async fn moving_a_scope_to_another_address_rebinds_it() {
    let port = free_port(&[ip(18), ip(19)]);
    let mut dns = Dns::with_port(vec![], port);
    let failed = dns
        .apply(scopes(&[("s", scope(ip(18), &[("web", &[WEB])]))]))
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    let failed = dns
        .apply(scopes(&[("s", scope(ip(19), &[("web", &[WEB])]))]))
        .await;
    assert!(failed.is_empty(), "{failed:?}");
    let moved = SocketAddr::from((ip(19), port));
    assert_eq!(dns.served(), BTreeMap::from([("s".to_string(), moved)]));
    assert_eq!(
        a_records(&ask_udp(moved, "web", RecordType::A).await),
        vec![WEB]
    );
    assert!(std::net::UdpSocket::bind((ip(18), port)).is_ok());
}

#[test]
fn resolv_conf_upstreams() {
    let text = "\
# Generated by NetworkManager
search example.com
nameserver 10.0.0.53
nameserver\t2001:db8::53   # trailing comment
; nameserver 10.9.9.9
#nameserver 10.8.8.8
nameserver 10.0.0.53
nameserver fe80::1%2
nameserver fe80::2%eth0
nameserver not-an-address
nameserver
options ndots:2 nameserver 10.7.7.7
  nameserver 192.0.2.1
nameservers 10.6.6.6
";
    let want: Vec<SocketAddr> = vec![
        "10.0.0.53:53".parse().unwrap(),
        "[2001:db8::53]:53".parse().unwrap(),
        SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2).into(),
        "192.0.2.1:53".parse().unwrap(),
    ];
    assert_eq!(upstream_from_resolv_conf(text), want);
    assert!(upstream_from_resolv_conf("").is_empty());
    assert!(upstream_from_resolv_conf("search lan\n").is_empty());
}

#[test]
fn names_are_normalised() {
    let names = Names::from([
        ("Web.".to_string(), vec![WEB]),
        ("web".to_string(), vec![WEB, DB1]),
    ]);
    assert_eq!(
        normalise(names),
        Names::from([("web".to_string(), vec![WEB, DB1])])
    );
    assert_eq!(
        lookup_key(&Name::from_ascii("WeB.Scope.").unwrap()),
        "web.scope"
    );
}
