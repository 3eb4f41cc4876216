//! Benchmark of a published TCP port: throughput of one connection and
//! sequential connections per second, through `Sandbox::publish_tcp` and
//! over plain loopback as the baseline. `bench/tunnel` runs it and compares
//! it with rootless Podman and pasta.
//!
//! Modes:
//!
//! - `tunnel_bench [--mib N] [--conns N]` enters a user namespace, starts a
//!   sink in a stand-in container, publishes it on 127.0.0.1 and measures
//!   it. For comparison it then measures a sink on 127.0.0.1 in the host
//!   namespace through the same relay (`relay-loopback`) and directly
//!   (`loopback`). Run it as an unprivileged user.
//! - `tunnel_bench --serve ADDR` runs only the sink, for example inside a
//!   Podman container.
//! - `tunnel_bench --client ADDR --label NAME [--mib N] [--conns N]`
//!   measures a sink at ADDR, which must be on loopback.
//!
//! A request is a length (8 bytes, big-endian) and that many bytes. The sink
//! reads them, replies with the byte count in decimal and a newline, and
//! closes. One request/reply pair thus serves both measurements, and the
//! client checks every count. The sink closes first, so TIME_WAIT falls on
//! the server's fixed port: were the client the first to close, thousands of
//! connections per run would leave its ephemeral ports in TIME_WAIT and slow
//! down every later `connect`. Each measured target prints one line:
//! `RESULT <label> throughput_mib_s=<f> conn_per_s=<f> mib=<n> conns=<n>`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use mayfly_netns::{NetNs, NetnsThread, Sandbox, SandboxConfig, TcpForward, TunnelConfig};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{getgid, getuid};

/// Size of each write of the throughput client and each read of the sink.
const CHUNK: usize = 1024 * 1024;

/// Payload of one connection in the connections-per-second measurement.
const SMALL_PAYLOAD: &[u8] = &[b'x'; 64];

/// How long the client waits for one read or write before it gives up, so
/// that a forwarder that stalls fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Port of the sink inside the stand-in container.
const CONTAINER_PORT: u16 = 9000;

/// Warm-up before each measured target, so that page cache, TCP memory
/// and the tunnel's first connection are not in the numbers.
const WARMUP_MIB: u64 = 64;
const WARMUP_CONNS: u32 = 100;

const USAGE: &str = "usage: tunnel_bench [--mib N] [--conns N]
       tunnel_bench --serve ADDR
       tunnel_bench --client ADDR --label NAME [--mib N] [--conns N]";

enum Mode {
    /// Comparison of the tunnel with the same relay on loopback and with
    /// plain loopback, in one process.
    Compare,
    Serve(SocketAddr),
    Client {
        addr: SocketAddr,
        label: String,
    },
}

struct Options {
    mode: Mode,
    /// MiB sent over the throughput connection.
    mib: u64,
    /// Number of sequential connections.
    conns: u32,
}

fn main() -> ExitCode {
    let options = match parse_options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("tunnel_bench: {error:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let result = match &options.mode {
        Mode::Compare => compare(&options),
        Mode::Serve(addr) => serve(*addr),
        Mode::Client { addr, label } => measure_and_print(label, *addr, &options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tunnel_bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(mut args: impl Iterator<Item = String>) -> Result<Options> {
    let mut serve = None;
    let mut client = None;
    let mut label = None;
    let mut mib = 1024;
    let mut conns = 2000;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("option {flag} needs a value"))
        };
        match flag.as_str() {
            "--mib" => mib = value()?.parse().context("invalid --mib")?,
            "--conns" => conns = value()?.parse().context("invalid --conns")?,
            "--serve" => serve = Some(value()?.parse().context("invalid --serve address")?),
            "--client" => client = Some(value()?.parse().context("invalid --client address")?),
            "--label" => label = Some(value()?),
            _ => bail!("unknown argument {flag:?}"),
        }
    }
    ensure!(mib > 0 && conns > 0, "--mib and --conns must be positive");

    let mode = match (serve, client) {
        (None, None) => Mode::Compare,
        (Some(addr), None) => Mode::Serve(addr),
        (None, Some(addr)) => Mode::Client {
            addr,
            label: label.context("--client needs --label")?,
        },
        (Some(_), Some(_)) => bail!("use either --serve or --client, not both"),
    };
    Ok(Options { mode, mib, conns })
}

/// Measures the published port of a stand-in container, then a sink on
/// loopback in the host namespace, first through the same relay and then
/// directly.
fn compare(options: &Options) -> Result<()> {
    // unshare(CLONE_NEWUSER) fails once the process has a second thread.
    enter_user_namespace()?;

    let sandbox = Sandbox::create(SandboxConfig::default())?;
    let container_ns = NetNs::create()?;
    let attachment = sandbox.attach(&container_ns, "sink")?;
    let container_sockets = NetnsThread::spawn(&container_ns)?;
    let target = SocketAddr::from((attachment.address(), CONTAINER_PORT));
    spawn_sink(container_sockets.tcp_listen(target)?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to build the tokio runtime for the tunnel")?;
    let forward = {
        let _entered = runtime.enter();
        sandbox.publish_tcp(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            target,
            &TunnelConfig::default(),
        )?
    };
    measure_and_print("tunnel", forward.local_addr(), options)?;
    drop(forward);

    // The main thread never changed namespace, so this listener is in the
    // namespace the process started in.
    let loopback =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("failed to bind the loopback sink")?;
    let loopback_addr = loopback.local_addr()?;
    spawn_sink(loopback);

    // The same relay between two loopback sockets of the host namespace:
    // the relay's own cost, without the veth pair and the bridge.
    let relay = {
        let _entered = runtime.enter();
        TcpForward::bind(
            sandbox.host_sockets(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            sandbox.host_sockets(),
            loopback_addr,
            &TunnelConfig::default(),
        )?
    };
    measure_and_print("relay-loopback", relay.local_addr(), options)?;
    drop(relay);

    measure_and_print("loopback", loopback_addr, options)
}

/// Enters a new user and mount namespace with a single-ID map (root inside
/// is the calling user outside), as the engine does at start. Must run
/// before any other thread exists.
fn enter_user_namespace() -> Result<()> {
    let uid = getuid();
    let gid = getgid();
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).context(
        "unshare(CLONE_NEWUSER | CLONE_NEWNS) failed; unprivileged user namespaces may be disabled",
    )?;
    fs::write("/proc/self/setgroups", "deny").context("failed to write /proc/self/setgroups")?;
    fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
        .context("failed to write /proc/self/uid_map")?;
    fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
        .context("failed to write /proc/self/gid_map")?;
    Ok(())
}

/// Runs the sink on `addr` until the process is killed.
fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("failed to bind {addr}"))?;
    println!("listening on {}", listener.local_addr()?);
    accept_loop(listener);
    Ok(())
}

fn spawn_sink(listener: TcpListener) {
    std::thread::spawn(move || accept_loop(listener));
}

/// Serves each connection on a thread of its own, so that a client that
/// stops sending cannot stall the others.
fn accept_loop(listener: TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(error) = sink_connection(stream) {
                        eprintln!("tunnel_bench: sink connection failed: {error:#}");
                    }
                });
            }
            Err(error) => eprintln!("tunnel_bench: accept failed: {error}"),
        }
    }
}

fn sink_connection(mut stream: TcpStream) -> Result<()> {
    let mut header = [0u8; 8];
    stream
        .read_exact(&mut header)
        .context("failed to read the request length")?;
    let length = u64::from_be_bytes(header);

    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    while total < length {
        let remaining = (length - total).min(CHUNK as u64) as usize;
        let read = stream.read(&mut buf[..remaining])?;
        if read == 0 {
            break;
        }
        total += read as u64;
    }
    stream.write_all(format!("{total}\n").as_bytes())?;
    Ok(())
}

/// Warms up, measures both numbers against the sink at `addr` and prints
/// the result line.
fn measure_and_print(label: &str, addr: SocketAddr, options: &Options) -> Result<()> {
    // The client never dials a sandbox or remote address from the host
    // namespace. Only the tunnel dials the container.
    ensure!(
        addr.ip().is_loopback(),
        "{addr} is not a loopback address; the client only dials loopback"
    );

    send_bulk(addr, WARMUP_MIB).with_context(|| format!("{label}: warm-up transfer"))?;
    round_trips(addr, WARMUP_CONNS).with_context(|| format!("{label}: warm-up connections"))?;

    let throughput =
        send_bulk(addr, options.mib).with_context(|| format!("{label}: throughput"))?;
    let conn_rate = round_trips(addr, options.conns)
        .with_context(|| format!("{label}: connections per second"))?;
    println!(
        "RESULT {label} throughput_mib_s={throughput:.1} conn_per_s={conn_rate:.1} mib={} conns={}",
        options.mib, options.conns
    );
    Ok(())
}

/// Sends `mib` MiB over one connection and waits for the sink's count.
/// Returns MiB per second, from connect to the count's arrival.
fn send_bulk(addr: SocketAddr, mib: u64) -> Result<f64> {
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut stream = connect(addr)?;
    let length = mib * CHUNK as u64;
    stream.write_all(&length.to_be_bytes())?;
    for _ in 0..mib {
        stream.write_all(&chunk)?;
    }
    expect_count(stream, length)?;
    Ok(mib as f64 / start.elapsed().as_secs_f64())
}

/// Opens `conns` connections one after another, each sending a small
/// payload and reading the count. Returns connections per second.
fn round_trips(addr: SocketAddr, conns: u32) -> Result<f64> {
    let length = SMALL_PAYLOAD.len() as u64;
    let request = [&length.to_be_bytes()[..], SMALL_PAYLOAD].concat();
    let start = Instant::now();
    for i in 0..conns {
        let mut stream = connect(addr).with_context(|| format!("connection {i}"))?;
        stream.write_all(&request)?;
        expect_count(stream, length).with_context(|| format!("connection {i}"))?;
    }
    Ok(f64::from(conns) / start.elapsed().as_secs_f64())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream =
        TcpStream::connect(addr).with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Reads the sink's reply to end of file and checks that it is `expected`.
fn expect_count(mut stream: TcpStream, expected: u64) -> Result<()> {
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| {
            format!("failed to read the sink's reply (timeout {IO_TIMEOUT:?}); the forwarder may have stalled or dropped data")
        })?;
    let count: u64 = reply
        .trim_end()
        .parse()
        .with_context(|| format!("invalid reply {reply:?} from the sink"))?;
    ensure!(
        count == expected,
        "sink received {count} bytes, the client sent {expected}"
    );
    Ok(())
}
