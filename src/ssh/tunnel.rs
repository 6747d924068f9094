//! The localhost tunnel: a listener on 127.0.0.1:local forwarding each connection through
//! a `direct-tcpip` channel to 127.0.0.1:remote on the host. When the SSH connection
//! drops while the session is alive, the next connection reconnects it, and says so.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex, RwLock};
use tokio::task::JoinHandle;

use super::connect::connect;
use super::remote::Session;
use super::SshEndpoint;
use super::SshError;

/// The session every tunnel and command shares; replaced when it reconnects.
pub type Shared = Arc<RwLock<Arc<Session>>>;

pub struct Tunnel {
    pub local: u16,
    pub remote: u16,
    task: JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A live session, reconnected first if it has dropped.
pub async fn live(
    shared: &Shared,
    target: &SshEndpoint,
    lock: &Mutex<()>,
    events: &mpsc::UnboundedSender<String>,
) -> Result<Arc<Session>, SshError> {
    let current = shared.read().await.clone();
    if !current.is_closed() {
        return Ok(current);
    }
    let _guard = lock.lock().await;
    let current = shared.read().await.clone();
    if !current.is_closed() {
        return Ok(current);
    }
    let _ = events.send(format!(
        "the SSH connection to {} dropped; reconnecting",
        target.addr()
    ));
    // The host must show the key this session already trusted: no second first use.
    let again = target.pinned_to(&current.fingerprint);
    let fresh = Arc::new(connect(&again).await?);
    *shared.write().await = fresh.clone();
    let _ = events.send(format!("reconnected to {}", target.addr()));
    Ok(fresh)
}

impl Tunnel {
    /// Bind 127.0.0.1:local now (so a taken port is an error before anything else starts).
    pub async fn open(
        shared: Shared,
        target: SshEndpoint,
        local: u16,
        remote: u16,
        events: mpsc::UnboundedSender<String>,
    ) -> Result<Tunnel, SshError> {
        let listener = TcpListener::bind(("127.0.0.1", local)).await.map_err(|e| {
            SshError::Protocol(format!(
                "cannot listen on 127.0.0.1:{local} for the tunnel ({e}); is the port taken?"
            ))
        })?;
        let local = listener.local_addr().map(|a| a.port()).unwrap_or(local);
        let lock = Arc::new(Mutex::new(()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let (shared, target, lock, events) =
                    (shared.clone(), target.clone(), lock.clone(), events.clone());
                tokio::spawn(async move {
                    let session = match live(&shared, &target, &lock, &events).await {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = events.send(format!("tunnel: {e}"));
                            return;
                        }
                    };
                    let channel = match session
                        .handle
                        .channel_open_direct_tcpip(
                            "127.0.0.1",
                            u32::from(remote),
                            peer.ip().to_string(),
                            u32::from(peer.port()),
                        )
                        .await
                    {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = events
                                .send(format!("tunnel: the host refused 127.0.0.1:{remote}: {e}"));
                            return;
                        }
                    };
                    let mut stream = channel.into_stream();
                    // Back-pressure comes from the SSH window and the socket buffers.
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut stream).await;
                });
            }
        });
        Ok(Tunnel {
            local,
            remote,
            task,
        })
    }
}
