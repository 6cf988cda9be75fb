//! Delay and loss of a network namespace's outgoing packets without `tc netem`: an NFQUEUE
//! listener in the host test process holds each packet for `delay ± jitter` (uniform) and
//! drops a fraction `loss` of them, as `netem delay D J loss L` would.
//!
//! Some kernels (e.g. microVM kernels) have no `sch_netem`, but have netfilter queues. The
//! caller routes packets to the queue with an iptables rule in the same namespace
//! (`-A OUTPUT -o eth0 -j NFQUEUE --queue-num N --queue-bypass`: packets pass untouched
//! while no listener is bound); [`Delayer::start`] binds the queue from a thread that
//! entered the namespace (`setns`), and [`Delayer::stop`] releases what it holds and
//! unbinds. Packets are held by id and released in due order, so jitter reorders them,
//! as netem's does. The netlink messages are built by hand (`linux/netfilter/nfnetlink_queue.h`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};

use crate::SplitMix64;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// What a [`Delayer`] did.
#[derive(Debug, Clone, Default)]
pub struct DelayStats {
    /// Packets delayed and then let through.
    pub delayed: u64,
    /// Packets dropped.
    pub dropped: u64,
}

/// A running NFQUEUE delayer; see the module doc.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<DelayStats, String>>>,
}

impl Delayer {
    /// Binds queue `queue` in the network namespace of process `pid` and starts delaying
    /// what it receives by `delay ± jitter`, dropping a fraction `loss`. Returns once the
    /// queue is bound.
    pub fn start(
        pid: u32,
        queue: u16,
        delay: Duration,
        jitter: Duration,
        loss: f64,
        seed: u64,
    ) -> Result<Delayer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let sock = match bind(pid, queue) {
                    Ok(sock) => {
                        let _ = ready_tx.send(Ok(()));
                        sock
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let stats = serve(&sock, queue, delay, jitter, loss, seed, &stop);
                let _ = config(&sock, queue, NFQNL_CFG_CMD_UNBIND, None);
                stats
            })
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Delayer {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the delayer thread died".into()),
        }
    }

    /// Lets every held packet through, unbinds the queue, and returns the counts.
    pub fn stop(mut self) -> Result<DelayStats, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .expect("running")
            .join()
            .map_err(|_| "the delayer thread panicked".to_string())?
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Enters `pid`'s network namespace (this thread only), opens a netfilter netlink socket
/// there (bound to a port id by the kernel on first send) and binds `queue` with
/// metadata-only copies.
fn bind(pid: u32, queue: u16) -> Result<Socket, String> {
    let ns =
        File::open(format!("/proc/{pid}/ns/net")).map_err(|e| format!("netns of {pid}: {e}"))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::from(libc::SOCK_RAW),
        Some(Protocol::from(libc::NETLINK_NETFILTER)),
    )
    .map_err(|e| format!("netlink socket: {e}"))?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    config(&sock, queue, NFQNL_CFG_CMD_BIND, None)?;
    // Copy mode: metadata only (copy range 0).
    let mut params = Vec::new();
    params.extend_from_slice(&0u32.to_be_bytes());
    params.push(NFQNL_COPY_META);
    config(&sock, queue, 0, Some(&params))?;
    Ok(sock)
}

/// A netlink message of the queue subsystem: header, nfgenmsg (family unspec, version 0,
/// res_id = queue), then attributes.
fn message(msg: u16, flags: u16, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = vec![0u8, 0u8];
    body.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        body.extend_from_slice(&(len as u16).to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(payload);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&body);
    m
}

fn send(sock: &Socket, m: &[u8]) -> Result<(), String> {
    sock.send(m)
        .map(drop)
        .map_err(|e| format!("netlink send: {e}"))
}

/// Sends a config message (a command, or parameters when `params` is given) and waits for
/// its acknowledgement.
fn config(sock: &Socket, queue: u16, cmd: u8, params: Option<&[u8]>) -> Result<(), String> {
    let cmd_payload = [cmd, 0, 0, 0];
    let attrs: Vec<(u16, &[u8])> = match params {
        Some(p) => vec![(NFQA_CFG_PARAMS, p)],
        None => vec![(NFQA_CFG_CMD, &cmd_payload)],
    };
    send(sock, &message(NFQNL_MSG_CONFIG, NLM_F_ACK, queue, &attrs))?;
    let mut buf = vec![0u8; 8192];
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("netlink timeout: {e}"))?;
    loop {
        let n = (&*sock)
            .read(&mut buf)
            .map_err(|e| format!("netlink recv (config ack): {e}"))?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            if kind == NLMSG_ERROR && at + 20 <= n {
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                return if code == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "nfqueue config (cmd {cmd}): {}",
                        std::io::Error::from_raw_os_error(-code)
                    ))
                };
            }
            if len < 16 {
                break;
            }
            at += (len + 3) & !3;
        }
    }
}

fn verdict(sock: &Socket, queue: u16, id: u32, v: u32) -> Result<(), String> {
    let mut hdr = Vec::with_capacity(8);
    hdr.extend_from_slice(&v.to_be_bytes());
    hdr.extend_from_slice(&id.to_be_bytes());
    send(
        sock,
        &message(NFQNL_MSG_VERDICT, 0, queue, &[(NFQA_VERDICT_HDR, &hdr)]),
    )
}

/// The packet ids in one received buffer.
fn packet_ids(buf: &[u8], out: &mut Vec<u32>) {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < 16 || at + len > buf.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // Attributes after the header and the 4-byte nfgenmsg.
            let mut a = at + 20;
            while a + 4 <= at + len {
                let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                let akind = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap()) & 0x3fff;
                if alen < 4 {
                    break;
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    out.push(u32::from_be_bytes(buf[a + 4..a + 8].try_into().unwrap()));
                }
                a += (alen + 3) & !3;
            }
        }
        at += (len + 3) & !3;
    }
}

fn serve(
    sock: &Socket,
    queue: u16,
    delay: Duration,
    jitter: Duration,
    loss: f64,
    seed: u64,
    stop: &AtomicBool,
) -> Result<DelayStats, String> {
    let mut rng = SplitMix64::new(seed);
    let mut held: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut stats = DelayStats::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut ids = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let now = Instant::now();
        while let Some(Reverse((due, id))) = held.peek().copied() {
            if due > now && !stopping {
                break;
            }
            held.pop();
            verdict(sock, queue, id, NF_ACCEPT)?;
            stats.delayed += 1;
        }
        if stopping {
            return Ok(stats);
        }
        let wait = held
            .peek()
            .map_or(Duration::from_millis(20), |Reverse((due, _))| {
                due.saturating_duration_since(now)
            })
            .min(Duration::from_millis(20));
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| format!("netlink timeout: {e}"))?;
        let n = match (&*sock).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Overrun: the kernel dropped queue messages; those packets are lost (as a
                // full netem queue would drop them).
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return Err(format!("netlink recv: {e}")),
            },
        };
        ids.clear();
        packet_ids(&buf[..n], &mut ids);
        for &id in &ids {
            let r = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if r < loss {
                verdict(sock, queue, id, NF_DROP)?;
                stats.dropped += 1;
                continue;
            }
            let spread = jitter.as_nanos() as u64 * 2;
            let offset = if spread == 0 {
                0
            } else {
                rng.next_u64() % (spread + 1)
            };
            let d = (delay + Duration::from_nanos(offset)).saturating_sub(jitter);
            held.push(Reverse((Instant::now() + d, id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_are_read_from_queued_packet_messages() {
        // Two packet messages in one buffer, as the kernel batches them, then a verdict
        // message (ignored).
        let mut buf = Vec::new();
        for id in [7u32, 0x0102_0304] {
            let mut hdr = id.to_be_bytes().to_vec();
            hdr.extend_from_slice(&[0x08, 0x00, 3]); // hw protocol, hook
            let mut m = message(NFQNL_MSG_PACKET, 0, 1, &[(NFQA_PACKET_HDR, &hdr)]);
            // The kernel's messages carry no NLM_F_REQUEST; the parser does not care.
            m[6] = 0;
            buf.extend_from_slice(&m);
        }
        buf.extend_from_slice(&message(
            NFQNL_MSG_VERDICT,
            0,
            1,
            &[(NFQA_VERDICT_HDR, &[0; 8])],
        ));
        let mut ids = Vec::new();
        packet_ids(&buf, &mut ids);
        assert_eq!(ids, vec![7, 0x0102_0304]);
    }
}
