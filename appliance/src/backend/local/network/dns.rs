//! The scopes' name server: one server per scope, on the address the scope's
//! containers are told to use (its gateway), over UDP and TCP. It answers the
//! A records of the scope's containers and aliases itself and forwards every
//! other name to the host's upstream name servers, relaying their answer.
//!
//! Owns its listening sockets and the tokio tasks that serve them. Must not
//! touch bridges, addresses or firewall rules (the rest of `network`), and
//! does not decide which names a scope has: the caller hands them over.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

/// The port the scope servers listen on.
pub const PORT: u16 = 53;
/// Time to live of the answers for a scope's names: short, since names come
/// and go with containers.
pub const TTL: u32 = 5;
/// How long one upstream server has to answer a forwarded query before the
/// next one is asked.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// A TCP client that sends no query for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;
/// Backlog of a TCP listening socket.
const TCP_BACKLOG: i32 = 128;
/// How long stopping a server waits for its tasks before aborting them.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The names a scope's server answers itself: lower-case names (container
/// names and aliases), without a trailing dot, and their addresses.
pub type Names = BTreeMap<String, Vec<Ipv4Addr>>;

/// What one scope's server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDns {
    /// The address to listen on (UDP and TCP, port `PORT` unless the `Dns`
    /// was made `with_port`).
    pub listen: Ipv4Addr,
    pub names: Names,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("Binding the name server to {listen}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("The name server on {listen} already serves scope {scope}")]
    Taken { listen: SocketAddr, scope: String },
}

/// The set of running scope servers. Dropping it aborts their tasks.
pub struct Dns {
    upstream: Arc<[SocketAddr]>,
    port: u16,
    running: BTreeMap<String, Running>,
}

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("upstream", &self.upstream)
            .field("served", &self.served())
            .finish()
    }
}

impl Dns {
    /// Serves on `PORT` and forwards unknown names to `upstream`, in order.
    /// Nothing is served until `apply`.
    pub fn new(upstream: Vec<SocketAddr>) -> Self {
        Self::with_port(upstream, PORT)
    }

    /// As `new`, but serves on `port` instead of `PORT`.
    pub fn with_port(upstream: Vec<SocketAddr>, port: u16) -> Self {
        Self {
            upstream: upstream.into(),
            port,
            running: BTreeMap::new(),
        }
    }

    /// Makes the served set exactly `scopes` (keyed by scope name): starts a
    /// server (UDP and TCP) on each new listen address, stops the ones no
    /// longer wanted, and swaps the names of running ones in place (no
    /// rebind). Returns per-scope bind failures; others keep going, and a
    /// failed scope is tried again by the next `apply`.
    pub async fn apply(&mut self, scopes: BTreeMap<String, ScopeDns>) -> Vec<(String, DnsError)> {
        let port = self.port;
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(scope, running)| {
                scopes
                    .get(*scope)
                    .is_none_or(|want| SocketAddr::from((want.listen, port)) != running.listen)
            })
            .map(|(scope, _)| scope.clone())
            .collect();
        for scope in stale {
            if let Some(running) = self.running.remove(&scope) {
                running.stop(&scope).await;
            }
        }

        let mut failed = Vec::new();
        for (scope, want) in scopes {
            let listen = SocketAddr::from((want.listen, port));
            let names = normalise(want.names);
            if let Some(running) = self.running.get(&scope) {
                debug!(%scope, %listen, names = names.len(), "Name server: names updated");
                running.set_names(names);
                continue;
            }
            if let Some((other, _)) = self.running.iter().find(|(_, r)| r.listen == listen) {
                let error = DnsError::Taken {
                    listen,
                    scope: other.clone(),
                };
                warn!(%scope, error = %error, "Name server not started");
                failed.push((scope, error));
                continue;
            }
            match Running::start(listen, names, self.upstream.clone()) {
                Ok(running) => {
                    info!(%scope, %listen, "Name server started");
                    self.running.insert(scope, running);
                }
                Err(error) => {
                    let cause = std::error::Error::source(&error).map(ToString::to_string);
                    warn!(%scope, error = %error, ?cause, "Name server not started");
                    failed.push((scope, error));
                }
            }
        }
        failed
    }

    /// The running servers: scope name to the address served.
    pub fn served(&self) -> BTreeMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(scope, running)| (scope.clone(), running.listen))
            .collect()
    }

    /// Stops every server (dropping the `Dns` aborts them too).
    pub async fn shutdown(&mut self) {
        for (scope, running) in std::mem::take(&mut self.running) {
            running.stop(&scope).await;
        }
    }
}

/// Lower-cases the names and drops trailing dots, merging names that then
/// coincide.
fn normalise(names: Names) -> Names {
    let mut out = Names::new();
    for (name, addrs) in names {
        let entry = out
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default();
        for addr in addrs {
            if !entry.contains(&addr) {
                entry.push(addr);
            }
        }
    }
    out
}

/// Upstream name servers from resolv.conf text ("nameserver A" lines, port
/// 53), in order, without duplicates. Skipping addresses the scope servers
/// themselves use is the caller's job.
pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let Some(server) = parse_nameserver(word) else {
            debug!(nameserver = word, "resolv.conf: name server skipped");
            continue;
        };
        if !out.contains(&server) {
            out.push(server);
        }
    }
    out
}

/// An address, or an IPv6 address with a numeric zone ("fe80::1%2").
fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, PORT));
    }
    let (ip, zone) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let zone: u32 = zone.parse().ok()?;
    Some(SocketAddrV6::new(ip, PORT, 0, zone).into())
}

/// One scope's server: its sockets registered with a hickory `Server`, whose
/// tasks (one for UDP, one for TCP) hold them.
struct Running {
    listen: SocketAddr,
    names: Arc<RwLock<Arc<Names>>>,
    server: Server<Handler>,
}

impl Running {
    fn start(
        listen: SocketAddr,
        names: Names,
        upstream: Arc<[SocketAddr]>,
    ) -> Result<Self, DnsError> {
        let (udp, tcp) = bind(listen).map_err(|source| DnsError::Bind { listen, source })?;
        let names = Arc::new(RwLock::new(Arc::new(names)));
        let mut server = Server::new(Handler {
            names: names.clone(),
            upstream,
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        Ok(Self {
            listen,
            names,
            server,
        })
    }

    fn set_names(&self, names: Names) {
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(names);
    }

    /// Stops the server's tasks and waits until they have let go of the
    /// sockets, so the address can be bound again at once.
    async fn stop(mut self, scope: &str) {
        let listen = self.listen;
        match tokio::time::timeout(STOP_TIMEOUT, self.server.shutdown_gracefully()).await {
            Ok(Ok(())) => info!(%scope, %listen, "Name server stopped"),
            Ok(Err(error)) => warn!(%scope, %listen, %error, "Name server stopped after failing"),
            Err(_) => warn!(%scope, %listen, "Name server did not stop in time; aborted"),
        }
        // Dropping the server aborts whatever is left of its tasks.
    }
}

/// A listening UDP socket and TCP listener on `listen`, with SO_REUSEADDR
/// and IP_FREEBIND (so the gateway address can be bound before the bridge
/// that carries it is up).
fn bind(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let tcp = socket(listen, Type::STREAM)?;
    tcp.listen(TCP_BACKLOG)?;
    let udp = socket(listen, Type::DGRAM)?;
    Ok((
        UdpSocket::from_std(udp.into())?,
        TcpListener::from_std(tcp.into())?,
    ))
}

fn socket(listen: SocketAddr, ty: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(listen), ty, None)?;
    socket.set_reuse_address(true)?;
    match listen {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
    }
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    Ok(socket)
}

/// Answers one scope's queries.
struct Handler {
    names: Arc<RwLock<Arc<Names>>>,
    upstream: Arc<[SocketAddr]>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|edns| {
            let mut out = Edns::new();
            out.set_max_payload(edns.max_payload().max(512));
            out
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());

        let query = match request.request_info() {
            Ok(info) => info.query,
            Err(_) => {
                let message = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return send(request, &mut response, message).await;
            }
        };
        if request.metadata.op_code != OpCode::Query {
            let message = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return send(request, &mut response, message).await;
        }

        let name = lookup_key(&Name::from(query.name()));
        let known = self
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name)
            .cloned();
        if let Some(addrs) = known {
            let wants_a = query.query_class() == DNSClass::IN
                && matches!(query.query_type(), RecordType::A | RecordType::ANY);
            let records: Vec<Record> = if wants_a {
                let owner = query.original().name().clone();
                addrs
                    .iter()
                    .map(|addr| Record::from_rdata(owner.clone(), TTL, RData::A(A(*addr))))
                    .collect()
            } else {
                Vec::new()
            };
            debug!(%name, query_type = %query.query_type(), answers = records.len(), "Name server: answered");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.authoritative = true;
            metadata.recursion_available = !self.upstream.is_empty();
            let message = builder.build(
                metadata,
                records.iter(),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
            );
            return send(request, &mut response, message).await;
        }

        let Some(answer) = self.forward(request, &name).await else {
            let mut message = builder.error_msg(&request.metadata, ResponseCode::ServFail);
            message.metadata_mut().recursion_available = !self.upstream.is_empty();
            return send(request, &mut response, message).await;
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.metadata.response_code;
        metadata.authoritative = answer.metadata.authoritative;
        metadata.truncation = answer.metadata.truncation;
        metadata.recursion_available = answer.metadata.recursion_available;
        metadata.authentic_data = answer.metadata.authentic_data;
        let message = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        send(request, &mut response, message).await
    }
}

impl Handler {
    /// Asks the upstream servers in order, over the protocol the query came
    /// in by; the first usable answer wins.
    async fn forward(&self, request: &Request, name: &str) -> Option<Message> {
        if self.upstream.is_empty() {
            debug!(%name, "Name server: unknown name and no upstream");
            return None;
        }
        let mut query = match Message::from_vec(request.as_slice()) {
            Ok(query) => query,
            Err(error) => {
                debug!(%name, %error, "Name server: query not forwarded");
                return None;
            }
        };
        query.metadata.id = random_id();
        let bytes = match query.to_vec() {
            Ok(bytes) => bytes,
            Err(error) => {
                debug!(%name, %error, "Name server: query not forwarded");
                return None;
            }
        };
        let protocol = request.protocol();
        for &server in self.upstream.iter() {
            let exchange = exchange(server, protocol, &bytes, &query);
            match tokio::time::timeout(FORWARD_TIMEOUT, exchange).await {
                Ok(Ok(answer)) => match answer.metadata.response_code {
                    ResponseCode::ServFail | ResponseCode::Refused => {
                        debug!(%name, %server, code = %answer.metadata.response_code, "Name server: upstream failed");
                    }
                    _ => {
                        debug!(%name, %server, code = %answer.metadata.response_code, "Name server: forwarded");
                        return Some(answer);
                    }
                },
                Ok(Err(error)) => debug!(%name, %server, %error, "Name server: upstream failed"),
                Err(_) => debug!(%name, %server, "Name server: upstream did not answer in time"),
            }
        }
        warn!(%name, "Name server: no upstream answered");
        None
    }
}

/// Sends `query` (the encoding of `sent`) to `server` and returns its answer
/// to it; stray datagrams are ignored.
async fn exchange(
    server: SocketAddr,
    protocol: Protocol,
    query: &[u8],
    sent: &Message,
) -> io::Result<Message> {
    let matches = |answer: &Message| {
        answer.metadata.id == sent.metadata.id
            && answer.metadata.message_type == MessageType::Response
            && answer.queries == sent.queries
    };
    if protocol == Protocol::Tcp {
        let mut stream = TcpStream::connect(server).await?;
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(query).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await?;
        let answer = Message::from_vec(&buf)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        return if matches(&answer) {
            Ok(answer)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer does not match the query",
            ))
        };
    }
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let len = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..len]) {
            Ok(answer) if matches(&answer) => return Ok(answer),
            _ => debug!(%server, "Name server: stray datagram from upstream ignored"),
        }
    }
}

/// The key a query name is looked up by: lower case, no trailing dot.
fn lookup_key(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u16::from_ne_bytes(bytes),
        // The id is only a guard against stray answers; the socket's
        // random port is the other.
        Err(_) => 0,
    }
}

async fn send<'a, R: ResponseHandler>(
    request: &Request,
    response: &mut R,
    message: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response.send_response(message).await {
        Ok(info) => info,
        Err(error) => {
            warn!(src = %request.src(), %error, "Name server: sending the response");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[cfg(test)]
mod tests;
