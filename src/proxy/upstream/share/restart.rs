//! A shared process that failed, replaced with its members kept (`--restart on-failure`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio_util::sync::CancellationToken;

use crate::protocol::error::ProxyError;
use crate::proxy::outbox::Deliver;
use crate::proxy::upstream::stdio::{StdioLink, StdioQueue};
use crate::proxy::upstream::supervise::{Supervisor, with_handshake};

use super::{SharedChild, SharedChildren, lock};

impl<C: Deliver + 'static> SharedChild<C> {
    /// Replaces a failed process: what it owed is answered with `error` at once; then, after a
    /// backoff, a process from the pool is given the handshake the old one got, subscribed
    /// again to what the members are subscribed to, and takes over (what members sent
    /// meanwhile waits in its queue). `None` if the gateway stopped first.
    pub(super) async fn restart(
        self: &Arc<Self>,
        error: &ProxyError,
        supervisor: &mut Supervisor,
        group: &Weak<SharedChildren<C>>,
        closing: &CancellationToken,
        max_message_size: usize,
    ) -> Option<StdioLink> {
        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        let queue = StdioQueue::new(max_message_size);
        let (crashed, settled) = {
            let mut table = lock(&self.table);
            let old = std::mem::replace(&mut *lock(&self.to_server), queue.to_server.clone());
            old.close();
            let crashed = table.crashed(error);
            (crashed, std::mem::take(&mut table.handshake_settled))
        };
        if settled {
            self.handshake_changed.notify_waiters();
        }
        for (route, answer) in crashed.owed {
            self.pass(&route, answer).await;
        }
        let (process, pool) = loop {
            let delay = supervisor.crashed_and_logged();
            if supervisor.in_crash_loop() && !self.crash_looping.swap(true, Ordering::Relaxed) {
                self.counters.crash_looping.fetch_add(1, Ordering::Relaxed);
            }
            let pool = group.upgrade()?.pool.clone();
            let next = async {
                tokio::time::sleep(delay).await;
                let lease = pool.acquire().await.map_err(|e| e.to_string())?;
                with_handshake(lease, &crashed.handshake).await
            };
            let next = tokio::select! {
                () = closing.cancelled() => return None,
                next = next => next,
            };
            match next {
                Ok(process) => break (process, pool),
                Err(why) => {
                    tracing::warn!("the shared MCP server could not be restarted: {why}");
                }
            }
        };
        supervisor.started();
        let program = pool.spec().program.to_string_lossy().into_owned();
        let pid = process.child.pid();
        let reader = self.clone();
        let link = match queue
            .attach_reader(process, move |output| reader.read(output, max_message_size))
        {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(%program, %e, "the restarted shared MCP server could not be linked");
                return None;
            }
        };
        self.pid.store(pid.unwrap_or(0), Ordering::Relaxed);
        let generation = supervisor.generation();
        self.generation.send_replace(generation);
        tracing::info!(
            pid,
            generation,
            sessions = self.members(),
            "restarted the shared MCP server; its sessions go on"
        );
        for msg in crashed.resubscribe {
            let _ = link.to_server.send(msg).await;
        }
        Some(link)
    }
}
