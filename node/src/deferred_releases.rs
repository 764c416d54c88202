//! Deferred releases: a gateway answers a CLOSE of a file on another node's volume before the
//! owner hears that the open went, and the release follows on the next call to that owner.
//!
//! Data flow: [`crate::gateway_opens::GatewayOpens::release`] hands a plain release (no
//! deletion asked, no byte-range lock ever taken, the owner another node) to
//! [`DeferredReleases::defer`], keyed by the owner's address. The next volume call a caller
//! thread makes to that address ([`crate::direct_channel::DirectChannel`]) takes what waits
//! ([`DeferredReleases::take`]) and carries it, numbered, in the [`RELEASES_HEADER`] header;
//! the owner's [`crate::volume_wire::VolumeWire`] carries those releases out before the call
//! itself. What no call took within the release delay ([`RELEASE_DELAY`] by default) the node's
//! flusher ([`run_flusher`]) sends as an `OpenReleases` call. A batch whose call failed waits
//! again (releases are idempotent), [`MAX_ATTEMPTS`] times at most.
//!
//! What a client sees stays as on one server wherever the owner's table of opens decides: a
//! release still on its way matters only where the table refuses something because of its
//! open. Before such a refusal stands (a sharing violation; a rename over an open file or of a
//! directory with open files below, `open_in_the_way`; and a file made delete-pending while
//! other gateways hold it) the owner asks the gateways concerned for what they deferred to it
//! (`OpenFlush`, the volume service's `settle`): each sends it and waits for the calls under way
//! that carry others, but those whose batches the owner has carried out already ([`Carried`]:
//! the call that meets the refusal may be one), and the owner decides again. A file made delete-pending is marked on the
//! other gateways holding it, so its remaining opens are released at their CLOSE, before it is
//! answered: the file is gone when its last CLOSE returns.
//!
//! What is left: a gateway the owner cannot reach within the owner's settle timeout keeps its
//! refusals standing until its releases arrive (it could not have released either); a file made
//! delete-pending by a lease that ran out is not marked, so it may outlive its last CLOSE by the
//! release delay; releases deferred to an owner that dies go to it [`MAX_ATTEMPTS`] times and
//! are then left to the renewals to the volume's next owner (which no longer list them). A
//! gateway that dies with releases deferred is as one that dies holding the opens: the owner
//! drops them when its lease ends or when the node's gateway starts again. A stopping node
//! defers nothing more and sends what waits. Nodes of older versions neither carry out riders
//! nor answer these calls: a cluster runs one version.
//!
//! Why: a small file created through one node on another's volume cost three calls to the
//! owner (CREATE, WRITE, CLOSE); the CLOSE's call now rides on the next file's CREATE
//! (docs/benchmarks.md, SMB Run 28).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use prost::Message;
use tonic::Status;
use umbra_proto::v1::{OpenReleaseRequest, OpenReleasesRequest};

/// The request header that carries releases on a call (base64 of an `OpenReleasesRequest`).
pub const RELEASES_HEADER: &str = "umbra-releases";
/// How long a release waits for a call to ride on before the flusher sends it, by default
/// (`volumes.release_delay_ms`).
pub const RELEASE_DELAY: Duration = Duration::from_millis(5);
/// Releases one call carries in its header at most (each is about 100 bytes).
pub const MAX_RIDING: usize = 32;
/// The header's bytes at most (base64 of [`MAX_RIDING`] releases of the longest targets).
pub const MAX_RIDING_HEADER_BYTES: usize = 12 * 1024;
/// Releases deferred to one owner at most; past this a CLOSE releases at once.
pub const MAX_DEFERRED_PER_OWNER: usize = 1024;
/// Releases one `OpenReleases` call carries at most.
pub const MAX_RELEASES_PER_CALL: usize = MAX_DEFERRED_PER_OWNER;
/// The encoded `OpenReleases` or `OpenFlush` request an owner or gateway decodes at most (a
/// whole batch of releases, or of files, of the longest targets).
pub const MAX_RELEASES_REQUEST_BYTES: usize = MAX_RELEASES_PER_CALL * 256;
/// Files one `OpenFlush` marks at most, and batches it names.
pub const MAX_NO_DEFER_FILES: usize = 1024;
/// How long a gateway gives one owner to take a batch it sends, and a flush waits for the
/// batches under way on calls: together less than an owner's `SETTLE_TIMEOUT`.
pub const SEND_WAIT: Duration = Duration::from_secs(1);
/// How many times a batch whose call failed is sent again (releases are idempotent) before its
/// opens are left to the owner's next renewal from this gateway, which no longer lists them.
pub const MAX_ATTEMPTS: u8 = 3;

/// One deferred release and how many calls carried it without an answer.
#[derive(Clone, Debug)]
pub struct Deferred {
    pub release: OpenReleaseRequest,
    pub attempts: u8,
}

/// Releases taken together for one owner, numbered: a flush waits for those under way, but not
/// for those the owner says it carried out.
#[derive(Debug)]
pub struct Batch {
    pub addr: Arc<str>,
    pub number: u64,
    pub items: Vec<Deferred>,
}

impl Batch {
    pub fn releases(&self) -> Vec<OpenReleaseRequest> {
        self.items.iter().map(|d| d.release.clone()).collect()
    }
}

#[derive(Default)]
struct Owner {
    waiting: VecDeque<Deferred>,
    /// Batches taken and not yet answered.
    under_way: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    owners: HashMap<Arc<str>, Owner>,
    next_batch: u64,
    /// The node is stopping: nothing more is deferred.
    closed: bool,
}

impl State {
    fn owner(&mut self, addr: &str) -> &mut Owner {
        if !self.owners.contains_key(addr) {
            self.owners.insert(Arc::from(addr), Owner::default());
        }
        self.owners.get_mut(addr).expect("made above")
    }

    /// Up to `max` of what waits for `addr`, as a batch under way.
    fn take(&mut self, addr: &str, max: usize) -> Option<Batch> {
        let number = self.next_batch;
        let key = self.owners.get_key_value(addr)?.0.clone();
        let owner = self.owners.get_mut(addr)?;
        if owner.waiting.is_empty() {
            return None;
        }
        let n = owner.waiting.len().min(max);
        let items: Vec<_> = owner.waiting.drain(..n).collect();
        owner.under_way.insert(number);
        self.next_batch += 1;
        Some(Batch { addr: key, number, items })
    }
}

/// This node's gateway's deferred releases, by the owner's address.
#[derive(Default)]
pub struct DeferredReleases {
    state: Mutex<State>,
    /// A release waits (the flusher's wake-up).
    queued: tokio::sync::Notify,
    /// A batch was answered or failed (what a flush waits on).
    landed: tokio::sync::Notify,
}

impl DeferredReleases {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("deferred releases lock")
    }

    /// Defers a release to the owner at `addr`; gives it back when it is to go at once: that
    /// owner has [`MAX_DEFERRED_PER_OWNER`] waiting, or the node is stopping.
    pub fn defer(&self, addr: &str, release: OpenReleaseRequest) -> Result<(), OpenReleaseRequest> {
        let mut state = self.state();
        if state.closed {
            return Err(release);
        }
        let owner = state.owner(addr);
        if owner.waiting.len() >= MAX_DEFERRED_PER_OWNER {
            return Err(release);
        }
        owner.waiting.push_back(Deferred { release, attempts: 0 });
        drop(state);
        self.queued.notify_one();
        Ok(())
    }

    /// From now on nothing is deferred (the node stops; what waits is sent once more).
    pub fn close(&self) {
        self.state().closed = true;
    }

    /// What waits for the owner at `addr`, at most [`MAX_RIDING`] (the oldest), to ride on a call.
    pub fn take(&self, addr: &str) -> Option<Batch> {
        self.state().take(addr, MAX_RIDING)
    }

    /// Everything that waits, one batch per owner.
    pub fn take_all(&self) -> Vec<Batch> {
        let mut state = self.state();
        let addrs: Vec<Arc<str>> = state.owners.iter().filter(|(_, o)| !o.waiting.is_empty()).map(|(a, _)| a.clone()).collect();
        addrs.iter().filter_map(|a| state.take(a, usize::MAX)).collect()
    }

    /// For a flush towards the owner at `addr`: everything that waits for it, and (taken in the
    /// same look, so that none falls between) the numbers of the batches already under way to
    /// it, but those in `skip` (the batches the owner says it carried out already).
    pub fn take_for(&self, addr: &str, skip: &[u64]) -> (Option<Batch>, Vec<u64>) {
        let mut state = self.state();
        let under_way = state.owners.get(addr).map(|o| o.under_way.iter().copied().filter(|n| !skip.contains(n)).collect()).unwrap_or_default();
        (state.take(addr, usize::MAX), under_way)
    }

    /// A batch was answered: its releases are carried out.
    pub fn landed(&self, addr: &str, number: u64) {
        if let Some(o) = self.state().owners.get_mut(addr) {
            o.under_way.remove(&number);
        }
        self.landed.notify_waiters();
    }

    /// A batch's call failed, or had no answer: what it carried waits again, first (releases
    /// are idempotent), but those carried [`MAX_ATTEMPTS`] times already, which are left to the
    /// owner's next renewal from this gateway.
    pub fn failed(&self, batch: Batch) {
        let mut state = self.state();
        let owner = state.owner(&batch.addr);
        owner.under_way.remove(&batch.number);
        let mut dropped = 0;
        for mut d in batch.items.into_iter().rev() {
            d.attempts += 1;
            match d.attempts < MAX_ATTEMPTS && owner.waiting.len() < MAX_DEFERRED_PER_OWNER {
                true => owner.waiting.push_front(d),
                false => dropped += 1,
            }
        }
        drop(state);
        if dropped > 0 {
            tracing::warn!(addr = %batch.addr, dropped, "deferred releases given up after {MAX_ATTEMPTS} calls: the owner drops those opens at this gateway's next renewal");
        }
        self.queued.notify_one();
        self.landed.notify_waiters();
    }

    fn any_under_way(&self, addr: &str, numbers: &[u64]) -> bool {
        self.state().owners.get(addr).is_some_and(|o| numbers.iter().any(|n| o.under_way.contains(n)))
    }

    /// Waits, for at most `wait`, until none of the batches `numbers` to `addr` is under way.
    pub async fn wait_landed(&self, addr: &str, numbers: &[u64], wait: Duration) {
        if numbers.is_empty() {
            return;
        }
        let all = async {
            loop {
                let landed = self.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                if !self.any_under_way(addr, numbers) {
                    return;
                }
                landed.await;
            }
        };
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::debug!(%addr, "deferred releases still under way after a flush's wait");
        }
    }

    /// Waits until a release is deferred.
    pub async fn queued(&self) {
        self.queued.notified().await;
    }
}

/// A batch as its header value.
pub fn header_value(batch: &Batch) -> http::HeaderValue {
    let bytes = OpenReleasesRequest { releases: batch.releases(), batch: batch.number }.encode_to_vec();
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

/// Batches an owner carried out lately, by the gateway they came from: a flush it asks of that
/// gateway does not wait for them (a call carrying one may still be under way, maybe waiting
/// for that very flush, or its answer not yet read).
#[derive(Default)]
pub struct Carried(Mutex<HashMap<u64, (u64, VecDeque<u64>)>>);

/// Batches [`Carried`] remembers per gateway (one per call under way there, and some).
pub const CARRIED_KEPT: usize = 64;
/// Gateways [`Carried`] remembers batches of (the nodes of a cluster, and room).
pub const CARRIED_GATEWAYS: usize = 1024;

impl Carried {
    /// The batch `number` of gateway `node` (incarnation `incarnation`) was carried out.
    pub fn note(&self, node: u64, incarnation: u64, number: u64) {
        let mut all = self.0.lock().expect("carried batches lock");
        if all.len() >= CARRIED_GATEWAYS && !all.contains_key(&node) {
            return;
        }
        let (inc, numbers) = all.entry(node).or_default();
        if *inc != incarnation {
            // A restarted gateway numbers its batches anew.
            *inc = incarnation;
            numbers.clear();
        }
        if numbers.len() == CARRIED_KEPT {
            numbers.pop_front();
        }
        numbers.push_back(number);
    }

    /// The batches of gateway `node` carried out lately.
    pub fn of(&self, node: u64) -> Vec<u64> {
        self.0.lock().expect("carried batches lock").get(&node).map(|(_, n)| n.iter().copied().collect()).unwrap_or_default()
    }
}

/// Sends what no call took within `delay` of its deferral ([`RELEASE_DELAY`] by default), each
/// owner's on its own (a slow one holds up no other's), until `stop`; then stops deferring and
/// sends what is left.
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
        for batch in service.deferred().take_all() {
            let service = service.clone();
            tokio::spawn(async move { service.send_batch(batch).await });
        }
    }
    service.deferred().close();
    let last = service.deferred().take_all().into_iter().map(|b| service.send_batch(b));
    futures::future::join_all(last).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_proto::v1::{GatewayIncarnation, VolumeTarget};

    fn release(id: u64) -> OpenReleaseRequest {
        let target = VolumeTarget { volume: "0b1c8a52-5f0e-4a8e-9a57-4a4f0d6e2d11".into(), snapshot: String::new(), clone: String::new(), route: true };
        OpenReleaseRequest { target: Some(target), gateway: Some(GatewayIncarnation { node: 2, incarnation: 1_765_000_000_000_000_000 }), id, delete_at_close: None, now: 133_000_000_000_000_000 }
    }

    fn ids(b: &Batch) -> Vec<u64> {
        b.items.iter().map(|d| d.release.id).collect()
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
        assert_eq!(ids(&first), (0..MAX_RIDING as u64).collect::<Vec<_>>());
        let second = d.take("a:1").unwrap();
        assert_eq!(second.items.len(), 5);
        assert!(d.take("a:1").is_none());
        assert!(second.number > first.number);
        let rest = d.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(&*rest[0].addr, "b:1");
        assert!(d.take_all().is_empty());
    }

    #[test]
    fn an_owner_with_too_many_waiting_or_a_stopping_node_gets_them_back() {
        let d = DeferredReleases::default();
        for id in 0..MAX_DEFERRED_PER_OWNER as u64 {
            d.defer("a:1", release(id)).unwrap();
        }
        assert_eq!(d.defer("a:1", release(7)).unwrap_err().id, 7);
        d.defer("b:1", release(8)).expect("another owner has room");
        d.close();
        assert_eq!(d.defer("b:1", release(9)).unwrap_err().id, 9, "stopping");
    }

    #[test]
    fn a_failed_batch_waits_again_first_until_its_attempts_run_out() {
        let d = DeferredReleases::default();
        d.defer("a:1", release(1)).unwrap();
        d.defer("a:1", release(2)).unwrap();
        let batch = d.take("a:1").unwrap();
        d.defer("a:1", release(3)).unwrap();
        d.failed(batch);
        let mut rounds = 0;
        loop {
            let b = d.take("a:1").unwrap();
            if !ids(&b).contains(&1) {
                assert_eq!(ids(&b), vec![3], "1 and 2 given up, 3 kept");
                break;
            }
            assert_eq!(ids(&b), vec![1, 2, 3], "failed ones first");
            rounds += 1;
            d.failed(b);
        }
        assert_eq!(rounds, MAX_ATTEMPTS as usize - 1);
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
        let carried = riders(&headers).unwrap().unwrap();
        assert_eq!((carried.releases, carried.batch), (batch.releases(), batch.number));
        for bad in ["not base64!", "AAAA", &"A".repeat(MAX_RIDING_HEADER_BYTES + 4)] {
            headers.insert(RELEASES_HEADER, http::HeaderValue::from_str(bad).unwrap());
            assert_eq!(riders(&headers).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:.20}");
        }
        let too_many = OpenReleasesRequest { releases: (0..MAX_RIDING as u64 + 1).map(release).collect(), batch: 0 };
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

    #[test]
    fn an_owner_remembers_the_latest_batches_of_each_gateway_incarnation() {
        let c = Carried::default();
        for n in 0..(CARRIED_KEPT as u64 + 3) {
            c.note(1, 100, n);
        }
        c.note(2, 7, 9);
        assert_eq!(c.of(1), (3..CARRIED_KEPT as u64 + 3).collect::<Vec<_>>(), "the latest only");
        assert_eq!(c.of(2), vec![9]);
        assert!(c.of(3).is_empty());
        c.note(1, 101, 0);
        assert_eq!(c.of(1), vec![0], "a restarted gateway numbers anew");
        for node in 10..(CARRIED_GATEWAYS as u64 + 10) {
            c.note(node, 1, 1);
        }
        assert!(c.of(CARRIED_GATEWAYS as u64 + 9).is_empty(), "bounded in gateways");
        c.note(2, 7, 10);
        assert_eq!(c.of(2), vec![9, 10], "a known one still counts");
    }

    /// A flush takes what waits and, in the same look, the batches under way: one taken by a
    /// call just before is waited for, one the owner carried out already is not.
    #[tokio::test]
    async fn a_flush_waits_for_the_batches_under_way_but_the_owners_own() {
        let d = Arc::new(DeferredReleases::default());
        d.defer("a:1", release(1)).unwrap();
        let carried = d.take("a:1").unwrap();
        d.defer("a:1", release(2)).unwrap();
        let riding = d.take("a:1").unwrap();
        d.defer("b:1", release(3)).unwrap();
        let elsewhere = d.take("b:1").unwrap();
        d.defer("a:1", release(4)).unwrap();
        let (mine, under_way) = d.take_for("a:1", &[carried.number]);
        assert_eq!(ids(&mine.unwrap()), vec![4]);
        assert_eq!(under_way, vec![riding.number], "not the carried one, nor another owner's");
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.wait_landed("a:1", &under_way, Duration::from_secs(5)).await }
        });
        d.landed(&elsewhere.addr, elsewhere.number);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "another owner's batch does not count");
        d.failed(riding);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.expect("over once the batch is answered or failed").unwrap();
    }
}
