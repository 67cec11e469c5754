//! BGP mode facing a router that misbehaves: a fake router (this test, speaking BGP with
//! `herald-bgp`'s codec) beside a real FRR. What the fake sends gets the RFC's answer, and
//! the node keeps serving everything else: its session with FRR and the routes there, and
//! its L2 announcements.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use herald_bgp::wire::{self, Capability, Family, Message, Notification, Open, error};
use herald_lab::netns::{in_ns, resolve};
use herald_lab::objects::{apply, ips, wait_for};
use herald_lab::process_cluster::{KEY, accept_locally, endpoints_on, setup, speaker};
use herald_lab::router::{Frr, Peering, Router, on_lan};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;

const WITHIN: Duration = Duration::from_secs(10);

/// The fake router's side of one connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// The next message from the speaker, `None` when it closed the connection (or sent
    /// nothing for 30 s).
    fn next(&mut self) -> Option<Message> {
        loop {
            if let Ok(Some(len)) = wire::message_length(&self.buf)
                && self.buf.len() >= len
            {
                let rest = self.buf.split_off(len);
                let bytes = std::mem::replace(&mut self.buf, rest);
                return Some(wire::decode(&bytes, true).expect("the speaker sends valid BGP"));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Keeps the session alive (a KEEPALIVE every 500 ms) for `long`, reading what the
    /// speaker sends; panics if it sends a NOTIFICATION or closes meanwhile.
    fn stay_up(&mut self, long: Duration) {
        let started = Instant::now();
        while started.elapsed() < long {
            self.send(&wire::encode(&Message::Keepalive));
            self.stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the speaker closed the session"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading from the speaker: {e}"),
            }
            while let Ok(Some(len)) = wire::message_length(&self.buf)
                && self.buf.len() >= len
            {
                let rest = self.buf.split_off(len);
                let bytes = std::mem::replace(&mut self.buf, rest);
                let message = wire::decode(&bytes, true).expect("valid BGP");
                assert!(
                    !matches!(message, Message::Notification(_)),
                    "the session must stay up: {message:?}"
                );
            }
        }
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
    }

    /// Reads until the speaker sends a NOTIFICATION or closes; the NOTIFICATION, if any.
    fn notification(&mut self) -> Option<Notification> {
        loop {
            match self.next()? {
                Message::Notification(n) => return Some(n),
                _ => continue,
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("sending to the speaker");
    }
}

/// Accepts the speaker's next connection and brings the session up: its OPEN read, ours
/// (AS 64501, `hold` seconds) and a KEEPALIVE sent, its KEEPALIVE read.
fn accept(listener: &TcpListener, hold: u16) -> Conn {
    // Not forever: a speaker that never comes back fails the test instead of hanging it.
    listener.set_nonblocking(true).expect("non-blocking");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the speaker did not connect within 30 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accepting: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    assert!(matches!(conn.next(), Some(Message::Open(_))));
    let open = Open {
        asn: 64501,
        hold_time: hold,
        router_id: Ipv4Addr::new(192, 0, 2, 2),
        capabilities: vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::FourOctetAs(64501),
        ],
    };
    conn.send(&wire::encode(&Message::Open(open)));
    conn.send(&wire::encode(&Message::Keepalive));
    assert!(matches!(conn.next(), Some(Message::Keepalive)));
    conn
}

/// An UPDATE of 10.9.0.0/24 whose path attributes are `attributes` (raw) and whose
/// total-path-attribute length field says `said` (the true length when `None`).
fn update(attributes: &[u8], said: Option<u16>) -> Vec<u8> {
    let mut body = vec![0, 0];
    let len = said.unwrap_or(attributes.len() as u16);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(attributes);
    body.extend_from_slice(&[24, 10, 9, 0]);
    let mut message = vec![0xff; 16];
    message.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    message.push(2);
    message.extend_from_slice(&body);
    message
}

/// ORIGIN, AS_PATH (one AS_SEQUENCE of 64501) and NEXT_HOP 192.0.2.2, with `origin` as the
/// ORIGIN value (0-2 are valid).
fn attributes(origin: u8) -> Vec<u8> {
    let mut a = vec![0x40, 1, 1, origin];
    a.extend_from_slice(&[0x40, 2, 6, 2, 1, 0, 0, 0xfb, 0xf5]);
    a.extend_from_slice(&[0x40, 3, 4, 192, 0, 2, 2]);
    a
}

#[tokio::test]
async fn a_misbehaving_router_gets_the_rfcs_answer_and_every_other_peer_and_l2_keep_serving() {
    let (cp, mut lan, _controller) = setup(1).await;
    let client = cp.client();
    let (router, _) = on_lan(&mut lan, Frr::start, Peering::default()).expect("FRR");
    let evil = lan.add_host("evil", 2).expect("fake router host");
    // The fake router listens in its namespace.
    let listener = in_ns(&evil.ns, || TcpListener::bind("192.0.2.2:179"))
        .expect("in the namespace")
        .expect("listening");
    apply(&client, "apiVersion: herald.dev/v1alpha1\nkind: IPPool\nmetadata: {name: routed}\nspec: {addresses: [198.51.100.0/24], autoAssign: false}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {myASN: 64512, peerASN: 64500, peerAddress: 192.0.2.1}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPPeer\nmetadata: {name: evil}\nspec: {myASN: 64512, peerASN: 64501, peerAddress: 192.0.2.2, holdTime: 3s, keepaliveTime: 1s}\n---\napiVersion: herald.dev/v1alpha1\nkind: BGPAdvertisement\nmetadata: {name: routed}\nspec: {ipPools: [routed]}").await;
    let _speaker = speaker(&cp, &lan, "n1", KEY, "speaker-n1");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    // One Service over BGP, one over L2 (the LAN pool of `setup`).
    apply(&client, "apiVersion: v1\nkind: Service\nmetadata: {name: routed, namespace: default, annotations: {herald.dev/pool: routed}}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: lan, namespace: default}\nspec: {type: LoadBalancer, ports: [{port: 8080}]}").await;
    let routed = wait_for(&svcs, "routed", "an IP", |s| ips(s).first().cloned()).await;
    let lan_ip: IpAddr = wait_for(&svcs, "lan", "an IP", |s| ips(s).first().cloned())
        .await
        .parse()
        .expect("ip");
    accept_locally(&lan, &[lan_ip]);
    endpoints_on(&client, "routed", &[("n1", true)]).await;
    let n1 = lan.nodes[0].v4.to_string();
    let routed = format!("{routed}/32");
    // Everything else is served, checked after each misdeed.
    let served = || {
        let deadline = Instant::now() + WITHIN;
        loop {
            let bgp = router.established().contains(&n1)
                && router.kernel_next_hops(&routed).contains(&n1);
            let l2 = resolve(&lan.client, lan_ip, Duration::from_millis(200))
                .is_ok_and(|answers| answers.len() == 1);
            if bgp && l2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "FRR's session ({bgp}) or L2 ({l2}) not served"
            );
        }
    };
    served();

    // 1. An attribute that is wrong but leaves the UPDATE parseable (ORIGIN 7): RFC 7606's
    // treat-as-withdraw; the session stays up (the speaker goes on sending KEEPALIVEs).
    let mut conn = accept(&listener, 3);
    conn.send(&update(&attributes(7), None));
    conn.send(&update(&attributes(0), None));
    conn.stay_up(Duration::from_secs(4));
    served();

    // 2. An UPDATE whose attribute length runs past the message: its NLRI cannot be found,
    // so the session is reset with an UPDATE Message Error (RFC 7606 §4, RFC 4271 §6.3).
    conn.send(&update(&attributes(0), Some(200)));
    let said = conn.notification().expect("a NOTIFICATION");
    assert_eq!(said.code, error::UPDATE, "{said:?}");
    assert!(
        conn.next().is_none(),
        "the speaker closes after its NOTIFICATION"
    );
    served();

    // 3. An unexpected NOTIFICATION from the router: the speaker closes, and connects again.
    let mut conn = accept(&listener, 3);
    conn.send(&wire::encode(&Message::Notification(Notification::new(
        error::CEASE,
        error::CEASE_ADMINISTRATIVE_RESET,
        &[],
    ))));
    assert!(
        conn.notification().is_none(),
        "no answer to a NOTIFICATION, the connection closed"
    );
    served();

    // 4. A router that falls silent: after the hold time (3 s) the speaker says Hold Timer
    // Expired and closes.
    let mut conn = accept(&listener, 3);
    let silent = Instant::now();
    let said = conn.notification().expect("a NOTIFICATION");
    assert_eq!(said.code, error::HOLD_TIMER_EXPIRED, "{said:?}");
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(6),
        "the hold time is honoured: {waited:?}"
    );
    served();
    // The speaker's record of that session says why it went down.
    let record = herald_api::bgp_session::name("n1", "evil");
    let sessions: Api<herald_api::BGPSession> = Api::all(client.clone());
    let deadline = Instant::now() + WITHIN;
    loop {
        let error = sessions
            .get(&record)
            .await
            .ok()
            .and_then(|s| s.spec.last_error);
        if error
            .as_deref()
            .is_some_and(|e| e.contains("hold timer expired"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "{record}: {error:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
