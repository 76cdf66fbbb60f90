//! One direction of a link: frames from one peer, through the pipeline, to the other.
//!
//! The relay is where bad input meets policy. From the client, a malformed or over-long frame is
//! answered with a JSON-RPC error (carrying the request id whenever it can be salvaged) and the
//! session carries on. From the server, such a frame is logged and counted but never forwarded
//! (it would corrupt the client's stream); if it can be tied to a pending request, that request
//! is answered with an error instead of being left to hang.
//!
//! A client whose session has `--max-pending-requests` awaiting answers is not refused: its
//! relay stops reading until an answer frees room, which slows the client down (backpressure).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncRead;
use tokio_util::codec::FramedRead;

use crate::protocol::error::ProxyError;
use crate::protocol::{Direction, ErrorCode, Frame, Kind, Message, ParseError, salvage};
use crate::session::Session;
use crate::transport::lines::{Line, LineDecoder};

use super::outbox::{Deliver, Outbox};
use super::pipeline::Pipeline;
use crate::stage::{Context, Verdict};

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The peer closed its side (EOF).
    Eof,
    /// Reading from the peer failed.
    ReadError(std::io::Error),
    /// The receiving peer's writer is gone, so nothing more can be delivered.
    ReceiverClosed,
}

/// Moves messages from one peer to the other through the pipeline.
#[derive(Debug)]
pub struct Relay<R = Outbox> {
    /// Which way this relay moves messages.
    pub direction: Direction,
    /// The pipeline.
    pub pipeline: Arc<Pipeline>,
    /// The session.
    pub session: Arc<Session>,
    /// Where answers to the sending peer go.
    pub to_sender: Arc<Outbox>,
    /// Where forwarded messages go.
    pub to_receiver: Arc<R>,
    /// Longest frame accepted, in bytes.
    pub max_message_size: usize,
}

impl<R: Deliver> Relay<R> {
    /// Reads `input` until EOF or until the receiver is gone.
    pub async fn run<I: AsyncRead>(self, input: I) -> RelayEnd {
        let mut frames = std::pin::pin!(FramedRead::new(
            input,
            LineDecoder::new(self.max_message_size)
        ));
        while let Some(line) = frames.next().await {
            let delivered = match line {
                Ok(Line::Frame(bytes)) => self.on_frame(bytes).await,
                Ok(Line::TooLong { len, head, tail }) => self.on_too_long(len, &head, &tail).await,
                Err(e) => return RelayEnd::ReadError(e),
            };
            if delivered.is_err() {
                return RelayEnd::ReceiverClosed;
            }
        }
        RelayEnd::Eof
    }

    async fn on_frame(&self, bytes: Bytes) -> Result<(), Undeliverable> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match Message::parse_frame(bytes.clone()) {
            Ok(Frame::Single(msg)) => self.on_message(msg).await,
            Ok(Frame::Batch(members)) => self.on_batch(members).await,
            Err(e) => {
                self.pipeline.metrics().malformed(self.direction);
                self.on_bad_frame(&e, &bytes).await
            }
        }
    }

    async fn on_message(&self, msg: Message) -> Result<(), Undeliverable> {
        if msg.method() == Some(&crate::protocol::Method::Cancelled)
            && self.to_sender.has_open_batches()
        {
            // A cancelled batch member will get no answer; its batch must not wait for one.
            if let Some(id) = msg.cancelled_request_id() {
                let _ = self.to_sender.forget(&id).await;
            }
        }
        let cx = Context {
            direction: self.direction,
            session: &self.session,
            transport: &crate::tape::Wire::NONE,
            client: crate::stage::Client::Local,
            header_trace: None,
            notes: None,
        };
        let id = msg.id().cloned();
        let is_request = msg.kind() == Kind::Request;
        if is_request && self.direction == Direction::ClientToServer {
            // Backpressure: while the session has as many requests awaiting answers as it may,
            // the client is read no further (its writes then block) until an answer frees room.
            self.session.pending(self.direction).room().await;
        }
        match self.pipeline.process(msg, cx).await {
            Verdict::Forward(msg) => {
                if self.to_receiver.deliver(msg).await.is_ok() {
                    self.pipeline.metrics().forwarded(self.direction);
                    return Ok(());
                }
                // The receiver is gone: answer the request now rather than never.
                if let (true, Some(id)) = (is_request, id) {
                    self.session.pending(self.direction).remove(&id);
                    let error = super::tracker::receiver_gone(self.direction);
                    let _ = self
                        .to_sender
                        .send(Message::error_response(Some(&id), &error))
                        .await;
                }
                Err(Undeliverable)
            }
            Verdict::Respond(answer) => {
                self.pipeline.metrics().answered_by_proxy(self.direction);
                // If the sender is gone too, its reader will end the session.
                let _ = self.to_sender.send(answer).await;
                Ok(())
            }
            Verdict::Drop => Ok(()),
        }
    }

    async fn on_batch(
        &self,
        members: Vec<Result<Message, ParseError>>,
    ) -> Result<(), Undeliverable> {
        let mut expect = Vec::new();
        let mut seen = HashSet::new();
        let mut ready = Vec::new();
        let mut valid = Vec::with_capacity(members.len());
        for member in members {
            match member {
                Ok(msg) if msg.kind() == Kind::Request => {
                    let Some(id) = msg.id().cloned() else {
                        continue;
                    };
                    // An id already awaiting an answer (in this batch, another batch, or alone)
                    // would make two answers indistinguishable.
                    if seen.contains(&id)
                        || self.session.pending(self.direction).contains(&id)
                        || self.to_sender.awaits(&id)
                    {
                        let error = ProxyError::new(
                            ErrorCode::DuplicateRequestId,
                            "a request with this id is already awaiting its answer; ids must be unique among outstanding requests",
                        );
                        ready.push(error.to_response(Some(&id)));
                    } else {
                        seen.insert(id.clone());
                        expect.push(id);
                        valid.push(msg);
                    }
                }
                Ok(msg) => valid.push(msg),
                Err(e) => {
                    self.pipeline.metrics().malformed(self.direction);
                    ready.push(e.to_response().raw().clone());
                }
            }
        }
        // Best effort: the sender may have gone, in which case its reader ends the session.
        let _ = self.to_sender.open_batch(expect, ready).await;
        let mut members = valid.into_iter();
        while let Some(msg) = members.next() {
            if self.on_message(msg).await.is_err() {
                // The receiver is gone: answer the members not yet sent, so the batch completes.
                let error = super::tracker::receiver_gone(self.direction);
                for rest in members.filter(|m| m.kind() == Kind::Request) {
                    let _ = self
                        .to_sender
                        .send(Message::error_response(rest.id(), &error))
                        .await;
                }
                return Err(Undeliverable);
            }
        }
        Ok(())
    }

    async fn on_bad_frame(&self, error: &ParseError, bytes: &Bytes) -> Result<(), Undeliverable> {
        let mut found = salvage::inspect(bytes, bytes);
        if let Some(id) = error.id() {
            found.id = Some(id.clone());
        }
        let preview = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        tracing::warn!(direction = self.direction.as_str(), %error, id = found.id.as_ref().map(tracing::field::display), shape = found.shape.as_str(), %preview,
            "malformed message; not forwarded");
        let to_sender = error.to_proxy_error();
        let to_receiver = ProxyError::new(
            self.broken_answer_code(to_sender.code),
            format!(
                "{}'s response was not valid JSON-RPC: {error}",
                self.sender_name()
            ),
        );
        self.route_broken(found, to_sender, to_receiver).await
    }

    async fn on_too_long(&self, len: usize, head: &[u8], tail: &[u8]) -> Result<(), Undeliverable> {
        self.pipeline.metrics().oversized(self.direction);
        let found = salvage::inspect(head, tail);
        let limit = self.max_message_size;
        tracing::warn!(
            direction = self.direction.as_str(),
            len,
            limit,
            id = found.id.as_ref().map(tracing::field::display),
            shape = found.shape.as_str(),
            "discarded an over-long message"
        );
        let too_large = |code, what: String| {
            ProxyError::new(
                code,
                format!(
                    "{what} of {len} bytes exceeds the limit of {limit} bytes (--max-message-size)"
                ),
            )
            .with("limit", limit)
            .with("size", len)
        };
        let to_sender = too_large(ErrorCode::MessageTooLarge, "message".to_owned());
        let to_receiver = too_large(
            self.broken_answer_code(ErrorCode::MessageTooLarge),
            format!("{}'s response", self.sender_name()),
        );
        self.route_broken(found, to_sender, to_receiver).await
    }

    /// Routes the error for a frame that could not be forwarded. A broken *response* fails the
    /// request it answered, whose sender is this relay's receiver; a broken *request* is answered
    /// to its sender. What can't be told apart counts as a request from the client (it is waiting
    /// for an answer) and as a response from the server (its requests are rare; its answers are
    /// what the client waits for). Without an id, a broken response is only logged.
    async fn route_broken(
        &self,
        found: salvage::Salvaged,
        to_sender: ProxyError,
        to_receiver: ProxyError,
    ) -> Result<(), Undeliverable> {
        let is_response = match found.shape {
            salvage::Shape::Response => true,
            salvage::Shape::Request => false,
            salvage::Shape::Unknown => self.direction == Direction::ServerToClient,
        };
        self.pipeline.metrics().answered_by_proxy(self.direction);
        if !is_response {
            let _ = self
                .to_sender
                .send(Message::error_response(found.id.as_ref(), &to_sender))
                .await;
            return Ok(());
        }
        let Some(id) = found.id else { return Ok(()) };
        if self
            .session
            .pending(self.direction.reverse())
            .remove(&id)
            .is_none()
        {
            return Ok(());
        }
        self.to_receiver
            .deliver(Message::error_response(Some(&id), &to_receiver))
            .await
            .map_err(|_| Undeliverable)
    }

    /// Who sends what this relay reads, for error messages.
    fn sender_name(&self) -> &'static str {
        match self.direction {
            Direction::ClientToServer => "the client",
            Direction::ServerToClient => "the MCP server",
        }
    }

    /// The code a request gets when its answer arrived broken: for the client, the table's
    /// `invalid_upstream_response`; for the server, the same code the client's error had.
    fn broken_answer_code(&self, sender_code: ErrorCode) -> ErrorCode {
        match self.direction {
            Direction::ServerToClient => ErrorCode::InvalidUpstreamResponse,
            Direction::ClientToServer => sender_code,
        }
    }
}

/// The receiving peer can no longer be written to.
#[derive(Debug)]
struct Undeliverable;
