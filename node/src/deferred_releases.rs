//! Deferred releases: a gateway answers a CLOSE of a file on another node's volume before the
//! owner hears that the open went, and the release follows on the next call to that owner.
//!
//! Data flow: [`crate::gateway_opens::GatewayOpens::release`] hands a plain release (no
//! deletion asked, no byte-range lock ever taken, the owner not this node) to
//! [`DeferredReleases::defer`], keyed by the owner's address. The next call a caller thread
//! makes to that address ([`crate::direct_channel::DirectChannel`]) takes what waits
//! ([`DeferredReleases::take`]) and carries it in the [`RELEASES_HEADER`] header; the owner's
//! [`crate::volume_wire::VolumeWire`] carries those releases out before the call itself. What
//! no call has taken within [`RELEASE_DELAY`] the node's flusher ([`run_flusher`]) sends as an
//! `OpenReleases` call.
//!
//! What a client sees stays as on one server: a release still on its way only matters where
//! the owner's table of opens refuses something because of it. Before such a refusal stands
//! (a sharing violation, a rename over an open file or of a directory with open files below,
//! and a file made delete-pending while other gateways hold it) the owner asks the gateways
//! concerned to send what they have deferred (`OpenFlush`, [`crate::volume_service`]'s
//! `settle`) and decides again. A file made delete-pending elsewhere is also marked on those
//! gateways, so its remaining opens are released at their CLOSE, before it is answered: the
//! file is gone when its last CLOSE returns. A gateway that dies with releases deferred is as
//! one that dies holding the opens: the owner drops them when its lease ends or when the
//! node's gateway starts again.
//!
//! Why: a small file created through one node on another's volume cost three calls to the
//! owner (CREATE, WRITE, CLOSE); the CLOSE's call now rides on the next file's CREATE
//! (docs/benchmarks.md, SMB Run 28).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use prost::Message;
use tonic::Status;
use umbra_proto::v1::{OpenReleaseRequest, OpenReleasesRequest};

/// The request header that carries releases on a call (base64 of an `OpenReleasesRequest`).
pub const RELEASES_HEADER: &str = "umbra-releases";
/// A release waits at most this long for a call to ride on before the flusher sends it.
pub const RELEASE_DELAY: Duration = Duration::from_millis(5);
/// Releases one call carries in its header at most (each is about 100 bytes).
pub const MAX_RIDING: usize = 32;
/// The header's bytes at most (base64 of [`MAX_RIDING`] releases of the longest targets).
pub const MAX_RIDING_HEADER_BYTES: usize = 12 * 1024;
/// Releases deferred to one owner at most; past this a CLOSE releases at once.
pub const MAX_DEFERRED_PER_OWNER: usize = 1024;
/// Releases one `OpenReleases` call carries at most.
pub const MAX_RELEASES_PER_CALL: usize = MAX_DEFERRED_PER_OWNER;
/// Files one `OpenFlush` marks at most.
pub const MAX_NO_DEFER_FILES: usize = 1024;
/// How long a flush waits for its releases (and those under way on calls) to be carried out.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Releases taken together for one owner: numbered, so that a flush can wait for those under
/// way when it starts.
#[derive(Debug)]
pub struct Batch {
    pub addr: Arc<str>,
    pub number: u64,
    pub releases: Vec<OpenReleaseRequest>,
}

#[derive(Default)]
struct Owner {
    waiting: Vec<OpenReleaseRequest>,
    /// Batches taken and not yet answered.
    under_way: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    owners: HashMap<Arc<str>, Owner>,
    next_batch: u64,
}

/// This node's gateway's deferred releases, by the owner's address.
#[derive(Default)]
pub struct DeferredReleases {
    state: Mutex<State>,
    /// A release waits (the flusher's wake-up).
    queued: tokio::sync::Notify,
    /// A batch was answered (what a flush waits on).
    landed: tokio::sync::Notify,
}

impl DeferredReleases {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("deferred releases lock")
    }

    /// Defers a release to the owner at `addr`; gives it back when that owner already has
    /// [`MAX_DEFERRED_PER_OWNER`] waiting (the caller releases it at once).
    pub fn defer(&self, addr: &str, release: OpenReleaseRequest) -> Result<(), OpenReleaseRequest> {
        let mut state = self.state();
        if !state.owners.contains_key(addr) {
            state.owners.insert(Arc::from(addr), Owner::default());
        }
        let owner = state.owners.get_mut(addr).expect("made above");
        if owner.waiting.len() >= MAX_DEFERRED_PER_OWNER {
            return Err(release);
        }
        owner.waiting.push(release);
        drop(state);
        self.queued.notify_one();
        Ok(())
    }

    /// What waits for the owner at `addr`, at most [`MAX_RIDING`] (the oldest), to ride on a call.
    pub fn take(&self, addr: &str) -> Option<Batch> {
        let mut state = self.state();
        let number = state.next_batch;
        let key = state.owners.get_key_value(addr)?.0.clone();
        let owner = state.owners.get_mut(addr)?;
        if owner.waiting.is_empty() {
            return None;
        }
        let n = owner.waiting.len().min(MAX_RIDING);
        let releases: Vec<_> = owner.waiting.drain(..n).collect();
        owner.under_way.insert(number);
        state.next_batch += 1;
        Some(Batch { addr: key, number, releases })
    }

    /// Everything that waits, one batch per owner.
    pub fn take_all(&self) -> Vec<Batch> {
        let mut state = self.state();
        let mut next = state.next_batch;
        let mut batches = Vec::new();
        for (addr, owner) in state.owners.iter_mut().filter(|(_, o)| !o.waiting.is_empty()) {
            owner.under_way.insert(next);
            batches.push(Batch { addr: addr.clone(), number: next, releases: std::mem::take(&mut owner.waiting) });
            next += 1;
        }
        state.next_batch = next;
        batches
    }

    /// A batch was answered (or failed: the owner then drops those opens at the gateway's next
    /// renewal, which no longer lists them).
    pub fn landed(&self, addr: &str, number: u64) {
        if let Some(o) = self.state().owners.get_mut(addr) {
            o.under_way.remove(&number);
        }
        self.landed.notify_waiters();
    }

    /// The number the next batch will have.
    pub fn next_number(&self) -> u64 {
        self.state().next_batch
    }

    fn under_way_below(&self, number: u64) -> bool {
        self.state().owners.values().any(|o| o.under_way.first().is_some_and(|n| *n < number))
    }

    /// Waits, for at most `wait`, until every batch numbered below `number` has been answered.
    pub async fn wait_landed(&self, number: u64, wait: Duration) {
        let all = async {
            loop {
                let landed = self.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                if !self.under_way_below(number) {
                    return;
                }
                landed.await;
            }
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::debug!(below = number, "deferred releases still under way after the flush's wait");
        }
    }

    /// Waits until a release is deferred.
    pub async fn queued(&self) {
        self.queued.notified().await;
    }

    /// Whether any release waits.
    pub fn any_waiting(&self) -> bool {
        self.state().owners.values().any(|o| !o.waiting.is_empty())
    }
}

/// A batch as its header value.
pub fn header_value(batch: &Batch) -> http::HeaderValue {
    let bytes = OpenReleasesRequest { releases: batch.releases.clone() }.encode_to_vec();
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    http::HeaderValue::from_str(&text).expect("base64 is a valid header value")
}

/// The releases a call carries, if it carries any; a malformed or oversized header is refused.
pub fn riders(headers: &http::HeaderMap) -> Result<Option<OpenReleasesRequest>, Status> {
    let Some(value) = headers.get(RELEASES_HEADER) else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.len() > MAX_RIDING_HEADER_BYTES {
        return Err(Status::invalid_argument(format!("the {RELEASES_HEADER} header is {} bytes (max {MAX_RIDING_HEADER_BYTES})", bytes.len())));
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(bytes).map_err(|e| Status::invalid_argument(format!("the {RELEASES_HEADER} header is not base64: {e}")))?;
    let request = OpenReleasesRequest::decode(raw.as_slice()).map_err(|e| Status::invalid_argument(format!("the {RELEASES_HEADER} header: {e}")))?;
    if request.releases.len() > MAX_RIDING {
        return Err(Status::invalid_argument(format!("the {RELEASES_HEADER} header carries {} releases (max {MAX_RIDING})", request.releases.len())));
    }
    Ok(Some(request))
}

/// Sends what no call took within `delay` of its deferral ([`RELEASE_DELAY`] by default),
/// until `stop`; then what is left.
pub async fn run_flusher(service: Arc<crate::volume_service::VolumeService>, delay: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = service.deferred().queued() => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
        service.send_deferred().await;
    }
    service.send_deferred().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_proto::v1::{GatewayIncarnation, VolumeTarget};

    fn release(id: u64) -> OpenReleaseRequest {
        let target = VolumeTarget { volume: "0b1c8a52-5f0e-4a8e-9a57-4a4f0d6e2d11".into(), snapshot: String::new(), clone: String::new(), route: true };
        OpenReleaseRequest { target: Some(target), gateway: Some(GatewayIncarnation { node: 2, incarnation: 1_765_000_000_000_000_000 }), id, delete_at_close: None, now: 133_000_000_000_000_000 }
    }

    #[test]
    fn releases_ride_in_order_in_batches_of_at_most_max_riding() {
        let d = DeferredReleases::default();
        for id in 0..(MAX_RIDING as u64 + 5) {
            d.defer("a:1", release(id)).unwrap();
        }
        d.defer("b:1", release(900)).unwrap();
        assert!(d.take("c:1").is_none(), "nothing for another owner");
        let first = d.take("a:1").unwrap();
        assert_eq!(first.releases.iter().map(|r| r.id).collect::<Vec<_>>(), (0..MAX_RIDING as u64).collect::<Vec<_>>());
        let second = d.take("a:1").unwrap();
        assert_eq!(second.releases.len(), 5);
        assert!(d.take("a:1").is_none());
        assert!(second.number > first.number);
        let rest = d.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(&*rest[0].addr, "b:1");
        assert!(!d.any_waiting());
    }

    #[test]
    fn an_owner_with_too_many_waiting_gets_them_back() {
        let d = DeferredReleases::default();
        for id in 0..MAX_DEFERRED_PER_OWNER as u64 {
            d.defer("a:1", release(id)).unwrap();
        }
        assert_eq!(d.defer("a:1", release(7)).unwrap_err().id, 7);
        d.defer("b:1", release(8)).expect("another owner has room");
    }

    #[test]
    fn a_header_carries_its_batch_and_bad_ones_are_refused() {
        let d = DeferredReleases::default();
        for id in 0..MAX_RIDING as u64 {
            d.defer("a:1", release(id)).unwrap();
        }
        let batch = d.take("a:1").unwrap();
        let mut headers = http::HeaderMap::new();
        assert_eq!(riders(&headers).unwrap(), None);
        let value = header_value(&batch);
        assert!(value.len() <= MAX_RIDING_HEADER_BYTES, "a full batch fits: {} bytes", value.len());
        headers.insert(RELEASES_HEADER, value);
        assert_eq!(riders(&headers).unwrap().unwrap().releases, batch.releases);
        for bad in ["not base64!", "AAAA", &"A".repeat(MAX_RIDING_HEADER_BYTES + 4)] {
            headers.insert(RELEASES_HEADER, http::HeaderValue::from_str(bad).unwrap());
            assert_eq!(riders(&headers).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:.20}");
        }
        let too_many = OpenReleasesRequest { releases: (0..MAX_RIDING as u64 + 1).map(release).collect() };
        let text = base64::engine::general_purpose::STANDARD.encode(too_many.encode_to_vec());
        headers.insert(RELEASES_HEADER, http::HeaderValue::from_str(&text).unwrap());
        assert!(riders(&headers).unwrap_err().message().contains("max"));
    }

    #[test]
    fn mutated_headers_never_panic() {
        use proptest::prelude::*;
        let d = DeferredReleases::default();
        for id in 0..4 {
            d.defer("a:1", release(id)).unwrap();
        }
        let good = header_value(&d.take("a:1").unwrap()).as_bytes().to_vec();
        proptest!(|(flips in proptest::collection::vec((0..good.len(), any::<u8>()), 0..8), cut in 0..=good.len())| {
            let mut bytes = good.clone();
            for (i, b) in flips {
                bytes[i] = b'A' + b % 26;
            }
            bytes.truncate(cut);
            let mut headers = http::HeaderMap::new();
            headers.insert(RELEASES_HEADER, http::HeaderValue::from_bytes(&bytes).unwrap());
            let _ = riders(&headers);
        });
    }

    #[tokio::test]
    async fn a_flush_waits_for_batches_under_way_when_it_started() {
        let d = Arc::new(DeferredReleases::default());
        d.defer("a:1", release(1)).unwrap();
        let riding = d.take("a:1").unwrap();
        let mark = d.next_number();
        d.defer("a:1", release(2)).unwrap();
        let later = d.take("a:1").unwrap();
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.wait_landed(mark, Duration::from_secs(5)).await }
        });
        d.landed(&later.addr, later.number);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a batch taken after the mark does not count");
        d.landed(&riding.addr, riding.number);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("released once the batch landed").unwrap();
    }
}
