//! Several `herd server` processes on one PostgreSQL database (the way
//! Concourse and GitLab scale): each keeps a heartbeat row in `servers`,
//! takes over the workers' attempts of a server that died, and hears the
//! others through LISTEN/NOTIFY (a build started through one server reaches
//! an idle worker connected to another at once; pages and log followers on
//! one server hear of events stored by another).

use crate::hub::peers::{alive_since, PeerMsg, DEAD_AFTER, HEARTBEAT};
use crate::hub::Hub;
use crate::store::NOTIFY_CHANNEL;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Longest a `changed` waits to be sent, gathering others with it.
const CHANGED_COALESCE: Duration = Duration::from_millis(50);

/// Starts the tasks of a server sharing the database.
pub fn spawn(hub: Arc<Hub>, database_url: String, public_url: String) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(heartbeats(Arc::clone(&hub), public_url))];
    if let Some(outbox) = hub.take_peer_outbox() {
        tasks.push(tokio::spawn(send_to_peers(Arc::clone(&hub), outbox)));
    }
    tasks.push(tokio::spawn(listen_to_peers(hub, database_url)));
    tasks
}

/// Keeps this server's row fresh; takes over servers gone silent.
async fn heartbeats(hub: Arc<Hub>, public_url: String) {
    loop {
        if let Err(e) = hub
            .store
            .server_heartbeat(&hub.server_id, &public_url)
            .await
        {
            tracing::warn!("cannot record this server's heartbeat: {e}");
        }
        if let Err(e) = take_over_dead_servers(&hub).await {
            tracing::warn!("cannot check for dead servers: {e}");
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

async fn take_over_dead_servers(hub: &Hub) -> Result<(), crate::store::StoreError> {
    let before = alive_since();
    for dead in hub.store.stale_servers(before).await? {
        if dead == hub.server_id {
            continue;
        }
        let Some(workers) = hub.store.take_over_server(&dead, before).await? else {
            continue; // another server took it
        };
        let attempts: Vec<(i64, String)> = hub
            .store
            .live_attempts(None)
            .await?
            .into_iter()
            .filter(|a| workers.contains(&a.worker))
            .map(|a| (a.id, a.worker))
            .collect();
        tracing::warn!(
            "server {dead} is silent for more than {DEAD_AFTER:?}: its workers {workers:?} are offline, \
             their {} attempt(s) move unless the workers come back",
            attempts.len()
        );
        hub.adopt_orphans(attempts);
        hub.changed();
    }
    Ok(())
}

/// Sends this hub's messages as NOTIFY `SERVER_ID MESSAGE`, at once;
/// `changed` waits up to 50 ms, and a burst of them goes as one.
async fn send_to_peers(hub: Arc<Hub>, mut outbox: tokio::sync::mpsc::UnboundedReceiver<PeerMsg>) {
    let mut changed_due: Option<tokio::time::Instant> = None;
    loop {
        let message = match changed_due {
            Some(due) => tokio::select! {
                m = outbox.recv() => m,
                _ = tokio::time::sleep_until(due) => {
                    changed_due = None;
                    notify(&hub, &PeerMsg::Changed).await;
                    continue;
                }
            },
            None => outbox.recv().await,
        };
        let Some(message) = message else { break };
        if message == PeerMsg::Changed {
            changed_due.get_or_insert_with(|| tokio::time::Instant::now() + CHANGED_COALESCE);
            continue;
        }
        notify(&hub, &message).await;
    }
}

async fn notify(hub: &Hub, message: &PeerMsg) {
    if let Err(e) = hub
        .store
        .notify(&format!("{} {}", hub.server_id, message.encode()))
        .await
    {
        tracing::warn!("cannot notify the other servers: {e}");
    }
}

/// Acts on the other servers' notifications; after a lost listening
/// connection, rereads what may have been missed.
async fn listen_to_peers(hub: Arc<Hub>, url: String) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                    tracing::warn!("cannot listen for the other servers: {e}");
                } else {
                    // Whatever happened while not listening.
                    if let Err(e) = hub.reload_queue().await {
                        tracing::warn!("cannot reload the queue: {e}");
                    }
                    loop {
                        match listener.recv().await {
                            Ok(n) => {
                                let payload = n.payload();
                                if let Some((from, message)) = payload.split_once(' ') {
                                    if from != hub.server_id {
                                        hub.on_peer_message(message).await;
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!("lost the notifications of the other servers: {e}");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot connect to listen for the other servers: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
