//! Service lists in the API server's protobuf encoding, read as they arrive.
//!
//! Why: a start over 100,000 Services lists them. In JSON that is ~3 KB per Service (half of
//! it `managedFields`) that the API server spends ~6 CPU-seconds encoding and the binary
//! parses; in protobuf it is a third of the bytes and a tenth of the API server's CPU. The
//! list is read from the watch cache in one response (`resourceVersion=0`, as informers do),
//! and decoded Service by Service while it streams in, so no more than one Service's bytes
//! are held at a time, however long the list.
//!
//! Only the fields Herald reads are decoded (field numbers from k8s.io/api's
//! `generated.proto`); the rest is skipped. The bytes come from the API server but are still
//! checked: every length is bounded, and a malformed list is an error, never a panic.

use std::collections::BTreeMap;
use std::io;

use futures::{AsyncBufRead, AsyncBufReadExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use prost::Message;

use herald_api::service::{ServiceObject, wire};

/// The media type to ask for.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What every protobuf body starts with (`k8s` and a zero byte), before a `runtime.Unknown`.
const MAGIC: &[u8; 4] = b"k8s\0";

/// The largest Service accepted (etcd refuses objects over 1.5 MiB by default).
const MAX_OBJECT_BYTES: u64 = 16 << 20;

/// The largest list metadata accepted (a resourceVersion and a continue token).
const MAX_LIST_META_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("reading the list: {0}")]
    Io(#[from] io::Error),
    #[error("not a protobuf-encoded Kubernetes object (no k8s magic bytes)")]
    NoMagic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("a {what} of {len} bytes (at most {max} accepted)")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("decoding a {what}: {source}")]
    Decode {
        what: &'static str,
        source: prost::DecodeError,
    },
    #[error("the list ended without a resourceVersion")]
    NoResourceVersion,
    /// Only part of the list came (a continue token): never taken for all of it, since a
    /// Service missing from the list would leave its IPs looking free.
    #[error("the list came in pages (a continue token), though it asked for every object")]
    Paginated,
}

/// What a list yields, in order: every object, then its end.
#[derive(Debug)]
pub enum ListItem {
    Object(Box<ServiceObject>),
    /// The list is complete; watch from this resourceVersion.
    End {
        resource_version: String,
    },
}

/// Reads a `ServiceList` (inside its `runtime.Unknown` envelope) from a response body.
pub struct ListReader<R> {
    reader: R,
    /// Bytes of the list (the envelope's `raw` field) not read yet; `None` outside it.
    list_left: Option<u64>,
    resource_version: Option<String>,
    paginated: bool,
}

impl<R: AsyncBufRead + Unpin> ListReader<R> {
    /// Checks the magic bytes; the list is then read with `next`.
    pub async fn open(mut reader: R) -> Result<Self, ProtoError> {
        let mut magic = [0u8; 4];
        futures::AsyncReadExt::read_exact(&mut reader, &mut magic)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ProtoError::NoMagic,
                _ => ProtoError::Io(e),
            })?;
        if &magic != MAGIC {
            return Err(ProtoError::NoMagic);
        }
        Ok(Self {
            reader,
            list_left: None,
            resource_version: None,
            paginated: false,
        })
    }

    /// The next Service, or the end of the list.
    pub async fn next(&mut self) -> Result<ListItem, ProtoError> {
        loop {
            match self.list_left {
                Some(0) => self.list_left = None,
                Some(left) => {
                    let mut counted = Counted::new(&mut self.reader, left);
                    let (field, wire_type) = counted.tag().await?;
                    let item = match (field, wire_type) {
                        (1, LEN) => {
                            let meta: ListMeta = counted
                                .message("list metadata", MAX_LIST_META_BYTES)
                                .await?;
                            self.resource_version = meta.resource_version;
                            self.paginated = meta.continue_.is_some_and(|c| !c.is_empty());
                            None
                        }
                        (2, LEN) => {
                            let service: Service =
                                counted.message("Service", MAX_OBJECT_BYTES).await?;
                            Some(Box::new(ServiceObject::from(wire::Service::from(service))))
                        }
                        _ => {
                            counted.skip(wire_type).await?;
                            None
                        }
                    };
                    self.list_left = Some(left - counted.used);
                    if let Some(object) = item {
                        return Ok(ListItem::Object(object));
                    }
                }
                None => {
                    let mut counted = Counted::new(&mut self.reader, u64::MAX);
                    if counted.at_end().await? {
                        if self.paginated {
                            return Err(ProtoError::Paginated);
                        }
                        return match self.resource_version.take() {
                            Some(rv) if !rv.is_empty() => Ok(ListItem::End {
                                resource_version: rv,
                            }),
                            _ => Err(ProtoError::NoResourceVersion),
                        };
                    }
                    match counted.tag().await? {
                        // `raw`: the list itself, read field by field.
                        (2, LEN) => self.list_left = Some(counted.varint().await?),
                        (_, wire_type) => counted.skip(wire_type).await?,
                    }
                }
            }
        }
    }
}

/// Decodes a `Status` sent in protobuf (an error response): its code and message.
pub fn decode_status(body: &[u8]) -> Option<(u16, String)> {
    let raw = body.strip_prefix(MAGIC)?;
    let unknown = Unknown::decode(raw).ok()?;
    let status = Status::decode(unknown.raw?.as_slice()).ok()?;
    let code = u16::try_from(status.code?).ok()?;
    Some((code, status.message.unwrap_or_default()))
}

/// Wire type of length-delimited fields (messages, strings, bytes).
const LEN: u8 = 2;

const OVERRUN: ProtoError = ProtoError::Malformed("a field runs past its message");
const TRUNCATED: ProtoError = ProtoError::Malformed("the list ends in the middle of a field");

/// Reads at most `limit` bytes of a protobuf stream, counting them.
struct Counted<'r, R> {
    reader: &'r mut R,
    limit: u64,
    used: u64,
}

impl<'r, R: AsyncBufRead + Unpin> Counted<'r, R> {
    fn new(reader: &'r mut R, limit: u64) -> Self {
        Self {
            reader,
            limit,
            used: 0,
        }
    }

    async fn at_end(&mut self) -> Result<bool, ProtoError> {
        Ok(self.reader.fill_buf().await?.is_empty())
    }

    async fn byte(&mut self) -> Result<u8, ProtoError> {
        self.fits(1)?;
        let buf = self.reader.fill_buf().await?;
        let Some(&b) = buf.first() else {
            return Err(TRUNCATED);
        };
        self.reader.consume_unpin(1);
        self.used += 1;
        Ok(b)
    }

    async fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte().await?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ProtoError::Malformed("a varint longer than 10 bytes"))
    }

    async fn tag(&mut self) -> Result<(u64, u8), ProtoError> {
        let tag = self.varint().await?;
        // The low three bits are the wire type.
        let wire_type = (tag & 7) as u8;
        Ok((tag >> 3, wire_type))
    }

    /// Whether `len` more bytes stay within the message being read.
    fn fits(&self, len: u64) -> Result<(), ProtoError> {
        if len > self.limit - self.used {
            return Err(OVERRUN);
        }
        Ok(())
    }

    /// A length-delimited field decoded as `M`, at most `max` bytes of it.
    async fn message<M: Message + Default>(
        &mut self,
        what: &'static str,
        max: u64,
    ) -> Result<M, ProtoError> {
        let len = self.varint().await?;
        if len > max {
            return Err(ProtoError::TooLarge { what, len, max });
        }
        self.fits(len)?;
        let mut bytes = vec![0u8; len as usize];
        futures::AsyncReadExt::read_exact(&mut self.reader, &mut bytes)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => TRUNCATED,
                _ => ProtoError::Io(e),
            })?;
        self.used += len;
        M::decode(bytes.as_slice()).map_err(|source| ProtoError::Decode { what, source })
    }

    /// Skips a field of a type Herald does not read.
    async fn skip(&mut self, wire_type: u8) -> Result<(), ProtoError> {
        let len = match wire_type {
            0 => return self.varint().await.map(drop),
            1 => 8,
            LEN => self.varint().await?,
            5 => 4,
            _ => return Err(ProtoError::Malformed("an unknown wire type")),
        };
        self.fits(len)?;
        let mut left = len;
        while left > 0 {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Err(TRUNCATED);
            }
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            self.reader.consume_unpin(n);
            left -= n as u64;
        }
        self.used += len;
        Ok(())
    }
}

// The messages, reduced to the fields Herald reads (proto2: every scalar optional).

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct Status {
    #[prost(string, optional, tag = "3")]
    message: Option<String>,
    #[prost(int32, optional, tag = "6")]
    code: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ListMeta {
    #[prost(string, optional, tag = "2")]
    resource_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    continue_: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Service {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<ServiceSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<ServiceStatus>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    resource_version: Option<String>,
    #[prost(int64, optional, tag = "7")]
    generation: Option<i64>,
    #[prost(message, optional, tag = "9")]
    deletion_timestamp: Option<Time>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct Time {
    #[prost(int64, optional, tag = "1")]
    seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    nanos: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(btree_map = "string, string", tag = "2")]
    selector: BTreeMap<String, String>,
    #[prost(string, optional, tag = "4")]
    type_: Option<String>,
    #[prost(string, optional, tag = "8")]
    load_balancer_ip: Option<String>,
    #[prost(string, optional, tag = "11")]
    external_traffic_policy: Option<String>,
    #[prost(string, optional, tag = "17")]
    ip_family_policy: Option<String>,
    #[prost(string, repeated, tag = "19")]
    ip_families: Vec<String>,
    #[prost(string, optional, tag = "21")]
    load_balancer_class: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServicePort {
    #[prost(string, optional, tag = "2")]
    protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    port: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceStatus {
    #[prost(message, optional, tag = "1")]
    load_balancer: Option<LoadBalancerStatus>,
    #[prost(message, repeated, tag = "2")]
    conditions: Vec<Condition>,
}

#[derive(Clone, PartialEq, Message)]
struct LoadBalancerStatus {
    #[prost(message, repeated, tag = "1")]
    ingress: Vec<LoadBalancerIngress>,
}

#[derive(Clone, PartialEq, Message)]
struct LoadBalancerIngress {
    #[prost(string, optional, tag = "1")]
    ip: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct Condition {
    #[prost(string, optional, tag = "1")]
    type_: Option<String>,
    #[prost(string, optional, tag = "2")]
    status: Option<String>,
    #[prost(message, optional, tag = "4")]
    last_transition_time: Option<Time>,
    #[prost(string, optional, tag = "5")]
    reason: Option<String>,
    #[prost(string, optional, tag = "6")]
    message: Option<String>,
}

impl Time {
    fn to_k8s(&self) -> Option<meta::Time> {
        let ts = k8s_openapi::jiff::Timestamp::new(self.seconds?, self.nanos.unwrap_or(0)).ok()?;
        Some(meta::Time(ts))
    }
}

/// The same shape the JSON is read into, so both encodings become an `LbService` by one
/// conversion. The API server writes every optional scalar in protobuf, unset ones as `""`
/// or 0, where its JSON leaves them out (`omitempty`): those are read as unset.
impl From<Service> for wire::Service {
    fn from(s: Service) -> Self {
        let m = s.metadata.unwrap_or_default();
        let spec = s.spec.unwrap_or_default();
        let status = s.status.unwrap_or_default();
        let some_map = |m: BTreeMap<String, String>| (!m.is_empty()).then_some(m);
        let set = |s: Option<String>| s.filter(|s| !s.is_empty());
        wire::Service {
            metadata: wire::Meta {
                name: set(m.name),
                namespace: set(m.namespace),
                uid: set(m.uid),
                resource_version: set(m.resource_version),
                generation: m.generation.filter(|g| *g != 0),
                deletion_timestamp: m.deletion_timestamp.as_ref().and_then(Time::to_k8s),
                labels: some_map(m.labels),
                annotations: some_map(m.annotations),
            },
            spec: wire::Spec {
                type_: set(spec.type_),
                load_balancer_class: set(spec.load_balancer_class),
                load_balancer_ip: set(spec.load_balancer_ip),
                ip_family_policy: set(spec.ip_family_policy),
                ip_families: Some(spec.ip_families),
                external_traffic_policy: set(spec.external_traffic_policy),
                selector: some_map(spec.selector),
                ports: Some(
                    spec.ports
                        .into_iter()
                        .map(|p| wire::Port {
                            port: p.port.unwrap_or(0),
                            protocol: set(p.protocol),
                        })
                        .collect(),
                ),
            },
            status: wire::Status {
                load_balancer: status.load_balancer.map(|lb| wire::LoadBalancer {
                    ingress: Some(
                        lb.ingress
                            .into_iter()
                            .map(|i| wire::Ingress { ip: set(i.ip) })
                            .collect(),
                    ),
                }),
                conditions: Some(
                    status
                        .conditions
                        .into_iter()
                        .map(|c| wire::Condition {
                            type_: c.type_.unwrap_or_default(),
                            status: c.status.unwrap_or_default(),
                            reason: c.reason.unwrap_or_default(),
                            message: c.message.unwrap_or_default(),
                            last_transition_time: c
                                .last_transition_time
                                .as_ref()
                                .and_then(Time::to_k8s),
                        })
                        .collect(),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests;
