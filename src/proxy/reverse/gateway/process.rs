//! A gateway session's server process: its own, taken from the pool when its first message is
//! on its way, or a place on a shared one (`--share always`); and with `--restart on-failure`,
//! its own started again when it fails: what it owed is answered with the error at once, then a
//! process from the pool is given the session's handshake after a backoff, and the session goes
//! on under the same id.

use std::sync::Arc;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode};
use crate::proxy::upstream::PoolError;
use crate::proxy::upstream::share::Member;
use crate::session::{EndReason, Session};

use super::super::router::Router;
use crate::proxy::upstream::stdio::{StdioLink, StdioQueue};
use crate::proxy::upstream::supervise::{ServerInbox, Supervisor, with_handshake};
use crate::transport::child::describe_exit;

use super::{Ending, Gateway, STDOUT_DRAIN_GRACE, Server, SessionLink, Upstream};

impl Gateway {
    /// Starts a session's child once its first message is on its way (`Ok(None)`: the session
    /// ended first). A child that cannot be started ends the session with the reason, which
    /// its pending requests are answered with.
    pub(super) async fn start_child(
        &self,
        link: &Arc<SessionLink>,
        queue: StdioQueue,
    ) -> Result<Option<StdioLink>, ProxyError> {
        let (Upstream::Stdio { start, .. }, Server::Command(pool)) = (&link.upstream, &self.server)
        else {
            return Ok(None);
        };
        let session = &link.session;
        tokio::select! {
            () = session.closed_token().cancelled() => return Ok(None),
            () = start.cancelled() => {}
        }
        let asked = tokio::time::Instant::now();
        let lease = tokio::select! {
            () = session.closed_token().cancelled() => return Ok(None),
            lease = pool.acquire() => lease,
        };
        if let (Ok(lease), true) = (&lease, self.pipeline.is_traced()) {
            // The requests that waited for it say so on their spans.
            crate::proxy::pipeline::waiting_event(
                session,
                Direction::ClientToServer,
                "server_process",
                &[
                    ("shadowcat.spare", (!lease.cold).into()),
                    (
                        "shadowcat.wait_ms",
                        i64::try_from(asked.elapsed().as_millis())
                            .unwrap_or(i64::MAX)
                            .into(),
                    ),
                ],
            );
        }
        // A session taken over from an instance that is gone: its process is given the
        // client's handshake first.
        let process = match (lease, link.take_replay()) {
            (Ok(lease), Some(handshake)) => {
                let cold = lease.cold;
                match with_handshake(lease, &handshake).await {
                    Ok(process) => Ok((process, cold)),
                    Err(why) => {
                        tracing::error!(%why, "the new MCP server did not take the session's handshake; ending it");
                        self.sessions.end(session.id(), EndReason::Error);
                        return Err(ProxyError::new(
                            ErrorCode::UpstreamExited,
                            format!(
                                "the session's new MCP server did not take its handshake: {why}"
                            ),
                        ));
                    }
                }
            }
            (Ok(lease), None) => {
                let cold = lease.cold;
                Ok((lease.into(), cold))
            }
            (Err(e), _) => Err(e),
        };
        let started = process.and_then(|(process, cold)| {
            let program = pool.spec().program.to_string_lossy().into_owned();
            queue
                .attach(
                    process,
                    self.pipeline.clone(),
                    session.clone(),
                    link.router.clone(),
                    self.config.max_message_size,
                )
                .map(|child| (child, cold))
                .map_err(|error| PoolError::Spawn { program, error })
        });
        match started {
            Ok((child, cold)) => {
                tracing::info!(
                    pid = child.child.pid(),
                    spare = !cold,
                    "the MCP server for the session is running"
                );
                crate::proxy::pipeline::server_started(session, child.child.pid(), 1).await;
                Ok(Some(child))
            }
            Err(e) => Err(self.no_process(session, &e)),
        }
    }

    /// A session that could have no server process ends; the error is what its requests get.
    fn no_process(&self, session: &Session, e: &PoolError) -> ProxyError {
        tracing::error!(%e, "no MCP server for the session; ending it");
        self.sessions.end(session.id(), EndReason::Error);
        let code = match e {
            PoolError::Spawn { .. } => {
                self.metrics.upstream_error("exited");
                self.child_failures.record(e.to_string());
                ErrorCode::UpstreamExited
            }
            PoolError::TimedOut(_) => ErrorCode::PoolTimedOut,
            PoolError::Closed => ErrorCode::ShuttingDown,
        };
        ProxyError::new(code, e.to_string())
    }

    /// A session on a shared process: it takes one with its first message, then is served
    /// until it ends or the process exits.
    pub(super) async fn join_shared(
        &self,
        link: &Arc<SessionLink>,
        member: &Member<Arc<Router>>,
    ) -> Ending {
        let session = &link.session;
        tokio::select! {
            () = session.closed_token().cancelled() => return Ending::Closed,
            () = member.start.cancelled() => {}
        }
        let joined = tokio::select! {
            () = session.closed_token().cancelled() => return Ending::Closed,
            joined = member.join() => joined,
        };
        let child = match joined {
            Ok(child) => child,
            Err(e) => {
                let error = self.no_process(session, &e);
                member.fail(error.clone());
                return Ending::Failed(error);
            }
        };
        tracing::info!(
            pid = child.pid(),
            sessions = child.members(),
            "the session is on a shared MCP server"
        );
        // With `--restart on-failure` the process may be replaced: the session then answers
        // the new one and records it.
        let mut generations = child.generations();
        loop {
            let generation = *generations.borrow_and_update();
            link.router.answer_server_via(child.to_server());
            crate::proxy::pipeline::server_started(session, child.pid(), generation).await;
            tokio::select! {
                () = session.closed_token().cancelled() => return Ending::Closed,
                error = member.lost() => {
                    if error.code == ErrorCode::UpstreamExited {
                        self.metrics.upstream_error("exited");
                    }
                    self.sessions.end(session.id(), EndReason::Error);
                    return Ending::Failed(error);
                }
                changed = generations.changed() => {
                    if changed.is_err() {
                        return Ending::Closed;
                    }
                }
            }
        }
    }

    /// Serves `link` with `child` until the session ends or its process exits for good (with
    /// `--restart on-failure`, a failed process is replaced and serving goes on).
    pub(super) async fn serve_child(
        &self,
        link: &Arc<SessionLink>,
        mut child: StdioLink,
    ) -> (Option<StdioLink>, Ending) {
        let session = &link.session;
        let inbox = match &link.upstream {
            Upstream::Stdio {
                inbox: Some(inbox), ..
            } => Some(inbox.clone()),
            _ => None,
        };
        let mut supervisor = inbox.as_ref().map(|_| Supervisor::new());
        loop {
            let (ending, failed) = tokio::select! {
                () = session.closed_token().cancelled() => (Ending::Closed, false),
                status = child.child.wait() => {
                    let failed = !matches!(&status, Ok(s) if s.success());
                    (Ending::Exited(status), failed)
                }
                _ = child.server_reader.join() => {
                    // Its stdout closed: stopped, then started again as a crashed one is.
                    let status = Box::pin(child.shut_down(self.config.shutdown_timeout)).await;
                    (Ending::Exited(status), true)
                }
            };
            let (Ending::Exited(status), true, Some(inbox), Some(supervisor)) =
                (&ending, failed, &inbox, supervisor.as_mut())
            else {
                return (Some(child), ending);
            };
            let status = match status {
                Ok(status) => describe_exit(*status),
                Err(e) => e.to_string(),
            };
            match self.restart(link, child, inbox, supervisor, &status).await {
                Ok(next) => child = next,
                Err(ending) => return (None, ending),
            }
        }
    }

    /// Fails what the dead process owed, then starts another (with backoff) and gives it the
    /// session's handshake; `Err` if the session ended meanwhile or no process can be had.
    async fn restart(
        &self,
        link: &Arc<SessionLink>,
        mut child: StdioLink,
        inbox: &ServerInbox,
        supervisor: &mut Supervisor,
        status: &str,
    ) -> Result<StdioLink, Ending> {
        let session = &link.session;
        child.server_reader.join_within(STDOUT_DRAIN_GRACE).await;
        child.child.finish_stderr(STDOUT_DRAIN_GRACE).await;
        self.metrics.upstream_error("exited");
        self.metrics
            .children()
            .restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let error = ProxyError::new(
            ErrorCode::UpstreamExited,
            format!("the MCP server exited unexpectedly ({status})"),
        )
        .with("stderr", child.child.stderr_tail().lines());
        tracing::error!(%status, "the session's MCP server exited unexpectedly; it will be restarted");
        // What the client sends from now on waits in the next process's queue; what was in
        // flight is answered now (the swap and the taking happen with no await between them).
        let queue = StdioQueue::new(self.config.max_message_size);
        inbox.replace(queue.to_server.clone()).close();
        link.router.answer_server_via(queue.to_server.clone());
        let owed = session.take_pending(Direction::ClientToServer);
        session.take_pending(Direction::ServerToClient);
        child.abort();
        drop(child);
        crate::proxy::upstream::answer_each(owed, &error, link.router.as_ref()).await;
        let Server::Command(pool) = &self.server else {
            return Err(Ending::Failed(error));
        };
        loop {
            let delay = supervisor.crashed_and_logged();
            if supervisor.in_crash_loop() {
                self.child_failures.record(format!(
                    "a session's MCP server is crashing in a loop (last: {status})"
                ));
            }
            let next = async {
                tokio::time::sleep(delay).await;
                let lease = pool.acquire().await.map_err(|e| e.to_string())?;
                with_handshake(lease, &inbox.handshake()).await
            };
            let next = tokio::select! {
                () = session.closed_token().cancelled() => return Err(Ending::Closed),
                next = next => next,
            };
            let process = match next {
                Ok(process) => process,
                Err(why) => {
                    tracing::warn!("the session's MCP server could not be restarted: {why}");
                    continue;
                }
            };
            supervisor.started();
            let generation = supervisor.generation();
            return match queue.attach(
                process,
                self.pipeline.clone(),
                session.clone(),
                link.router.clone(),
                self.config.max_message_size,
            ) {
                Ok(next) => {
                    tracing::info!(
                        pid = next.child.pid(),
                        generation,
                        "restarted the session's MCP server; the session goes on"
                    );
                    crate::proxy::pipeline::server_started(session, next.child.pid(), generation)
                        .await;
                    Ok(next)
                }
                Err(e) => Err(Ending::Failed(ProxyError::new(
                    ErrorCode::UpstreamExited,
                    format!("the restarted MCP server could not be linked: {e}"),
                ))),
            };
        }
    }
}
