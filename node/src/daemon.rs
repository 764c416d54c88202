//! `umbra node`: opens the Raft store, starts the gRPC server, initialises or joins the
//! cluster, and shuts down cleanly on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::Instrument;
use umbra_proto::v1::admin_client::AdminClient;
use umbra_proto::v1::admin_server::AdminServer;
use umbra_proto::v1::raft_server::RaftServer;
use umbra_proto::v1::AddNodeRequest;
use umbra_raft::network::{Network, MAX_RAFT_MESSAGE_BYTES};
use umbra_raft::service::RaftService;
use umbra_raft::store::{LogStore, StateMachineStore};
use umbra_raft::{NodeInfo, Raft};

use crate::admin::AdminService;
use crate::config::NodeConfig;
use crate::meta::{Meta, ADD_NODE_TIMEOUT};
use crate::volume::VolumeStore;
use crate::volume_service::VolumeService;

/// Pause between attempts to join through the configured members.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// How long a stopping node waits for RocksDB to close before it exits anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a node until SIGTERM or Ctrl-C, then waits for its Raft database to close (exiting with
/// it open would let RocksDB's background threads die mid-work).
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    // Channels and background tasks started while serving a call live on this runtime, not
    // on the call's connection thread (crate::grpc_server).
    umbra_raft::network::set_home(tokio::runtime::Handle::current());
    match config.cluster_key.as_deref().map(umbra_raft::peer_auth::ClusterKey::from_hex) {
        Some(Ok(key)) => {
            if !umbra_raft::peer_auth::install_key(key, Some(&config.grpc_addr)) {
                anyhow::bail!("a cluster key was installed in this process already");
            }
        }
        Some(Err(e)) => anyhow::bail!("cluster_key: {e}"),
        None => tracing::warn!("no cluster_key configured: this node's gRPC port (volumes, Raft, administration) is open to anyone who reaches it"),
    }
    let span = tracing::info_span!("node", id = config.id);
    async {
        std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let (log, sm, mut closing) = umbra_raft::store::open_watched(&config.raft_dir())
            .with_context(|| format!("opening the Raft store in {}", config.raft_dir().display()))?;
        let volume_dir = config.data_dir.join("volumes");
        let volumes = Arc::new(VolumeStore::open(&volume_dir).with_context(|| format!("opening the volume store in {}", volume_dir.display()))?);
        let volumes_closed = volumes.close_watch().context("the volume store's close watch")?;
        let result = serve(&config, log, sm, volumes).await;
        if !closing.closed(CLOSE_TIMEOUT).await {
            tracing::warn!("the Raft database was still in use {} s after shutdown", CLOSE_TIMEOUT.as_secs());
        }
        // Whichever thread lets go of the store last closes it; the process waits for that.
        let closed = tokio::task::spawn_blocking(move || volumes_closed.wait(CLOSE_TIMEOUT)).await.unwrap_or(false);
        if !closed {
            tracing::warn!("the volume database was still in use {} s after shutdown", CLOSE_TIMEOUT.as_secs());
        }
        tracing::info!("stopped");
        result
    }
    .instrument(span)
    .await
}

async fn serve(config: &NodeConfig, log: LogStore, sm: StateMachineStore, volumes: Arc<VolumeStore>) -> anyhow::Result<()> {
    let reader = sm.reader();
    let raft_config = Arc::new(config.openraft_config().validate().context("raft settings")?);
    let raft = Raft::new(config.id, raft_config, Network, log.clone(), sm).await.context("starting raft")?;
    let meta = Arc::new(Meta::new(config.id, raft.clone(), reader.clone(), Some(log), config.raft.request_timeout()));
    let (upkeep_stop, upkeep_stopped) = tokio::sync::watch::channel(false);
    let upkeep = tokio::spawn(crate::volumes_task::run(config.id, volumes.clone(), reader.clone(), config.volumes.clone(), crate::volume_service::StoreCalls::Blocking, upkeep_stopped));
    // The SMB gateway's change notifier; the volume service publishes other nodes' changes to it.
    let notifier = umbra_smb_gateway::driver::notifier();
    // Failed SMB logons, counted with those the other nodes pass on (notify_relay).
    let throttle = Arc::new(std::sync::Mutex::new(umbra_smb_gateway::server::throttle::Throttle::default()));
    let volume_service = Arc::new(VolumeService::new(config.id, volumes.clone(), raft.clone(), reader.clone()).with_grace_ms(config.volumes.owner_grace_ms).with_notifier(notifier.clone()).with_throttle(throttle.clone()));

    let listener = TcpListener::bind(&config.grpc_addr).await.with_context(|| format!("cannot listen on {}", config.grpc_addr))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = {
        let (raft, meta, volume_service) = (raft.clone(), meta.clone(), volume_service.clone());
        move || {
            tonic::transport::Server::builder()
                .initial_stream_window_size(umbra_raft::network::STREAM_WINDOW_BYTES)
                .initial_connection_window_size(umbra_raft::network::CONNECTION_WINDOW_BYTES)
                .max_frame_size(Some(umbra_raft::network::MAX_FRAME_BYTES))
                .max_concurrent_streams(Some(crate::grpc_server::MAX_STREAMS_PER_CONNECTION))
                // A connection whose peer stops answering pings ends, and its thread with it.
                .http2_keepalive_interval(Some(crate::grpc_server::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(crate::grpc_server::KEEPALIVE_TIMEOUT))
                .add_service(RaftServer::new(RaftService::new(raft.clone())).max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES))
                .add_service(AdminServer::new(AdminService::new(meta.clone())).max_decoding_message_size(crate::admin::MAX_ADMIN_REQUEST_BYTES))
                .add_service(crate::volume_wire::VolumeWire::new(volume_service.clone()))
        }
    };
    let server = crate::grpc_server::serve(listener, router, Some(crate::volume_wire::VolumeWire::new(volume_service.clone())), stop_rx);
    let server = tokio::spawn(server);
    let smb_listener = TcpListener::bind(&config.smb_addr).await.with_context(|| format!("cannot listen on {} for SMB", config.smb_addr))?;
    let settings = crate::fsrvp::Settings::new(crate::smb::NETBIOS_NAME);
    let coordinator = Arc::new(crate::fsrvp::Coordinator::new(config.id, meta.clone(), reader.clone(), volume_service.clone(), settings));
    let reconcile = tokio::spawn(crate::fsrvp::reconcile::run(coordinator.clone(), volumes.clone(), upkeep_stop.subscribe()));
    let gateway_fsrvp = Arc::new(crate::fsrvp::gateway::GatewayFsrvp { coordinator, runtime: tokio::runtime::Handle::current() });
    let directory = Arc::new(crate::smb::RaftDirectory { reader: reader.clone(), fsrvp: Some(gateway_fsrvp), meta: Some((meta.clone(), tokio::runtime::Handle::current())) });
    let gateway_opens = Arc::new(crate::gateway_opens::GatewayOpens::new(config.id));
    let renewals = tokio::spawn(gateway_opens.clone().run(volume_service.clone(), upkeep_stop.subscribe()));
    volume_service.set_gateway_opens(gateway_opens.clone());
    let release_flusher = tokio::spawn(crate::deferred_releases::run_flusher(volume_service.clone(), Duration::from_millis(config.volumes.release_delay_ms), upkeep_stop.subscribe()));
    let relay = tokio::spawn(crate::notify_relay::run(config.id, notifier.clone(), volume_service.clone(), upkeep_stop.subscribe()));
    let opens_upkeep = tokio::spawn(volume_service.clone().run_opens_upkeep(upkeep_stop.subscribe()));
    let logon_relay = tokio::spawn(crate::notify_relay::relay_logon_failures(config.id, throttle.clone(), volume_service.clone(), upkeep_stop.subscribe()));
    let files = Arc::new(crate::smb::VolumeFiles::new(config.id, volumes, volume_service, gateway_opens, reader.clone()));
    let smb = tokio::spawn(umbra_smb_gateway::driver::serve(smb_listener, crate::smb::config(config.id, &config.smb), directory, files, notifier, throttle));
    tracing::info!(grpc = %config.grpc_addr, smb = %config.smb_addr, "node serving");

    let me = NodeInfo { grpc_addr: config.grpc_addr.clone(), smb_addr: config.smb_addr.clone() };
    // A signal while the node is still joining stops it then (it is not waited for twice).
    let (started, signalled) = tokio::select! {
        r = initialise(config, &raft, me) => (r, false),
        _ = shutdown_signal() => (Ok(()), true),
    };
    if started.is_ok() && !signalled {
        shutdown_signal().await;
    }
    smb.abort();
    let _ = upkeep_stop.send(true);
    let _ = upkeep.await;
    let _ = reconcile.await;
    let _ = renewals.await;
    let _ = release_flusher.await;
    let _ = relay.await;
    let _ = logon_relay.await;
    let _ = opens_upkeep.await;
    let stopped = stop(raft, stop_tx, server).await;
    started.and(stopped)
}

async fn stop(raft: Raft, stop_tx: tokio::sync::watch::Sender<bool>, server: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    match tokio::time::timeout(crate::grpc_server::STOP_GRACE + Duration::from_secs(2), server).await {
        Ok(joined) => joined.context("gRPC server task")?,
        Err(_) => tracing::warn!("gRPC connections did not stop in time; exiting anyway"),
    }
    Ok(())
}

/// Starts a new cluster or joins one, unless this node's store already belongs to a cluster.
async fn initialise(config: &NodeConfig, raft: &Raft, me: NodeInfo) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        tracing::info!("rejoining the cluster recorded in the data directory");
        return Ok(());
    }
    if config.bootstrap {
        raft.initialize(BTreeMap::from([(config.id, me)])).await.context("initialising a new cluster")?;
        tracing::info!("initialised a new cluster");
        return Ok(());
    }
    if config.join.is_empty() {
        tracing::warn!("not part of a cluster and neither bootstrap nor join is set: waiting to be added by `umbra ctl node add`");
        return Ok(());
    }
    let req = AddNodeRequest { node_id: config.id, grpc_addr: me.grpc_addr, smb_addr: me.smb_addr, voter: true, forwarded: false };
    let mut attempt = 0usize;
    loop {
        let addr = &config.join[attempt % config.join.len()];
        attempt += 1;
        match join_through(addr, req.clone()).await {
            Ok(()) => {
                tracing::info!(through = %addr, "joined the cluster");
                return Ok(());
            }
            Err(e) => tracing::warn!(through = %addr, attempt, error = %e, "join failed; retrying"),
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

async fn join_through(addr: &str, req: AddNodeRequest) -> anyhow::Result<()> {
    let mut client = AdminClient::new(umbra_raft::network::channel(addr)?);
    let mut call = tonic::Request::new(req);
    call.set_timeout(ADD_NODE_TIMEOUT);
    client.add_node(call).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C"),
    }
}
